"""nnseg's process pools work under the ``spawn`` start method (Windows, macOS and CUDA-safe)."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

from nnseg.raw.demo_data import make_demo_dataset
from nnseg.raw.discover import training_cases
from nnseg.raw.dataset_json import load_dataset_json
from nnseg.raw.verify import CaseExpectation, check_case, verify_dataset


def _broken_demo(tmp_path: Path) -> Path:
    folder = make_demo_dataset(tmp_path / "Dataset995_Spawn", num_cases=4, shape=(8, 10, 10), num_test=0)
    (folder / "labelsTr/case_002.nii.gz").write_bytes(b"junk")
    return folder


def test_verify_with_a_spawn_pool_equals_the_serial_run(tmp_path: Path) -> None:
    folder = _broken_demo(tmp_path)
    serial = verify_dataset(folder, num_processes=1)
    pooled = verify_dataset(folder, num_processes=2)
    assert pooled == serial
    assert [p.file for p in pooled] == [folder / "labelsTr/case_002.nii.gz"]


def test_case_worker_runs_in_spawned_processes(tmp_path: Path) -> None:
    folder = _broken_demo(tmp_path)
    cases = training_cases(folder, load_dataset_json(folder))
    expect = CaseExpectation(reader="SimpleITKIO", num_channels=1, allowed_labels=(0, 1, 2))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.starmap(check_case, [(c, expect) for c in cases])
        worker_pids = set(pool.map(_pid, range(4)))
    assert results == [check_case(c, expect) for c in cases]
    assert [len(r) for r in results] == [0, 0, 1, 0]
    assert os.getpid() not in worker_pids


def _pid(_: int) -> int:
    return os.getpid()


def test_maps_inside_a_shared_pool_run_on_its_workers_and_the_pool_is_gone_after() -> None:
    """determine_postprocessing's trials start the pool once (each start re-imports numpy/scipy in every worker)."""
    from nnseg.parallel import shared_spawn_pool, spawn_map

    with shared_spawn_pool(num_processes=2, num_jobs=4):
        first = set(spawn_map(os.getpid, [()] * 4, num_processes=2, star=True))
        second = set(spawn_map(os.getpid, [()] * 4, num_processes=2, star=True))
    assert os.getpid() not in first and second <= first  # the same workers, not this process
    after = set(spawn_map(os.getpid, [()] * 4, num_processes=2, star=True))
    assert not after & first  # outside the block each map starts (and ends) its own pool again
