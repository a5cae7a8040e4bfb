#!/usr/bin/env bash
# nnseg vs nnU-Net v2 2.8.1 on one machine (GPU or CPU), in one run: see bench/gpu_compare.py for what is measured.
#
# nnU-Net is a comparison tool here, never a dependency of nnseg: it is installed into its own folder
# (.site/nnunet, ignored by git) that only nnU-Net's processes see. Packages that both tools need and the machine lacks
# go to .site/common.
#
#   bench/gpu_compare.sh wheels            download every wheel the GPU machine lacks (Python 3.12, x86-64) into
#                                          .whl/part1 (SimpleITK, ~50 MB) and .whl/part2 (the rest, ~12 MB), since
#                                          one device call carries at most 64 MiB
#   bench/gpu_compare.sh install DIR       install the wheels of DIR offline (common ones to .site/common, nnU-Net's
#                                          to .site/nnunet)
#   bench/gpu_compare.sh online-install    install what this machine lacks from PyPI (a developer machine)
#   bench/gpu_compare.sh run [ARGS...]     run bench/gpu_compare.py (ARGS: -device cpu --tiny --out FILE ...)
#
# On the GPU machine (two device calls; the ignored .site folder stays between calls of a warm machine, and the
# whole run needs about 9 minutes of the 15):
#   call 1 (carry .whl/part1):             bench/gpu_compare.sh install .whl/part1
#   call 2 (carry .whl/part2 and .site):   bench/gpu_compare.sh install .whl/part2 && \
#                                          bench/gpu_compare.sh run --work /tmp/gpubench --out $OUT/gpu_compare.json
# Then also run bench/gpu_tests.sh (the CUDA tests). On a CPU machine, end to end in a few minutes:
#   bench/gpu_compare.sh online-install && bench/gpu_compare.sh run -device cpu --tiny --work /tmp/gpubench
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
COMMON="nibabel blosc2 ndindex numexpr simpleitk"
NNUNET_ONLY="nnunetv2==2.8.1 acvl-utils==0.2.6 dynamic-network-architectures==0.4.4 batchgenerators==0.25.5 \
batchgeneratorsv2==0.3.6 graphviz yacs connected-components-3d future"
# what the GPU machine's image already has (device README): scipy scikit-image scikit-learn pandas seaborn einops
# timm matplotlib tifffile requests tqdm nvidia-ml-py torch numpy
NNUNET_LOCAL_EXTRA="scikit-image scikit-learn pandas seaborn einops timm<1.0.23 imageio networkx lazy-loader joblib \
threadpoolctl nvidia-ml-py"

wheels() {
    local plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
                --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
                --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
    mkdir -p .whl/part1 .whl/part2
    "$PY" -m pip download -q --no-deps "${plat[@]}" -d .whl/part1 simpleitk
    for pkg in nibabel blosc2 ndindex numexpr nnunetv2==2.8.1 dynamic-network-architectures==0.4.4 \
               batchgenerators==0.25.5 batchgeneratorsv2==0.3.6 graphviz yacs connected-components-3d future; do
        "$PY" -m pip download -q --no-deps "${plat[@]}" -d .whl/part2 "$pkg" \
            || "$PY" -m pip wheel -q --no-deps -w .whl/part2 "$pkg"
    done
    "$PY" -m pip wheel -q --no-deps -w .whl/part2 acvl-utils==0.2.6   # only an sdist on PyPI (pure Python)
    du -sh .whl/part1 .whl/part2
}

install() {
    local dir=$1 common=() nnunet=()
    for w in "$dir"/*.whl; do
        name=$(basename "$w" | cut -d- -f1 | tr '[:upper:]_' '[:lower:]-')
        case " $COMMON " in *" $name "*) common+=("$w");; *) nnunet+=("$w");; esac
    done
    [ ${#common[@]} -eq 0 ] || "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target .site/common "${common[@]}"
    [ ${#nnunet[@]} -eq 0 ] || "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target .site/nnunet "${nnunet[@]}"
}

online_install() {
    # shellcheck disable=SC2086
    "$PY" -m pip install -q --no-deps --upgrade --target .site/nnunet $NNUNET_ONLY $NNUNET_LOCAL_EXTRA
}

case "${1:-}" in
    wheels) wheels ;;
    install) install "${2:?usage: bench/gpu_compare.sh install DIR}" ;;
    online-install) online_install ;;
    run)
        shift
        export PYTHONPATH="$PWD/.site/common${PYTHONPATH:+:$PYTHONPATH}"
        exec "$PY" bench/gpu_compare.py --nnunet-site .site/nnunet "$@" ;;
    *) sed -n '2,26p' "$0"; exit 2 ;;
esac
