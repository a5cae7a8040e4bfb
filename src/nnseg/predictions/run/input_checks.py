"""Checks of prediction inputs against the model, made before any work is done on a case.

* The output folder must not hold input images: predictions ``CASE<ending>`` written next to ``CASE_0000<ending>``
  would be read back as (misnamed) inputs by the next run, and mix results with data.
* Every voxel must be finite (a NaN spreads through the network to a whole patch of garbage).
* 2D vs 3D: a 2D image (one slice) given to a 3D configuration would be resampled along its placeholder axis
  (spacing 999) to hundreds of slices of the same picture; a volume given to a model planned from 2D images has
  no meaningful slice spacing for it. Both are refused.
* Plausible spacing: preprocessing resamples the image to the configuration's spacing. An axis upsampled more than
  :data:`MAX_UPSAMPLING` times means the image's spacing is far coarser than anything the model was planned for (a
  wrong header, a 2D image, the wrong model); the result would be slow, large and meaningless, so it is refused
  with the numbers, before the resampling.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnseg.plans.schema import ConfigurationPlans, Plans
from nnseg.preprocessed.preprocess import target_spacing_for
from nnseg.raw.discover import CaseFiles
from nnseg.raw.input_checks import planned_dims

MAX_UPSAMPLING = 16.0


def check_output_folder(cases: Sequence[CaseFiles], output: Path) -> None:
    """Refuse an output folder that holds input images of ``cases`` (``-o`` equal to ``-i``).

    Raises:
        ValueError: naming the folder and the fix.
    """
    out = Path(output).resolve()
    for case in cases:
        for f in case.images:
            if Path(f).resolve().parent == out:
                raise ValueError(f"the output folder {output} holds the input image {Path(f).name}: predictions "
                                 f"would be written among the images and read back as inputs next time; choose "
                                 f"another output folder (-o), e.g. {out.parent / (out.name + '_predictions')}")


def check_prediction_case(files: Sequence[Path], data: np.ndarray, spacing: Sequence[float], *, plans: Plans,
                          configuration: ConfigurationPlans, configuration_name: str = "") -> None:
    """Check one case as read (``data`` ``(C, X, Y, Z)`` from ``files``, ``spacing`` per array axis).

    Raises:
        ValueError: non-finite voxels, 2D vs 3D mismatch, or an implausible resampling (file, numbers and fix named).
    """
    files = [Path(f) for f in files]
    for c in range(data.shape[0]):
        if not np.isfinite(data[c]).all():
            where = files[c] if len(files) == data.shape[0] else files[0]
            raise ValueError(f"{where}: the image contains {int((~np.isfinite(data[c])).sum())} NaN or infinite "
                             "value(s); replace them (e.g. with 0 or the background intensity) and save it again")
    check_case_geometry(files[0], data.shape[1:], spacing, plans=plans, configuration=configuration,
                        configuration_name=configuration_name)


def check_case_geometry(where: str | Path, shape: Sequence[int], spacing: Sequence[float], *, plans: Plans,
                        configuration: ConfigurationPlans, configuration_name: str = "") -> None:
    """The checks of :func:`check_prediction_case` that need only the shape and spacing (per array axis), so that a
    caller holding only headers (a DICOM series) can make them before reading or writing anything.

    Raises:
        ValueError: 2D vs 3D mismatch, or an implausible resampling (``where``, numbers and fix named).
    """
    name = configuration_name or "the configuration"
    if configuration.ndim == 3 and shape[0] == 1:
        raise ValueError(f"{where} is a 2D image (shape {tuple(shape)}) but {name} is a 3D model; it "
                         "would be resampled to hundreds of copies of one slice. Use a 2D configuration (-c 2d) "
                         "or give the model 3D volumes")
    median = plans.original_median_shape_after_transp
    if median and planned_dims(median) == 2 and shape[0] > 1:
        raise ValueError(f"{where} is a volume of {shape[0]} slices (shape {tuple(shape)}) but the "
                         "model was planned from 2D images, which have no slice spacing; give it 2D images (one "
                         "file per picture) or use a model trained on volumes")
    _check_resampling(where, shape, spacing, plans, configuration)


def _check_resampling(file: str | Path, shape: Sequence[int], spacing: Sequence[float], plans: Plans,
                      configuration: ConfigurationPlans) -> None:
    transposed = [float(spacing[i]) for i in plans.transpose_forward]
    target = target_spacing_for(configuration, transposed)
    factors = [s / t if t > 0 else float("inf") for s, t in zip(transposed, target)]
    worst = int(np.argmax(factors))
    if factors[worst] > MAX_UPSAMPLING:
        shape_t = [int(shape[i]) for i in plans.transpose_forward]
        raise ValueError(f"{file}: spacing {tuple(transposed)} (transposed) against the model's {tuple(target)} would "
                         f"upsample axis {worst} {factors[worst]:.0f} times ({shape_t[worst]} -> "
                         f"{round(shape_t[worst] * factors[worst])} voxels); more than {MAX_UPSAMPLING:g} times means "
                         "the image is not of the kind the model was trained on (check the spacing in its header, "
                         "and that it is a 3D volume for a 3D model)")
