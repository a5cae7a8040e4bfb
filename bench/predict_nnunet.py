"""``nnUNetv2_predict`` of nnseg and of nnU-Net v2 side by side: wall, CPU time and peak RSS of each process tree.

Called by ``bench/predict.py --nnunet`` (see there). Three sets, each predicted by both tools with the same command line
(``-device cpu``, nnU-Net's default reader/writer processes, nnseg's default threads), in fresh processes:

* ``hippocampus``: nnU-Net's golden Hippocampus model, 10 cases, mirroring TTA;
* ``two_channel``: 6 cases of the 2-channel anisotropic synthetic set (``Dataset901_SynthAniso``) with nnU-Net's own
  3d_fullres plans for it (patch 40x96x112, the 6-stage U-Net 32-320) and seeded random weights, mirroring TTA;
* ``ct118``: a 118-class model (``bench/big_volume.py``'s plans and network, seeded random weights) on a medium CT,
  192x192x128 at 1.0x1.0x1.5 mm (a corner of big_volume's phantom; 128^3 at the plans' 1.5 mm), no TTA.

The peak RSS is the largest sum of the RSS of the command's process and all its children, sampled every 50 ms (nnU-Net
reads and exports in worker processes, nnseg in threads: both are counted whole). CPU time is user + system of the
whole tree. nnU-Net runs from ``--nnunet-site`` (default ``/work/main/.site/nnunet``, see ``bench/gpu_compare.sh``),
never as a dependency of nnseg; the golden model's trainer class ``nnUNetTrainer_bench`` is not shipped with nnU-Net, so
the measured process looks it up as ``nnUNetTrainer`` (the same network builder).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NNSEG_SHARED", REPO.parent / "shared"))
HIPPO_MODEL = "Dataset004_Hippocampus/nnUNetTrainer_bench__nnUNetPlans__3d_fullres_bs2"
ANISO = "Dataset901_SynthAniso"
SETS = ("hippocampus", "two_channel", "ct118")
CT_SHAPE, CT_SPACING = (128, 192, 192), (1.5, 1.0, 1.0)  # (z, y, x) as SimpleITK reads it
NNUNET_PREDICT = """
import sys
import nnunetv2.inference.predict_from_raw_data as p
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
find = p.recursive_find_trainer_class_by_name
p.recursive_find_trainer_class_by_name = lambda name: nnUNetTrainer if name == "nnUNetTrainer_bench" else find(name)
sys.argv[0] = "nnUNetv2_predict"
p.predict_entry_point()
"""


def watch_tree(pid: int, peak: list[int], stop: threading.Event) -> None:
    """Largest sum of RSS over ``pid`` and its descendants, sampled every 50 ms, into ``peak[0]``."""
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.Error:
        return
    while not stop.is_set():
        total = 0
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        peak[0] = max(peak[0], total)
        time.sleep(0.05)


def measure(cmd: list[str], env: dict[str, str], log: Path) -> dict[str, float]:
    """Run ``cmd``; its wall, CPU (user + system of the tree), peak tree RSS and the largest process's peak RSS (what
    ``/usr/bin/time -v`` reports: the command's process or one of its workers) in GB."""
    peak, stop = [0], threading.Event()
    before = os.times()
    start = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        watcher = threading.Thread(target=watch_tree, args=(child.pid, peak, stop), daemon=True)
        watcher.start()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = rc = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    after = os.times()
    stop.set()
    watcher.join()
    if rc != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-20:])
        raise RuntimeError(f"{' '.join(cmd[:3])}... failed (exit {rc}):\n{tail}")
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_gb": peak[0] / 1e9, "max_process_rss_gb": usage.ru_maxrss * 1024 / 1e9}


def _env(work: Path, tool: str, nnunet_site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(nnUNet_results=str(work / "results"), nnUNet_raw=str(work / "raw"),
               nnUNet_preprocessed=str(work / "preprocessed"), PYTHONUNBUFFERED="1")
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != REPO / "src"]
    env["PYTHONPATH"] = os.pathsep.join([str(nnunet_site) if tool == "nnunet" else str(REPO / "src"), *paths])
    return env


def _command(tool: str, spec: dict[str, object], out: Path) -> list[str]:
    args = ["-i", str(spec["images"]), "-o", str(out), "-d", str(spec["dataset"]), "-tr", str(spec["trainer"]),
            "-c", str(spec["configuration"]), "-f", "0", "-device", "cpu", "--disable_progress_bar"]
    args += [] if spec["tta"] else ["--disable_tta"]
    if tool == "nnunet":
        return [sys.executable, "-c", NNUNET_PREDICT, *args]
    return [sys.executable, "-m", "nnseg.cli.main", "predict", *args]


def _random_model(folder: Path, plans: dict, dataset: dict, configuration: str, mirror: tuple[int, ...]) -> None:
    """A model folder nnU-Net and nnseg both load: the plans, dataset.json and seeded random weights (fold 0)."""
    import torch

    from nnseg.networks import build_network
    from nnseg.training.checkpoint import save_checkpoint

    cfg = plans["configurations"][configuration]
    torch.manual_seed(0)
    net = build_network(cfg["architecture"], input_channels=len(dataset["channel_names"]),
                        num_classes=len(dataset["labels"]), deep_supervision=False)
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    save_checkpoint({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                     "init_args": {"configuration": configuration, "fold": 0}, "current_epoch": 1,
                     "inference_allowed_mirroring_axes": mirror}, folder / "fold_0" / "checkpoint_final.pth")


def _link_inputs(folder: Path, files: dict[str, Path]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        if not (folder / name).exists():
            (folder / name).symlink_to(source)
    return folder


def hippocampus(work: Path) -> dict[str, object]:
    from nnseg.sharing.install import install_model_zip

    model = SHARED / "reference" / "expected" / "Dataset004_Hippocampus" / "model"
    if not (work / "results" / HIPPO_MODEL).is_dir():
        install_model_zip(model / "model.zip", work / "results")
    cases = (model / "cases.txt").read_text().split()
    images = SHARED / "data" / "Task04_Hippocampus" / "imagesTr"
    inputs = _link_inputs(work / "in_hippocampus", {f"{c}_0000.nii.gz": images / f"{c}.nii.gz" for c in cases})
    return {"images": inputs, "dataset": "Dataset004_Hippocampus", "trainer": "nnUNetTrainer_bench",
            "configuration": "3d_fullres_bs2", "tta": True, "what": f"{len(cases)} Hippocampus cases, TTA"}


def two_channel(work: Path) -> dict[str, object]:
    folder = work / "results" / ANISO / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    if not (folder / "fold_0" / "checkpoint_final.pth").is_file():
        plans = json.loads((SHARED / "reference" / "expected" / ANISO / "nnUNetPlans.json").read_text())
        dataset = json.loads((SHARED / "data" / ANISO / "dataset.json").read_text())
        _random_model(folder, plans, dataset, "3d_fullres", (0, 1, 2))
    images = SHARED / "data" / ANISO / "imagesTr"
    files = {f"syn_{i:03d}_{c:04d}.nii.gz": images / f"syn_{i:03d}_{c:04d}.nii.gz" for i in range(6) for c in (0, 1)}
    return {"images": _link_inputs(work / "in_two_channel", files), "dataset": ANISO, "trainer": "nnUNetTrainer",
            "configuration": "3d_fullres", "tta": True, "what": "6 two-channel synthetic cases (40x96x112 patch), TTA"}


def ct118(work: Path) -> dict[str, object]:
    sys.path.insert(0, str(REPO / "bench"))
    import big_volume as bv  # bench/big_volume.py: the 118-class plans and phantom

    folder = work / "results" / bv.DATASET / bv.MODEL
    if not (folder / "fold_0" / "checkpoint_final.pth").is_file():
        plans, dataset = bv.plans_and_dataset()
        _random_model(folder, plans, dataset, "3d_fullres", (0, 1, 2))
    image = work / "in_ct118" / "ct_0000.nii.gz"
    if not image.is_file():
        import SimpleITK as sitk

        image.parent.mkdir(parents=True, exist_ok=True)
        itk = sitk.GetImageFromArray(bv.phantom(CT_SHAPE, CT_SPACING, labels=False))
        itk.SetSpacing(tuple(float(s) for s in CT_SPACING[::-1]))
        sitk.WriteImage(itk, str(image), True)
    return {"images": image.parent, "dataset": bv.DATASET, "trainer": "nnUNetTrainer", "configuration": "3d_fullres",
            "tta": False, "what": "118-class medium CT 192x192x128, no TTA"}


def side_by_side(work: Path, *, sets: list[str], nnunet_site: Path, cached: dict[str, dict]) -> dict[str, dict]:
    """Measure each set with nnseg and (unless ``cached`` has its figures) with nnU-Net; print one line per tool."""
    results: dict[str, dict] = {}
    for name in sets:
        spec = {"hippocampus": hippocampus, "two_channel": two_channel, "ct118": ct118}[name](work)
        figures = {}
        for tool in ("nnseg", "nnunet"):
            if tool == "nnunet" and name in cached:
                figures[tool] = cached[name]
                continue
            out = work / f"out_{name}_{tool}"
            shutil.rmtree(out, ignore_errors=True)
            figures[tool] = measure(_command(tool, spec, out), _env(work, tool, nnunet_site),
                                    work / f"{name}_{tool}.log")
        results[name] = figures
        a, b = figures["nnseg"], figures["nnunet"]
        print(f"{spec['what']}:\n  nnseg   wall {a['wall_s']:6.1f} s, CPU {a['cpu_s']:6.1f} s, peak RSS {a['peak_rss_gb']:.2f} GB "
              f"(largest process {a['max_process_rss_gb']:.2f} GB)\n  nnU-Net wall {b['wall_s']:6.1f} s, CPU "
              f"{b['cpu_s']:6.1f} s, peak RSS {b['peak_rss_gb']:.2f} GB (largest process "
              f"{b['max_process_rss_gb']:.2f} GB)\n  nnseg / nnU-Net: wall {a['wall_s'] / b['wall_s']:.2f}x, CPU "
              f"{a['cpu_s'] / b['cpu_s']:.2f}x, peak RSS {a['peak_rss_gb'] / b['peak_rss_gb']:.2f}x, largest process "
              f"{a['max_process_rss_gb'] / b['max_process_rss_gb']:.2f}x (targets: RSS <= 1.0x at wall <= 0.35x)",
              flush=True)
    return results
