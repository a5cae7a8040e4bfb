"""Stage 0: raw datasets (image readers/writers, ``dataset.json``, case discovery, cropping, verification)."""
