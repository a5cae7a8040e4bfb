"""Checkpoint loading for prediction: the training stage owns the format (``nnseg.training.checkpoint``).

Re-exported here so prediction code and users can import it from the prediction stage.
"""

from __future__ import annotations

from nnseg.training.checkpoint import (
    CHECKPOINT_KEYS,
    REQUIRED_FOR_INFERENCE,
    allowed_global_names,
    allowed_globals,
    load_checkpoint,
    mirroring_axes,
    network_state_dict,
    save_checkpoint,
    unsafe_globals,
)

__all__ = ["CHECKPOINT_KEYS", "REQUIRED_FOR_INFERENCE", "allowed_global_names", "allowed_globals", "load_checkpoint",
           "mirroring_axes", "network_state_dict", "save_checkpoint", "unsafe_globals"]
