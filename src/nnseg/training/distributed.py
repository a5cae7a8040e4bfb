"""Data-parallel training on ``torch.distributed`` (DDP), as nnU-Net's ``-num_gpus N`` (reference §1.9 DDP row).

One process per device ("rank"). Every rank builds the same network (same seed; DDP also broadcasts rank 0's weights),
draws its own share of each global batch, and DDP averages the gradients, so all ranks hold identical weights after
every step. What differs from a single process:

* the global batch of ``batch_size`` samples is split ``batch_size // world`` per rank, the remainder going to the first
  ranks; which samples are forced to foreground is decided on the global batch (nnU-Net's "last ``bs - round(bs *
  0.67)``") and each rank gets the flags of its own slice, as a per-rank oversampling fraction;
* each rank samples with its own seed (mixed from the run's seed, the world size and the rank), so the global batch
  depends only on (seed, world size);
* batch Dice sums TP/FP/FN over the global batch: the per-rank sums are all-gathered with a gradient
  (:func:`all_gather_with_grad`, nnU-Net's ``AllGatherGrad``);
* BatchNorm layers become ``SyncBatchNorm`` on GPUs (InstanceNorm needs nothing); the lowest deep-supervision output gets weight
  1e-6 instead of 0 so that DDP sees a gradient for every parameter (nnU-Net does the same);
* epoch losses and online-validation TP/FP/FN are reduced over ranks, so every rank logs the same numbers and takes the
  same early-stopping / time-budget decisions; only rank 0 writes files (see :func:`rank_run`).

Backend: NCCL for CUDA devices, gloo on the CPU. The saved state dict is the plain network's (no ``module.`` prefix).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from nnseg.training.losses import DeepSupervisionLoss, deep_supervision_weights
from nnseg.training.sampling import oversample_flags

if TYPE_CHECKING:
    from nnseg.training.run_spec import Components, RunSpec
    from nnseg.training.state import TrainState

DDP_LAST_DS_WEIGHT = 1e-6  # nnU-Net: the lowest deep-supervision output is weighted 1e-6 (not 0) under DDP
DEFAULT_TIMEOUT_MIN = 30
BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank and world size, rank and process count on its node.

    ``init_method`` is ``"env://"`` under torchrun (its agent hosts the rendezvous store) or ``tcp://host:port`` for
    processes started by nnseg itself.
    """

    rank: int
    world_size: int
    local_rank: int = 0
    local_world_size: int = 1
    init_method: str = "env://"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info_from_env(env: Mapping[str, str]) -> DistInfo | None:
    """torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``) as a :class:`DistInfo`.

    Returns:
        None when ``WORLD_SIZE`` is unset or 1 (a plain single-process run).

    Raises:
        ValueError: a variable is not an integer or the rank is outside ``[0, WORLD_SIZE)``.
    """
    if env.get("WORLD_SIZE", "") in ("", "1"):
        return None
    try:
        world = int(env["WORLD_SIZE"])
        values = {k: int(env.get(k, d)) for k, d in (("RANK", "0"), ("LOCAL_RANK", "0"), ("LOCAL_WORLD_SIZE", str(world)))}
    except ValueError:
        shown = {k: env.get(k) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
        raise ValueError(f"torch.distributed variables must be integers, got {shown}; launch with torchrun") from None
    if not 0 <= values["RANK"] < world or not 0 <= values["LOCAL_RANK"] < values["LOCAL_WORLD_SIZE"]:
        raise ValueError(f"RANK={values['RANK']} / LOCAL_RANK={values['LOCAL_RANK']} do not fit WORLD_SIZE={world} / "
                         f"LOCAL_WORLD_SIZE={values['LOCAL_WORLD_SIZE']}; launch with torchrun")
    return DistInfo(rank=values["RANK"], world_size=world, local_rank=values["LOCAL_RANK"],
                    local_world_size=values["LOCAL_WORLD_SIZE"])


def backend_for(device: torch.device) -> str:
    """``nccl`` for CUDA devices, ``gloo`` otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def rank_device(device: torch.device, info: DistInfo) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` on GPUs (checked to exist), the given device otherwise."""
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if info.local_rank >= count:
        raise ValueError(f"local rank {info.local_rank} needs GPU {info.local_rank} but this node has {count} GPU(s); "
                         f"start at most {count} processes per node (torchrun --nproc-per-node / -num_gpus)")
    return torch.device("cuda", info.local_rank)


def rank_batch_sizes(batch_size: int, world_size: int) -> list[int]:
    """nnU-Net's split of a global batch: ``batch_size // world`` each, the remainder to the first ranks.

    Raises:
        ValueError: ``batch_size < world_size`` (a rank would get no sample).
    """
    if batch_size < world_size:
        raise ValueError(f"the global batch size {batch_size} is smaller than the number of processes {world_size}: "
                         f"every rank needs at least one sample. Use at most {batch_size} GPUs/processes, or raise the "
                         f"batch size (--set batch_size={world_size}, or batch_size in the plans' configuration)")
    base, extra = divmod(batch_size, world_size)
    return [base + (1 if r < extra else 0) for r in range(world_size)]


def rank_part(num_parts: int, part_id: int, info: DistInfo | None) -> tuple[int, int]:
    """``(part_id, num_parts)`` of this rank's share of prediction part ``part_id`` of ``num_parts``.

    ``sorted[part_id::num_parts][rank::world]`` = ``sorted[part_id + rank * num_parts :: num_parts * world]``, so the
    ranks' shares partition the part.

    Raises:
        ValueError: ``part_id`` outside ``[0, num_parts)``.
    """
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise ValueError(f"-part_id must be in [0, -num_parts); got -num_parts {num_parts} -part_id {part_id}")
    if info is None:
        return part_id, num_parts
    return part_id + info.rank * num_parts, num_parts * info.world_size


def rank_oversampling(batch_size: int, oversample_foreground: float, world_size: int, rank: int) -> tuple[int, float]:
    """This rank's batch size and foreground-oversampling fraction.

    The global batch's flags (:func:`~nnseg.training.sampling.oversample_flags`) are sliced to this rank's samples
    (rank 0 takes the first ones); as they are "the last k forced" globally, the slice is "the last k' forced" too, which
    the per-rank fraction ``k' / n`` reproduces in the sampler.
    """
    sizes = rank_batch_sizes(batch_size, world_size)
    low = sum(sizes[:rank])
    share = oversample_flags(batch_size, oversample_foreground)[low:low + sizes[rank]]
    fraction = sum(share) / sizes[rank]
    if oversample_flags(sizes[rank], fraction) != share:  # pragma: no cover - the slice of "last k" is "last k'"
        raise RuntimeError(f"oversampling flags {share} of rank {rank} cannot be expressed as a fraction")
    return sizes[rank], fraction


def rank_seed(seed: int, world_size: int, rank: int) -> int:
    """The data seed of a rank: the run's seed itself for a single process, else mixed with (world size, rank)."""
    if world_size == 1:
        return seed
    return int(np.random.SeedSequence([seed, world_size, rank]).generate_state(1, dtype=np.uint32)[0] >> 1)


class _AllGatherGrad(torch.autograd.Function):
    """``(world, *shape)`` stack of every rank's tensor; the backward sums the incoming gradients over ranks."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[dist.get_rank()]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` stacked to ``(world, *shape)``, differentiable (nnU-Net's ``AllGatherGrad``).

    Every rank computes the same loss from the stack; the backward sums the gradients arriving for this rank's part
    over ranks, so after DDP's gradient averaging the weights get exactly the gradient of that loss.
    """
    return _AllGatherGrad.apply(tensor)


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """``sum_r tensor_r`` over ranks, differentiable: batch Dice's per-rank TP/FP/FN sums -> global sums."""
    return all_gather_with_grad(tensor).sum(0)


def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, BATCHNORM_TYPES) for m in module.modules())


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm layers -> ``SyncBatchNorm`` on CUDA (statistics over the global batch); unchanged elsewhere.

    torch's SyncBatchNorm runs on GPUs only, so CPU (gloo) ranks keep per-rank BatchNorm statistics; InstanceNorm
    (nnU-Net's default) normalises each sample on its own and needs nothing. The parameters are moved into the new
    layers, not copied, so an optimizer built before keeps working.
    """
    if torch.device(device).type != "cuda" or not has_batchnorm(module):
        return module
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def rank_run(run: RunSpec, info: DistInfo) -> RunSpec:
    """The run as this rank executes it: ranks other than 0 write no checkpoints (hooks decide about logs)."""
    if info.is_main:
        return run
    return dataclasses.replace(run, disable_checkpointing=True)


def _reduction_device(device: torch.device) -> torch.device:
    return device if device.type == "cuda" else torch.device("cpu")


@dataclass
class DistributedTraining:
    """The process group's view used by the training loop (``train(..., dist=...)``)."""

    info: DistInfo
    device: torch.device

    def prepare(self, run: RunSpec, parts: Components) -> None:
        """Turn single-process :class:`Components` into this rank's: per-rank batches, SyncBatchNorm, loss, DDP."""
        size, fraction = rank_oversampling(run.batch_size, run.config.oversample_foreground, self.info.world_size,
                                           self.info.rank)
        seed = rank_seed(run.seed, self.info.world_size, self.info.rank)
        b = parts.batches
        parts.batches = dataclasses.replace(
            b, seed=seed, train_sampler=dataclasses.replace(b.train_sampler, batch_size=size, oversample_foreground=fraction),
            val_sampler=dataclasses.replace(b.val_sampler, batch_size=size, oversample_foreground=fraction))
        compiled = parts.network is not parts.module
        parts.module = sync_batchnorm(parts.module, self.device)
        parts.loss = ddp_loss(parts.loss, batch_dice=run.batch_dice,
                              rank_weight=size * self.info.world_size / run.batch_size)
        ids = [self.device.index] if self.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(parts.module, device_ids=ids,
                                                      find_unused_parameters=not run.config.deep_supervision)
        parts.network = torch.compile(wrapped) if compiled else wrapped

    def reduce_epoch(self, train_loss: float, val_loss: float, counts: np.ndarray) -> tuple[float, float, np.ndarray]:
        """Mean train / validation loss over ranks and summed online-validation TP/FP/FN ``(3, n_classes)``."""
        flat = np.concatenate([[train_loss, val_loss], np.asarray(counts, dtype=np.float64).ravel()])
        t = torch.from_numpy(flat).to(_reduction_device(self.device))
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        out = t.cpu().numpy()
        world = self.info.world_size
        return float(out[0] / world), float(out[1] / world), out[2:].reshape(np.shape(counts))

    def sync_state(self, state: TrainState) -> None:
        """Rank 0's epoch count (set by the time budget from its own clock) for every rank."""
        state.num_epochs = int(self.broadcast(state.num_epochs))

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object) on every rank."""
        box = [value]
        dist.broadcast_object_list(box, src=0, device=_reduction_device(self.device))
        return box[0]

    def barrier(self) -> None:
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def main_first(self, make: Callable[[], Any]) -> Any:
        """Run ``make()`` on rank 0, then on the other ranks (rank 0 may create files the others read)."""
        if self.info.is_main:
            out = make()
            self.barrier()
            return out
        self.barrier()
        return make()


class RankWeightedLoss(nn.Module):
    """``loss * weight``: a rank's share of a batch split unevenly over the ranks (see :func:`ddp_loss`)."""

    def __init__(self, loss: nn.Module, weight: float) -> None:
        super().__init__()
        self.loss, self.weight = loss, float(weight)

    def forward(self, outputs: Any, targets: Any) -> torch.Tensor:
        return self.loss(outputs, targets) * self.weight


def ddp_loss(loss: nn.Module, *, batch_dice: bool, rank_weight: float = 1.0) -> nn.Module:
    """The loss under DDP: lowest deep-supervision weight 1e-6, batch Dice summed over ranks (with gradient).

    ``rank_weight`` = ``n_rank * world / batch_size``: DDP averages the ranks' gradients, which is the global batch's
    mean only when every rank holds as many samples; weighting each rank's (per-batch mean) loss by its share makes
    it so for uneven splits too (e.g. 3 samples on 2 ranks). It is 1, and nothing is wrapped, for even splits. The
    weights sum to the world size, so the batch-Dice all-gather still yields the global gradient.
    """
    if isinstance(loss, DeepSupervisionLoss) and len(loss.weights) > 1:
        loss = DeepSupervisionLoss(loss.loss, deep_supervision_weights(len(loss.weights), last_weight=DDP_LAST_DS_WEIGHT))
    if batch_dice:
        for m in loss.modules():
            if hasattr(m, "batch_reduce"):
                m.batch_reduce = sum_over_ranks
    return loss if rank_weight == 1.0 else RankWeightedLoss(loss, rank_weight)


@contextmanager
def process_group(info: DistInfo, device: torch.device, *,
                  timeout_min: float = DEFAULT_TIMEOUT_MIN) -> Iterator[DistributedTraining]:
    """Join the process group (NCCL on CUDA, gloo otherwise) for the duration of the block, then leave it.

    Args:
        info: this process's rank and world.
        device: the device this rank trains on (``cuda:LOCAL_RANK`` or ``cpu``; see :func:`rank_device`).
        timeout_min: how long a collective waits for the other ranks.
    """
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device), init_method=info.init_method, rank=info.rank,
                            world_size=info.world_size, timeout=datetime.timedelta(minutes=timeout_min))
    try:
        yield DistributedTraining(info, device)
        # Leave together: a rank tearing gloo down while its peer still uses the connection can abort the peer.
        dist.barrier()
    finally:
        dist.destroy_process_group()
