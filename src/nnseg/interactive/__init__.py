"""Interactive segmentation with nnInteractive-compatible models: load a model folder, prompt, predict.

Public API:
    load_interactive_model(folder, *, fold=None, checkpoint_name=..., device='cpu') -> InteractiveModel
    InteractiveSession(model, *, precision='auto', do_autozoom=True, enable_undo=True, seed=0, max_memory_gb=None,
                       check_memory=True)
    save_interactive_model(folder, *, network, plans_json, dataset_json, configuration, inference_info, ...)
    read_capabilities(folder) -> Capabilities
    session_memory_bytes(image_shape, *, num_interaction_channels, patch_size, ...) -> int (what a session holds)
    prediction_memory_bytes(architecture, patch_size, *, image_channels, interaction_channels) -> int (shared)
    check_session_fits(model, image_shape, *, budget_bytes, budget_source, ...) -> int (refuses what does not fit)
    session_budget(model, max_memory_gb) -> (bytes, source) (--max-memory, else 85 % of the free memory)
See docs/INTERACTIVE.md for the model folder, the prompts and the prediction.
"""

from __future__ import annotations

from nnseg.interactive.capabilities import Capabilities, read_capabilities
from nnseg.interactive.memory import check_session_fits, session_budget, session_memory_bytes
from nnseg.interactive.model import (InteractiveModel, build_interactive_network, load_interactive_model,
                                     save_interactive_model)
from nnseg.interactive.predict import prediction_memory_bytes
from nnseg.interactive.session import InteractiveSession

__all__ = ["Capabilities", "InteractiveModel", "InteractiveSession", "build_interactive_network",
           "check_session_fits", "load_interactive_model", "prediction_memory_bytes", "read_capabilities",
           "save_interactive_model", "session_budget", "session_memory_bytes"]
