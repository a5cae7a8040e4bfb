"""An nnseg extension: a custom loss, a custom network and a trainer preset that uses both.

nnseg imports this file when its folder is named in ``NNSEG_EXTENSIONS`` (or nnU-Net's ``nnUNet_extTrainer``):

    export NNSEG_EXTENSIONS=/path/to/examples/custom_loss_network
    nnUNetv2_train DATASET 3d_fullres 0 -tr MyPreset
    nnUNetv2_predict -i IMAGES -o OUT -d DATASET -c 3d_fullres -tr MyPreset

Importing the module is all it takes: the ``add`` calls at the bottom put the components into nnseg's registries.
An installed package does the same through an entry point (see README.md next to this file).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nnseg.networks import NETWORKS
from nnseg.networks.plain_unet import PlainConvUNet
from nnseg.training.config import TRAINER_PRESETS, TrainConfig
from nnseg.training.losses import LOSSES, soft_dice

FOCAL_GAMMA = 2.0


class DiceFocalLoss(nn.Module):
    """Soft Dice of the foreground classes plus the focal loss (cross-entropy down-weighting easy voxels)."""

    def __init__(self, *, batch_dice: bool, smooth: float, gamma: float = FOCAL_GAMMA) -> None:
        super().__init__()
        self.batch_dice, self.smooth, self.gamma = batch_dice, smooth, gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        labels = target[:, 0].long()  # (B, 1, *spatial) label map -> (B, *spatial)
        log_probs = torch.log_softmax(logits.float(), 1)
        onehot = torch.zeros_like(log_probs).scatter_(1, labels[:, None], 1.0)
        dice = soft_dice(log_probs.exp()[:, 1:], onehot[:, 1:], batch_dice=self.batch_dice, smooth=self.smooth)
        log_p_true = log_probs.gather(1, labels[:, None])[:, 0]
        focal = -((1 - log_p_true.exp()) ** self.gamma * log_p_true).mean()
        return focal - dice


def make_dice_focal(*, batch_dice: bool, smooth: float, ignore_label: int | None = None,
                    has_regions: bool = False) -> nn.Module:
    """The loss factory nnseg calls (the same keywords as its built-in ``dice_ce``)."""
    if has_regions or ignore_label is not None:
        raise ValueError("dice_focal supports plain label maps only (no regions, no ignore label); use loss=dice_ce")
    return DiceFocalLoss(batch_dice=batch_dice, smooth=smooth)


class MyUNet(nn.Module):
    """nnU-Net's PlainConvUNet behind a learned 1x1 channel-mixing layer that starts as the identity.

    nnseg passes the planned ``arch_kwargs`` (ops already resolved to classes) plus ``input_channels``,
    ``num_classes`` and ``deep_supervision``; this network uses those of a plain U-Net.
    """

    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = False, **arch_kwargs: Any) -> None:
        super().__init__()
        conv_op = arch_kwargs["conv_op"]
        self.mix = conv_op(input_channels, input_channels, kernel_size=1, bias=True)
        kwargs = {k: v for k, v in arch_kwargs.items() if k not in ("block", "bottleneck_channels", "stem_channels")}
        kwargs.setdefault("n_conv_per_stage", kwargs.pop("n_blocks_per_stage", 2))
        kwargs.pop("n_blocks_per_stage", None)
        self.unet = PlainConvUNet(input_channels=input_channels, num_classes=num_classes,
                                  deep_supervision=deep_supervision, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.unet(x + self.mix(x))

    def initialize(self, module: nn.Module) -> None:
        """nnU-Net's He initialisation for the U-Net; the mixing layer starts at zero (so ``x + mix(x) = x``)."""
        if module is self.mix:
            nn.init.zeros_(self.mix.weight)
            nn.init.zeros_(self.mix.bias)
        elif module is not self:
            PlainConvUNet.initialize(module)


# Names are global: prefix them with your project to avoid clashes with other extensions.
LOSSES.add("dice_focal", make_dice_focal)
NETWORKS.add("my_components.MyUNet", MyUNet, aliases=("MyUNet",))
TRAINER_PRESETS.add("MyPreset", TrainConfig(loss="dice_focal", network="my_components.MyUNet"))
