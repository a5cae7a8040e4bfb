"""DDP helpers: batch split and oversampling per rank, seeds, torchrun variables, loss under DDP, SyncBatchNorm,
a one-process gloo group (all-gather with gradient, prepare, train), diagnostics hooks, sharded prediction arguments.
The 2-rank behaviour is tested for real in tests/e2e/test_ddp_torchrun.py."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
import torch
from tinydata import tiny_plans, tiny_spec
from torch import nn

from nnseg.cli.workflow.ddp_cmds import shard_predict_args
from nnseg.training.checkpoint import load_checkpoint
from nnseg.training.config import TrainConfig
from nnseg.training.ddp_checks import WeightChecksums, checksum_hooks, weights_digest
from nnseg.training.distributed import (
    DDP_LAST_DS_WEIGHT,
    DistInfo,
    RankWeightedLoss,
    all_gather_with_grad,
    backend_for,
    ddp_loss,
    dist_info_from_env,
    process_group,
    rank_batch_sizes,
    rank_device,
    rank_oversampling,
    rank_run,
    rank_seed,
    sum_over_ranks,
    sync_batchnorm,
)
from nnseg.training.loop import train
from nnseg.training.losses import (
    DeepSupervisionLoss,
    DiceBCELoss,
    DiceCELoss,
    soft_dice,
)
from nnseg.training.run_spec import build_components
from nnseg.training.sampling import oversample_flags
from nnseg.training.setup import FoldJob, make_run_spec


@pytest.mark.parametrize(("bs", "world", "sizes"), [(2, 2, [1, 1]), (5, 2, [3, 2]), (7, 3, [3, 2, 2]), (4, 1, [4])])
def test_rank_batch_sizes(bs: int, world: int, sizes: list[int]) -> None:
    assert rank_batch_sizes(bs, world) == sizes


def test_batch_smaller_than_world_is_refused() -> None:
    with pytest.raises(ValueError, match=r"batch size 2 is smaller than the number of processes 4.*batch_size=4"):
        rank_batch_sizes(2, 4)


@pytest.mark.parametrize("p", [0.0, 0.33, 0.5, 0.9, 1.0])
def test_rank_oversampling_reproduces_the_global_flags(p: float) -> None:
    for bs in range(1, 10):
        for world in range(1, bs + 1):
            per_rank = [rank_oversampling(bs, p, world, r) for r in range(world)]
            assert [n for n, _ in per_rank] == rank_batch_sizes(bs, world)
            flags = [f for n, frac in per_rank for f in oversample_flags(n, frac)]
            assert flags == oversample_flags(bs, p), (bs, world, p)


def test_rank_oversampling_bs2_two_ranks() -> None:
    # nnU-Net's bs 2: sample 1 is forced to foreground -> rank 0 never, rank 1 always
    assert rank_oversampling(2, 0.33, 2, 0) == (1, 0.0)
    assert rank_oversampling(2, 0.33, 2, 1) == (1, 1.0)


def test_rank_seed() -> None:
    assert rank_seed(123, 1, 0) == 123
    seeds = [rank_seed(123, 4, r) for r in range(4)]
    assert len(set(seeds)) == 4 and seeds == [rank_seed(123, 4, r) for r in range(4)]
    assert all(0 <= s < 2**31 for s in seeds)
    assert rank_seed(123, 2, 0) != rank_seed(123, 4, 0) != rank_seed(124, 4, 0)


def test_dist_info_from_env() -> None:
    assert dist_info_from_env({}) is None
    assert dist_info_from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    info = dist_info_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert info == DistInfo(rank=3, world_size=4, local_rank=1, local_world_size=2, init_method="env://")
    assert not info.is_main and DistInfo(0, 2).is_main
    with pytest.raises(ValueError, match="RANK=2"):
        dist_info_from_env({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(ValueError, match="must be integers"):
        dist_info_from_env({"WORLD_SIZE": "two"})


def test_backend() -> None:
    assert backend_for(torch.device("cpu")) == "gloo"
    assert backend_for(torch.device("cuda", 1)) == "nccl"


def test_ddp_loss_weights_and_batch_reduce() -> None:
    base = DiceCELoss(batch_dice=True)
    loss = ddp_loss(DeepSupervisionLoss(base, [4 / 7, 2 / 7, 1 / 7, 0.0]), batch_dice=True)
    assert loss.weights[-1] == pytest.approx(DDP_LAST_DS_WEIGHT / (1 + 0.5 + 0.25 + DDP_LAST_DS_WEIGHT))
    assert sum(loss.weights) == pytest.approx(1.0) and base.batch_reduce is sum_over_ranks
    regions = DiceBCELoss(batch_dice=False)
    ddp_loss(DeepSupervisionLoss(regions, [1.0]), batch_dice=False)
    assert regions.batch_reduce is None


def test_ddp_loss_rank_weight_for_uneven_splits() -> None:
    base = DeepSupervisionLoss(DiceCELoss(batch_dice=False), [1.0])
    assert ddp_loss(base, batch_dice=False, rank_weight=1.0) is base  # even split: nnU-Net's loss unchanged
    weighted = ddp_loss(base, batch_dice=False, rank_weight=4 / 3)  # 2 of 3 samples on 2 ranks
    assert isinstance(weighted, RankWeightedLoss)
    logits, target = torch.randn(2, 2, 4, 4), torch.randint(0, 2, (2, 1, 4, 4))
    torch.testing.assert_close(weighted([logits], [target]), base([logits], [target]) * 4 / 3)


def _bn_net() -> nn.Module:
    return nn.Sequential(nn.Conv3d(1, 2, 3), nn.BatchNorm3d(2), nn.Sequential(nn.Conv3d(2, 2, 1), nn.BatchNorm3d(2)))


def test_sync_batchnorm_only_on_cuda_and_keeps_parameters() -> None:
    net = _bn_net()
    params = list(net.parameters())
    assert sync_batchnorm(net, torch.device("cpu")) is net
    converted = sync_batchnorm(net, torch.device("cuda", 0))  # the conversion itself needs no GPU
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in converted.modules()) == 2
    assert not any(isinstance(m, nn.BatchNorm3d) for m in converted.modules())
    assert all(a is b for a, b in zip(params, converted.parameters()))  # an existing optimizer keeps working
    inorm = nn.Sequential(nn.Conv3d(1, 2, 3), nn.InstanceNorm3d(2, affine=True))
    assert sync_batchnorm(inorm, torch.device("cuda", 0)) is inorm


def _job(pre: Path, results: Path, **cfg: object) -> FoldJob:
    base: dict[str, object] = {"num_epochs": 2, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1, "seed": 5,
                               "save_every": 1}
    base.update(cfg)
    return FoldJob(plans=tiny_plans(), configuration_name="3d_fullres", spec=tiny_spec(), preprocessed_dataset_folder=pre,
                   results_dataset_folder=results, fold=0, trainer_name="nnUNetTrainer", config=TrainConfig(**base),
                   device=torch.device("cpu"), precision="fp32")


def test_rank_run_disables_checkpoints_on_other_ranks(tiny_preprocessed: Path, tmp_path: Path) -> None:
    run = make_run_spec(_job(tiny_preprocessed, tmp_path / "r"))
    assert rank_run(run, DistInfo(0, 2)) is run
    assert rank_run(run, DistInfo(1, 2)).disable_checkpointing and not run.disable_checkpointing


@pytest.fixture
def group(tmp_path: Path):  # type: ignore[no-untyped-def]
    info = DistInfo(0, 1, init_method=f"file://{tmp_path / 'store'}")
    with process_group(info, torch.device("cpu")) as ddp:
        yield ddp
    assert not torch.distributed.is_initialized()


def test_all_gather_with_grad_one_rank(group) -> None:  # type: ignore[no-untyped-def]
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    stacked = all_gather_with_grad(x)
    assert stacked.shape == (1, 2)
    (stacked.sum(0) * torch.tensor([3.0, 4.0])).sum().backward()
    assert x.grad.tolist() == [3.0, 4.0]
    probs = torch.rand(3, 2, 4, 4, requires_grad=True)
    onehot = torch.rand(3, 2, 4, 4) > 0.5
    plain = soft_dice(probs, onehot, batch_dice=True)
    reduced = soft_dice(probs, onehot, batch_dice=True, batch_reduce=sum_over_ranks)
    torch.testing.assert_close(plain, reduced)


def test_group_collectives_one_rank(group) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    counts = np.arange(6.0).reshape(3, 2)
    train_loss, val_loss, out = group.reduce_epoch(0.5, 0.25, counts)
    assert (train_loss, val_loss) == (0.5, 0.25) and np.array_equal(out, counts)
    assert group.broadcast({"seed": 3}) == {"seed": 3}
    assert group.main_first(lambda: 7) == 7


def test_prepare_and_train_one_rank(group, tiny_preprocessed: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = make_run_spec(_job(tiny_preprocessed, tmp_path / "results", num_epochs=1, iterations_per_epoch=1))
    run = dataclasses.replace(run, batch_size=3, background=False)
    parts = build_components(run)
    group.prepare(run, parts)
    assert isinstance(parts.network, nn.parallel.DistributedDataParallel) and parts.network.module is parts.module
    assert parts.batches.train_sampler.batch_size == 3 and parts.batches.seed == run.seed  # world 1: as before
    assert parts.batches.train_sampler.oversample_foreground == pytest.approx(1 / 3)
    assert parts.loss.weights[-1] > 0
    result = train(rank_run(run, group.info), dist=group)
    ckpt = load_checkpoint(result.output_folder / "checkpoint_final.pth")
    assert ckpt["current_epoch"] == 1 and not any(k.startswith("module.") for k in ckpt["network_weights"])


def test_weight_checksums_per_step(tmp_path: Path) -> None:
    net = nn.Linear(2, 1)
    hook = WeightChecksums(tmp_path, rank=1)
    hook.on_train_start(None, None, net)
    for _ in hook.wrap_iterations(range(3), epoch=4, total=3):
        with torch.no_grad():
            net.weight += 1
    hook.on_epoch_end(None, None)
    again = WeightChecksums(tmp_path, rank=1)  # a resumed launch keeps the earlier entries
    assert [(e["epoch"], e["iteration"]) for e in again.entries] == [(4, 0), (4, 1), (4, 2)]
    assert len({e["sha256"] for e in again.entries}) == 3
    assert again.entries[-1]["sha256"] == weights_digest(net)[0]


def test_checksum_hook_factory_per_rank(tmp_path: Path) -> None:
    hooks = [checksum_hooks(tmp_path, DistInfo(r, 2)) for r in range(2)]
    assert [h[0].path.name for h in hooks] == ["checksums_rank0.json", "checksums_rank1.json"]


def test_shard_predict_args_composes_parts_and_ranks() -> None:
    cases = list(range(23))
    ns = argparse.Namespace(num_parts=2, part_id=1, device="cpu")
    assert shard_predict_args(ns, None) is ns
    shards = []
    for rank in range(3):
        a = shard_predict_args(ns, DistInfo(rank, 3, local_rank=rank, local_world_size=3))
        shards.append(cases[a.part_id::a.num_parts])
        assert a.device == "cpu"
    assert sorted(c for s in shards for c in s) == cases[1::2]  # the rank shards partition part 1 of 2
    assert all(set(a).isdisjoint(b) for i, a in enumerate(shards) for b in shards[i + 1:])
    gpu = shard_predict_args(argparse.Namespace(num_parts=1, part_id=0, device="cuda"), DistInfo(3, 4, 1, 2))
    assert (gpu.part_id, gpu.num_parts, gpu.device) == (3, 4, "cuda:1")
    with pytest.raises(ValueError, match="-part_id"):
        shard_predict_args(argparse.Namespace(num_parts=2, part_id=2, device=None), None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_one_rank_nccl_syncbn_compile_fp16(tiny_preprocessed: Path, tmp_path: Path) -> None:
    """The GPU path on one rank: NCCL, cuda:LOCAL_RANK, BatchNorm -> SyncBatchNorm, torch.compile(DDP), fp16 scaler."""
    info = DistInfo(0, 1, init_method=f"file://{tmp_path / 'store'}")
    device = rank_device(torch.device("cuda"), info)
    job = dataclasses.replace(_job(tiny_preprocessed, tmp_path / "results", num_epochs=2, iterations_per_epoch=2,
                                   compile="true"), device=device, precision="fp16")
    with process_group(info, device) as ddp:
        run = make_run_spec(job)
        arch = {**run.architecture, "arch_kwargs": {**run.architecture["arch_kwargs"],
                                                    "norm_op": "torch.nn.modules.batchnorm.BatchNorm3d"}}
        run = dataclasses.replace(run, architecture=arch)
        parts = build_components(run)
        ddp.prepare(run, parts)
        assert any(isinstance(m, nn.SyncBatchNorm) for m in parts.module.modules())
        assert ddp.reduce_epoch(1.0, 2.0, torch.ones(3, 1).numpy())[0] == 1.0  # CUDA tensors through NCCL
        result = train(rank_run(run, info), dist=ddp)
        ddp.barrier()
    ckpt = load_checkpoint(result.output_folder / "checkpoint_final.pth")
    keys = list(ckpt["network_weights"])
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in keys) and any("running_mean" in k for k in keys)
    assert ckpt["grad_scaler_state"] is not None and len(ckpt["logging"]["train_losses"]) == 2
