"""Fingerprinting and preprocessing on a Dask cluster: one task per case, sized by memory.

The per-case functions are the local ones (:func:`nnseg.fingerprint.fingerprint.fingerprint_case_files`,
:func:`nnseg.preprocessed.run.preprocess_job`); only the pool changes. Preprocessing writes each case's arrays under
temporary names and its ``.json`` last, so a case is complete exactly when its ``.json`` exists: a task lost with its
worker is rerun elsewhere, and a rerun of the command skips complete cases and removes leftovers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from nnseg.cluster.connect import open_client
from nnseg.cluster.memory import preprocess_bytes
from nnseg.cluster.tasks import DEFAULT_RETRIES, DaskPool


# what fingerprint and preprocessing tasks import, loaded by local workers while they start (no torch)
CASE_MODULES = ("SimpleITK", "scipy.ndimage", "blosc2", "nnseg.fingerprint.fingerprint", "nnseg.raw.image_io",
                "nnseg.preprocessed.run", "nnseg.preprocessed.preprocess")
_SPACINGS: dict[tuple[str, str], tuple[float, ...]] = {}


def _target_spacing(context: Any, configuration: str) -> tuple[float, ...]:
    """The configuration's target spacing, parsed once per preprocessing run (``context.key``)."""
    key = (context.key, configuration)
    if key not in _SPACINGS:
        from nnseg.plans.schema import Plans

        plans = Plans.from_json(context.plans_json)
        _SPACINGS[key] = tuple(float(s) for s in plans.configuration(configuration).spacing)
    return _SPACINGS[key]


def case_memory(job: Any) -> int:
    """Estimated bytes of one fingerprint job or preprocessing job (``CaseJob``: resampled to its configurations),
    from the headers as the job's reader/writer reads them (the fingerprint job's ``io_name``, the plans')."""
    context = getattr(job, "context", None)
    if context is None:
        return preprocess_bytes(list(job.images), reader=getattr(job, "io_name", "SimpleITKIO"))
    reader = str(context.plans_json.get("image_reader_writer", "SimpleITKIO"))
    return preprocess_bytes(list(job.images), [_target_spacing(context, c) for c in job.configurations], reader=reader)


@contextmanager
def open_case_pool(cluster: str | None, *, retries: int = DEFAULT_RETRIES) -> Iterator[DaskPool | None]:
    """A :class:`DaskPool` on ``--cluster cluster`` for per-case work, or None without ``--cluster``."""
    if cluster is None:
        yield None
        return
    with open_client(cluster, preload=CASE_MODULES) as client:
        yield DaskPool(client, memory=case_memory, retries=retries)  # a job's error says what to fix
