"""Logits to files in the original image space: resampling, slab-by-slab export, ``.npz``/``.pkl`` side files."""
