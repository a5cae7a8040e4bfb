#!/usr/bin/env bash
# The CUDA tests: every test marked `gpu` (the device-parametrized training/prediction tests, the GPU resampling and
# sliding-window tests, DDP with NCCL). They skip without CUDA; on the GPU machine run this next to
# bench/gpu_compare.sh (after `bench/gpu_compare.sh install ...`, which provides nnseg's missing packages in
# .site/common). Only the test files that hold gpu tests are collected, so optional features whose packages the GPU
# machine lacks (DICOM, serving, tracking, Dask) do not stop the run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$PWD/src:$PWD/.site/common${PYTHONPATH:+:$PYTHONPATH}"
mapfile -t files < <(grep -rlE "mark\.gpu|cuda\.is_available" tests --include='test_*.py' | sort)
exec "$PY" -m pytest -q -p no:cacheprovider -m gpu "${files[@]}" "$@"
