#!/usr/bin/env bash
# nnseg developer entry point: `./dev.sh demo` (set up, then run the demo) or `./dev.sh test` (set up, then run the tests);
# `./dev.sh web` rebuilds only the browser page of `nnseg serve` (needs npm).
# Setup makes ./.venv, installs the CPU build of torch first (so no dependency pulls a multi-GB CUDA build),
# then nnseg itself in editable mode. An existing .venv is reused.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
TORCH_VERSION=${NNSEG_TORCH_VERSION:-2.13.0}
NNINTERACTIVE_SITE="nninteractive==2.6.0 nnunetv2==2.8.1 acvl-utils==0.2.6 dynamic-network-architectures==0.4.4 \
batchgenerators==0.25.5 batchgeneratorsv2==0.3.6 connected-components-3d scikit-image lazy-loader imageio networkx \
tifffile seaborn"

# the environment's programs: .venv/bin on Linux and macOS, .venv/Scripts on Windows (Git Bash)
bin_dir() {
    if [ -d .venv/Scripts ] && [ ! -d .venv/bin ]; then echo .venv/Scripts; else echo .venv/bin; fi
}

setup() {
    local extras=${1:-test}
    if [ ! -x "$(bin_dir)/python" ] && [ ! -x "$(bin_dir)/python.exe" ]; then
        "$PY" -m venv .venv
    fi
    local vpy
    vpy="$(bin_dir)/python"
    if ! "$vpy" -c "import torch" 2>/dev/null; then
        "$vpy" -m pip install -q "torch==${TORCH_VERSION}" \
            || "$vpy" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
    fi
    # the demo needs only the core; the tests install every optional feature (extras) they exercise
    if [ "$extras" = core ]; then
        "$vpy" -m pip install -q -e .
    else
        "$vpy" -m pip install -q -e ".[${extras}]"
        # MONAI Label's client for the serve tests, without its deps (they would pull monai and a CUDA torch)
        "$vpy" -m pip install -q --no-deps "monailabel==0.8.5"
        # nnInteractive 2.6.0 for the interop test, beside nnseg and never imported by it: a normal install would
        # replace torch by a CUDA build (it needs nnunetv2), so it goes --no-deps into .site/nninteractive, which only
        # the test's nnInteractive process puts on its path. Its client (numpy, httpx, blosc2) is in the test extra.
        if [ ! -f .site/nninteractive/nnInteractive/inference/inference_session.py ]; then
            "$vpy" -m pip install -q --no-deps --upgrade --target .site/nninteractive $NNINTERACTIVE_SITE
        fi
        build_web
    fi
}

# The page of `nnseg serve` (web/, TypeScript + NiiVue): rebuilt into src/nnseg/serve/page/static with the locked
# npm versions when npm is present; without npm the committed build is used (installing nnseg needs no Node.js).
build_web() {
    if ! command -v npm >/dev/null 2>&1; then
        echo "dev.sh: npm not found; using the committed build of the page (src/nnseg/serve/page/static)" >&2
        return 0
    fi
    (cd web && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build)
}

case "${1:-}" in
    demo)
        setup core
        shift
        exec "$(bin_dir)/nnseg" demo "$@"
        ;;
    test)
        setup
        shift
        exec "$(bin_dir)/python" -m pytest -q "$@"
        ;;
    setup)
        setup
        ;;
    web)
        build_web
        ;;
    *)
        echo "usage: ./dev.sh demo|test|setup|web [args]" >&2
        exit 2
        ;;
esac
