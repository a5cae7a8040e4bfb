"""Training throughput on the Hippocampus 3d_fullres network, batch size 2, on this machine's CPU.

Prints the mean seconds per iteration of (a) forward+backward alone on a fixed batch of the training shape and
precision and (b) nnseg's full training loop (patch sampling from the blosc2 store, batched augmentation in the
background thread, targets, forward, backward, clipping, SGD step). Target: (b) <= 1.1 x (a).

``--variants`` instead times one SGD step (forward, backward, clipping, step) of the 3d_fullres network (batch 2) and
the 2d network (``--batch-2d``, default 32) per kernel variant, interleaved, best of ``--reps``: precision fp32/bf16,
``+cl`` channels-last memory format, ``+compile`` torch.compile (inductor; its warm-up is printed separately),
``+t1`` one torch thread. It prints wall and CPU seconds per step (CPU time is less distorted on a shared machine).

Usage: python bench/train_throughput.py [--cases 40] [--iterations 20] [--precision auto|fp32|bf16]
       python bench/train_throughput.py --variants fp32,bf16,bf16+cl,bf16+compile,bf16+t1 [--reps 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from cpuinfo import cpu_line  # bench/cpuinfo.py
from torch import nn

from nnseg.devices import autocast_context, resolve_precision
from nnseg.plans.schema import load_plans
from nnseg.preprocessed.preprocess import preprocess_files
from nnseg.preprocessed.store import save_case
from nnseg.raw.dataset_json import load_dataset_json
from nnseg.training.config import TrainConfig
from nnseg.training.data import prefetched
from nnseg.training.loop import train_step
from nnseg.training.run_spec import build_components
from nnseg.training.setup import FoldJob, make_run_spec

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
EXPECTED = SHARED / "reference" / "expected" / "Dataset004_Hippocampus"
TASK = SHARED / "data" / "Task04_Hippocampus"


def preprocess_some(folder: Path, n: int) -> tuple[object, object]:
    plans = load_plans(EXPECTED / "nnUNetPlans.json")
    raw = plans.to_json()
    raw["configurations"]["3d_fullres_bs2"] = {"inherits_from": "3d_fullres", "batch_size": 2}
    plans = type(plans).from_json(raw)
    spec = load_dataset_json(EXPECTED / "dataset.json")
    cfg = plans.configuration("3d_fullres")
    out = folder / cfg.data_identifier
    for image in sorted((TASK / "imagesTr").glob("hippocampus_*.nii.gz"))[:n]:
        data, seg, props = preprocess_files([image], TASK / "labelsTr" / image.name, io="SimpleITKIO",
                                            plans=plans, configuration=cfg, spec=spec)
        save_case(out, image.name[: -len(".nii.gz")], data, seg, props, patch_size=cfg.patch_size)
    return plans, spec


def time_fn(fn, n: int, warmup: int = 3) -> float:  # type: ignore[no-untyped-def]
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def loop_time(parts, n: int, precision: str, *, background: bool) -> float:  # type: ignore[no-untyped-def]
    """Mean seconds per iteration of the training loop (batches made in a background thread or inline)."""
    batches = prefetched(lambda i: parts.batches.train_batch(1, i), n, background=background)
    times = []
    last = time.perf_counter()
    for img, tgt in batches:
        train_step(parts.network, img, tgt, parts.loss, parts.optimizer, None, precision=precision, grad_clip=12.0)
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return float(np.mean(times[3:]))


def variant_step(architecture: dict, patch: list[int], batch: int, variant: str):  # type: ignore[no-untyped-def]
    """A closure running one SGD step of a fresh (seeded) network in ``variant`` (see the module docstring)."""
    from nnseg.networks import build_network

    torch.manual_seed(0)
    net = build_network(architecture, input_channels=1, num_classes=3, deep_supervision=True)
    fmt = (torch.channels_last_3d if len(patch) == 3 else torch.channels_last) if "+cl" in variant else None
    x = torch.randn(batch, 1, *patch)
    if fmt is not None:
        net, x = net.to(memory_format=fmt), x.contiguous(memory_format=fmt)
    opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    runner = torch.compile(net) if "+compile" in variant else net
    precision = "bf16" if variant.startswith("bf16") else "fp32"

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast_context(torch.device("cpu"), precision):
            loss = sum((o.float() ** 2).mean() for o in runner(x))
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 12.0)
        opt.step()

    return step


def compare_variants(variants: list[str], iterations: int, reps: int, batch_2d: int) -> None:
    plans = load_plans(EXPECTED / "nnUNetPlans.json")
    threads = torch.get_num_threads()
    for name, batch in (("3d_fullres", 2), ("2d", batch_2d)):
        cfg = plans.configuration(name)
        steps = {}
        for v in variants:
            torch.set_num_threads(1 if "+t1" in v else threads)
            start = time.perf_counter()
            steps[v] = variant_step(cfg.architecture, list(cfg.patch_size), batch, v)
            steps[v]()
            steps[v]()
            print(f"{name} {v}: build + 2 warm-up steps (compile included) {time.perf_counter() - start:.1f} s", flush=True)
        best = {v: (float("inf"), float("inf")) for v in variants}
        for _ in range(reps):
            for v, step in steps.items():
                torch.set_num_threads(1 if "+t1" in v else threads)
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(iterations):
                    step()
                best[v] = min(best[v], ((time.perf_counter() - wall) / iterations, (time.process_time() - cpu) / iterations))
        for v, (wall, cpu) in best.items():
            print(f"{name} batch {batch} {v:<18} wall {wall:.3f} s/step  CPU {cpu:.3f} s/step   {cpu_line()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--variants", default=None, help="comma-separated kernel variants, e.g. fp32,bf16,bf16+cl")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch-2d", type=int, default=32)
    args = ap.parse_args()
    if args.variants:
        compare_variants(args.variants.split(","), min(args.iterations, 5), args.reps, args.batch_2d)
        return
    torch.set_num_threads(torch.get_num_threads())
    device = torch.device("cpu")
    precision = resolve_precision(args.precision, device)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "Dataset004_Hippocampus"
        plans, spec = preprocess_some(pre, args.cases)
        job = FoldJob(plans=plans, configuration_name="3d_fullres_bs2", spec=spec, preprocessed_dataset_folder=pre,
                      results_dataset_folder=Path(tmp) / "results", fold=0, trainer_name="nnUNetTrainer",
                      config=TrainConfig(seed=0), device=device, precision=precision)
        run = make_run_spec(job)
        parts = build_components(run)
        image, targets = parts.batches.train_batch(0, 0)

        def fwd_bwd() -> None:
            parts.network.zero_grad(set_to_none=True)
            with autocast_context(device, precision):
                out = parts.network(image)
                loss = parts.loss(out, targets[: len(out)])
            loss.backward()

        def step() -> None:
            train_step(parts.network, image, targets, parts.loss, parts.optimizer, None, precision=precision,
                       grad_clip=12.0)

        t_fb = time_fn(fwd_bwd, args.iterations)
        t_step = time_fn(step, args.iterations)
        n = args.iterations + 3
        t_loop = {mode: loop_time(parts, n, precision, background=mode) for mode in (False, True)}
        t_data = time_fn(lambda: parts.batches.train_batch(2, 0), 10, warmup=1)
    print(f"machine: {torch.get_num_threads()} torch threads, precision {precision}, batch {tuple(image.shape)}; "
          f"{cpu_line()}")
    print(f"forward+backward alone:          {t_fb:.3f} s/iteration")
    print(f"forward+backward+clip+SGD step:  {t_step:.3f} s/iteration")
    print(f"data path alone (sample+augment): {t_data:.3f} s/batch")
    for mode, label in ((False, "batches inline (CPU default)"), (True, "batches in a background thread")):
        print(f"full training loop, {label}: {t_loop[mode]:.3f} s/iteration = {t_loop[mode] / t_fb:.2f} x "
              "forward+backward (target <= 1.10)")


if __name__ == "__main__":
    main()
