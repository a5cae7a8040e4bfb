"""The dataset fingerprint (``dataset_fingerprint.json``) and its extraction from a raw dataset folder."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnseg.fingerprint.case_stats import CaseStats, WeightedSample, case_stats, intensity_statistics, samples_per_case
from nnseg.fingerprint.pool import pool_map
from nnseg.jsonio import load_json, save_json
from nnseg.raw.discover import CaseFiles
from nnseg.raw.input_checks import CaseRules, check_case_arrays, check_case_layout

FINGERPRINT_FILE = "dataset_fingerprint.json"
_KEYS = ("foreground_intensity_properties_per_channel", "median_relative_size_after_cropping", "shapes_after_crop",
         "spacings")


@dataclass
class Fingerprint:
    """nnU-Net's dataset fingerprint; :meth:`to_json` gives exactly the four keys nnU-Net writes.

    Attributes:
        foreground_intensity_properties_per_channel: ``{"0": {max, mean, median, min, percentile_00_5,
            percentile_99_5, std}, ...}``.
        median_relative_size_after_cropping: median over cases of (voxels after crop / voxels before).
        shapes_after_crop: per case, the shape after cropping to the non-zero region.
        spacings: per case, the spacing per array axis.
    """

    foreground_intensity_properties_per_channel: dict[str, dict[str, float]]
    median_relative_size_after_cropping: float
    shapes_after_crop: list[list[int]]
    spacings: list[list[float]]

    @classmethod
    def from_json(cls, d: Mapping[str, Any], *, source: Path | None = None) -> "Fingerprint":
        missing = [k for k in _KEYS if k not in d]
        if missing:
            where = source or "the fingerprint"
            raise ValueError(f"{where} lacks {missing}; re-create it with `nnseg fingerprint -d ... --clean`")
        return cls(
            foreground_intensity_properties_per_channel={
                str(c): {k: float(v) for k, v in props.items()}
                for c, props in d["foreground_intensity_properties_per_channel"].items()},
            median_relative_size_after_cropping=float(d["median_relative_size_after_cropping"]),
            shapes_after_crop=[[int(v) for v in s] for s in d["shapes_after_crop"]],
            spacings=[[float(v) for v in s] for s in d["spacings"]],
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON dict (keys sorted, as nnU-Net writes it with ``sort_keys=True``)."""
        return {k: getattr(self, k) for k in _KEYS}

    @classmethod
    def from_case_stats(cls, stats: Sequence[CaseStats]) -> "Fingerprint":
        """Aggregate per-case statistics (in case order) into the dataset fingerprint."""
        if not stats:
            raise ValueError("cannot build a fingerprint from zero cases; the dataset has no training cases")
        channels = len(stats[0].foreground)
        properties = {str(c): intensity_statistics(WeightedSample.pool([s.foreground[c] for s in stats]))
                      for c in range(channels)}
        return cls(
            foreground_intensity_properties_per_channel=properties,
            median_relative_size_after_cropping=float(np.median([s.relative_size_after_cropping for s in stats])),
            shapes_after_crop=[list(s.shape_after_crop) for s in stats],
            spacings=[list(s.spacing) for s in stats],
        )


def save_fingerprint(fingerprint: Fingerprint, path: Path) -> None:
    """Write ``dataset_fingerprint.json`` atomically (``sort_keys=True``, indent 4, as nnU-Net)."""
    save_json(fingerprint.to_json(), path, sort_keys=True)


def load_fingerprint(path: Path) -> Fingerprint:
    """Read a fingerprint file; a missing file says which command creates it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; extract the fingerprint first: "
                                f"`nnseg fingerprint -d {path.parent.name}` (nnUNetv2_extract_fingerprint)")
    return Fingerprint.from_json(load_json(path), source=path)


@dataclass(frozen=True)
class _CaseJob:
    identifier: str
    images: tuple[Path, ...]
    label: Path
    io_name: str
    num_samples: int
    rules: CaseRules


def fingerprint_case_files(job: _CaseJob) -> CaseStats:
    """Read one case and compute its :class:`CaseStats` (pool worker; errors name the case's files)."""
    from nnseg.raw.image_io import get_io

    if not job.label.is_file():
        raise FileNotFoundError(f"case {job.identifier}: label file {job.label} does not exist; every training case "
                                "needs labelsTr/<case><file_ending> (run `nnseg verify` for a full check)")
    io = get_io(job.io_name)
    files = ", ".join(str(p) for p in (*job.images, job.label))
    try:
        images, geometry = io.read_images(list(job.images))
        seg, _ = io.read_seg(job.label)
    except Exception as e:
        raise ValueError(f"case {job.identifier} ({files}): {e}") from None
    check_case_arrays(CaseFiles(job.identifier, job.images, job.label), images, seg, job.rules)
    try:
        return case_stats(images, seg, geometry.spacing, num_samples=job.num_samples)
    except Exception as e:
        raise ValueError(f"case {job.identifier} ({files}): {e}") from None


def map_cases(fn: Any, jobs: Sequence[Any], *, num_processes: int, desc: str, progress: bool,
              pool: Any = None) -> list[Any]:
    """``[fn(job) for job in jobs]`` computed in a spawn pool of ``num_processes`` (serially when 1, or in ``pool``),
    with a progress bar."""
    results: list[Any] = [None] * len(jobs)
    done = pool_map(fn, jobs, num_workers=num_processes, describe=lambda job: f"case {job.identifier}", pool=pool)
    for index, result in _progress(done, len(jobs), desc, progress):
        results[index] = result
    return results


def _progress(results: Iterable[Any], total: int, desc: str, enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield from results
        return
    from tqdm import tqdm

    yield from tqdm(results, total=total, desc=desc, unit="case")


def extract_fingerprint(raw_dataset_folder: Path, *, num_processes: int, progress: bool = False,
                        env: Mapping[str, str] | None = None, pool: Any = None) -> Fingerprint:
    """Fingerprint a raw dataset (``dataset.json``, ``imagesTr``, ``labelsTr``).

    Args:
        raw_dataset_folder: ``nnUNet_raw/DatasetXXX_Name``.
        num_processes: worker processes (spawn pool; 1 runs in this process).
        progress: show a tqdm progress bar.
        env: variables for ``$VAR`` expansion in an explicit ``dataset`` entry of dataset.json.
        pool: an open pool (``nnseg.fingerprint.pool.open_pool``) to run in, e.g. shared with preprocessing.
    """
    from nnseg.raw.dataset_json import load_dataset_json
    from nnseg.raw.discover import training_cases
    from nnseg.raw.image_io import determine_io

    raw_dataset_folder = Path(raw_dataset_folder)
    spec = load_dataset_json(raw_dataset_folder / "dataset.json")
    cases = training_cases(raw_dataset_folder, spec, env=env)
    if not cases:
        raise ValueError(f"no training cases in {raw_dataset_folder / 'imagesTr'} (file ending {spec.file_ending!r}); "
                         "add CASE_0000<ending> images or fix dataset.json")
    check_case_layout(raw_dataset_folder, cases, spec)
    io = determine_io(spec.file_ending, cases[0].images[0], overwrite=spec.overwrite_image_reader_writer)
    n, rules = samples_per_case(len(cases)), CaseRules.from_spec(spec)
    jobs = [_CaseJob(c.identifier, tuple(c.images), Path(c.label) if c.label else
                     raw_dataset_folder / "labelsTr" / f"{c.identifier}{spec.file_ending}", io.name, n, rules)
            for c in cases]
    stats = map_cases(fingerprint_case_files, jobs, num_processes=num_processes, desc="fingerprint", progress=progress,
                      pool=pool)
    return Fingerprint.from_case_stats(stats)
