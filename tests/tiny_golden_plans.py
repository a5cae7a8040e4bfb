"""The golden Hippocampus plans shrunk to networks that build and run in a blink (shared by predict and selection tests).

A plain module at the tests root (on sys.path like shared_paths) so tests can import it by a unique name."""

from __future__ import annotations

import copy


def tiny_3d_configuration(plans: dict) -> dict:
    """A copy of ``plans``' 3d_fullres configuration with a 2-stage U-Net, patch 16³, spacing 1 (``nnUNetPlans_3d_tiny``)."""
    cfg = copy.deepcopy(plans["configurations"]["3d_fullres"])
    cfg.update(patch_size=[16, 16, 16], spacing=[1.0, 1.0, 1.0], data_identifier="nnUNetPlans_3d_tiny")
    cfg["architecture"]["arch_kwargs"].update(n_stages=2, features_per_stage=[4, 8], kernel_sizes=[[3, 3, 3]] * 2,
                                              strides=[[1, 1, 1], [2, 2, 2]], n_conv_per_stage=[1, 1],
                                              n_conv_per_stage_decoder=[1])
    return cfg
