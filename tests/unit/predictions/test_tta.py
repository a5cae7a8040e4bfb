"""Mirroring TTA: pass count, equivariant predictors unchanged, batched == unbatched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnseg.predictions.inference.sliding_window import sliding_window_predict
from nnseg.predictions.inference.tta import mirror_combinations, mirror_tta


def test_combinations_in_nnunet_order():
    assert mirror_combinations((0, 1, 2)) == [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    assert len(mirror_combinations((0, 1))) == 3


@pytest.mark.parametrize("axes,ndim,passes", [((0, 1, 2), 3, 8), ((0, 1), 2, 4), ((1,), 3, 2)])
def test_number_of_passes_unbatched(axes, ndim, passes):
    calls = []

    def predictor(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x

    x = torch.zeros((2, 1) + (4,) * ndim)
    mirror_tta(predictor, axes, batched=False)(x)
    assert calls == [2] * passes
    calls.clear()
    mirror_tta(predictor, axes, batched=True)(x)
    assert calls == [2 * passes]
    calls.clear()
    mirror_tta(predictor, axes, per_call=3)(x)  # 3 copies per call, the rest in the last one
    assert calls == [2 * 3] * (passes // 3) + ([2 * (passes % 3)] if passes % 3 else [])


@pytest.mark.parametrize("ndim,axes", [(3, (0, 1, 2)), (2, (0, 1))])
@pytest.mark.parametrize("batched", [True, False])
def test_flip_equivariant_predictor_is_unchanged(ndim, axes, batched, rng):
    x = torch.from_numpy(rng.standard_normal((2, 2) + (6, 5, 4)[:ndim]).astype(np.float32))

    def predictor(t: torch.Tensor) -> torch.Tensor:  # pointwise: commutes with every flip
        return torch.cat([t * 2 - 1, t.square()], dim=1)

    out = mirror_tta(predictor, axes, batched=batched)(x)
    torch.testing.assert_close(out, predictor(x), rtol=1e-6, atol=1e-6)


def test_average_of_mirrored_predictions_matches_definition(rng):
    x = torch.from_numpy(rng.standard_normal((1, 1, 4, 3)).astype(np.float32))
    ramp = torch.arange(4, dtype=torch.float32).view(1, 1, 4, 1)

    def predictor(t: torch.Tensor) -> torch.Tensor:  # not equivariant along axis 0
        return t + ramp

    out = mirror_tta(predictor, (0,), batched=False)(x)
    expected = (x + ramp + torch.flip(torch.flip(x, (2,)) + ramp, (2,))) / 2
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("ndim,axes", [(3, (0, 1, 2)), (2, (0, 1)), (3, (0, 2))])
def test_batched_equals_unbatched_with_a_network(ndim, axes, rng):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d if ndim == 3 else torch.nn.Conv2d
    net = torch.nn.Sequential(conv(2, 4, 3, padding=1), torch.nn.LeakyReLU(), conv(4, 3, 3, padding=1)).eval()
    x = torch.from_numpy(rng.standard_normal((2, 2) + (8, 7, 6)[:ndim]).astype(np.float32))
    with torch.inference_mode():
        a = mirror_tta(net, axes, batched=True)(x)
        b = mirror_tta(net, axes, batched=False)(x)
        groups = [mirror_tta(net, axes, per_call=n)(x) for n in (1, 3, 8)]  # some copies per call, the rest last
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for c in groups:
        torch.testing.assert_close(c, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a, net(x).detach(), atol=1e-3)  # the network is not flip-equivariant: TTA changes it


def test_no_axes_returns_predictor_and_bad_axes_raise():
    def f(t: torch.Tensor) -> torch.Tensor:
        return t

    assert mirror_tta(f, None) is f
    assert mirror_tta(f, ()) is f
    with pytest.raises(ValueError, match="distinct"):
        mirror_tta(f, (0, 0))
    with pytest.raises(ValueError, match="per_call must be >= 1"):
        mirror_tta(f, (0,), per_call=0)
    with pytest.raises(ValueError, match="do not exist"):
        mirror_tta(f, (0, 1, 2))(torch.zeros((1, 1, 4, 4)))


def test_tta_inside_sliding_window(rng):
    x = torch.from_numpy(rng.standard_normal((1, 10, 9, 7)).astype(np.float32))
    out = sliding_window_predict(mirror_tta(lambda t: t * 3, (0, 1, 2)), x, (6, 6, 6), num_outputs=1)
    torch.testing.assert_close(out, x * 3, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.golden
def test_nnunet_model_probabilities_match_nnunet_predictions(expected_dir, shared_data, tmp_path):
    """Sliding window + mirroring on nnU-Net's trained Hippocampus model reproduces nnU-Net's own probabilities.

    hippocampus_020 (43, 46, 36) with patch (40, 56, 40): padding on two axes, two blended tiles on the first.
    Spacing equals the target spacing and the crop keeps the whole image, so preprocessing is only z-scoring.
    """
    import json
    import zipfile

    import SimpleITK as sitk

    from nnseg.networks import build_network
    from nnseg.predictions.inference.checkpoint import load_checkpoint, mirroring_axes, network_state_dict

    model = expected_dir / "Dataset004_Hippocampus" / "model"
    trained = "Dataset004_Hippocampus/nnUNetTrainer_bench__nnUNetPlans__3d_fullres_bs2/"
    with zipfile.ZipFile(model / "model.zip") as z:
        z.extract(trained + "plans.json", tmp_path)
        z.extract(trained + "fold_0/checkpoint_final.pth", tmp_path)
    config = json.loads((tmp_path / trained / "plans.json").read_text())["configurations"]["3d_fullres"]
    ckpt = load_checkpoint(tmp_path / trained / "fold_0" / "checkpoint_final.pth")
    net = build_network(config["architecture"], input_channels=1, num_classes=3, deep_supervision=False, initialize=False)
    net.load_state_dict(network_state_dict(ckpt))
    net.eval()
    img = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data / "Task04_Hippocampus/imagesTr/hippocampus_020.nii.gz")))
    img = img.astype(np.float32)
    x = torch.from_numpy(((img - img.mean()) / img.std())[None])
    logits = sliding_window_predict(mirror_tta(net, mirroring_axes(ckpt)), x, config["patch_size"], num_outputs=3)
    probs = torch.softmax(logits, 0).numpy()
    golden = np.load(model / "predictions_tta" / "hippocampus_020.npz")["probabilities"]
    assert probs.shape == golden.shape
    assert np.abs(probs - golden).max() < 5e-3  # nnU-Net accumulated in fp16; measured 1.7e-3
    assert (probs.argmax(0) == golden.argmax(0)).mean() > 0.9999
