"""open_pool(preload=...): workers start at once (their imports overlap the caller's work), a bad name is harmless."""

from __future__ import annotations

from nnseg.fingerprint.pool import open_pool, pool_map


def test_preload_starts_every_worker_before_the_first_job() -> None:
    with open_pool(2, preload=("json", "no_such_module_nnseg")) as pool:
        assert len(pool._processes) == 2  # started by open_pool itself, not by the first job
        results = [r for _, r in pool_map(abs, [-1, -2, -3], num_workers=2, pool=pool)]
    assert sorted(results) == [1, 2, 3]


def test_without_preload_workers_start_on_first_use() -> None:
    with open_pool(2) as pool:
        assert len(pool._processes) == 0
        assert [r for _, r in pool_map(abs, [-5], num_workers=2, pool=pool)] == [5]
