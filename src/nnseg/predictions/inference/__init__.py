"""A model folder and its networks turned into logits: checkpoints, options, sliding window, TTA, backends."""
