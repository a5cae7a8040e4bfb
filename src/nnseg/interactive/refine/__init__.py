"""Refine an automatic segmentation with an interactive model (``nnseg refine``): seed the session with a label of
an existing label map, or of an nnU-Net/nnseg model's prediction, then apply corrections (points, boxes, scribbles,
lassos; voxels or world millimetres) and write the refined map.

Public API:
    run_refinement(RefineRequest(...)) -> RefineResult
    read_prompts_file(path) -> list[LabelPrompts]; Prompt, LabelPrompts, flag_prompt, merge_flag_prompts
See docs/INTERACTIVE.md, "Refining an automatic segmentation".
"""

from __future__ import annotations

from nnseg.interactive.refine.prompt_file import (LabelPrompts, Prompt, flag_prompt, merge_flag_prompts, parse_label,
                                                  parse_prompts, read_prompts_file)
from nnseg.interactive.refine.run import RefineRequest, RefineResult, refine_labels, run_refinement

__all__ = ["LabelPrompts", "Prompt", "RefineRequest", "RefineResult", "flag_prompt", "merge_flag_prompts",
           "parse_label", "parse_prompts", "read_prompts_file", "refine_labels", "run_refinement"]
