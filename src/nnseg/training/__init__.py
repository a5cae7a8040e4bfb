"""Stage 4: preprocessed data -> trained checkpoints (nnU-Net's recipe, configured by a TrainConfig)."""
