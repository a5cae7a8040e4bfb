#!/usr/bin/env bash
# Hippocampus, 3d_fullres with batch size 2 (plans configuration 3d_fullres_bs2 inheriting 3d_fullres), fold 0,
# 40 epochs x 25 iterations (5 validation iterations per epoch), CPU, then the fold's final validation (sliding window
# with mirroring over the 40 validation cases). Prints wall time and mean foreground Dice.
# nnU-Net v2 on this 2-core machine: 1889 s, fold-0 Dice 0.849. Targets: default precision Dice >= 0.84 in <= 1040 s;
# --precision fp32: Dice >= 0.84 in <= 1510 s.
# Usage: bench/train_hippocampus.sh [auto|fp32]   (WORK=/some/dir to keep the data)
set -euo pipefail
cd "$(dirname "$0")/.."
PRECISION=${1:-auto}
BIN=${BIN:-.venv/bin}
SHARED=${NNSEG_SHARED:-$(cd .. && pwd)/shared}
WORK=${WORK:-$(mktemp -d)}
export nnUNet_raw=$WORK/raw nnUNet_preprocessed=$WORK/preprocessed nnUNet_results=$WORK/results
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"
if [ ! -d "$nnUNet_preprocessed/Dataset004_Hippocampus/nnUNetPlans_3d_fullres" ]; then
    rm -rf "$WORK/Task04_Hippocampus" && cp -r "$SHARED/data/Task04_Hippocampus" "$WORK/"
    chmod -R u+w "$WORK/Task04_Hippocampus"
    "$BIN/nnUNetv2_convert_MSD_dataset" -i "$WORK/Task04_Hippocampus"
    "$BIN/nnUNetv2_plan_and_preprocess" -d 4 -c 3d_fullres -np 2
fi
"$BIN/python" - <<PY
import json, pathlib
p = pathlib.Path("$nnUNet_preprocessed/Dataset004_Hippocampus/nnUNetPlans.json")
plans = json.loads(p.read_text())
plans["configurations"]["3d_fullres_bs2"] = {"inherits_from": "3d_fullres", "batch_size": 2}
p.write_text(json.dumps(plans, indent=4))
PY
"$BIN/python" bench/cpuinfo.py  # the CPU these figures come from
start=$(date +%s.%N)
"$BIN/nnUNetv2_train" 4 3d_fullres_bs2 0 -device cpu --epochs 40 --iterations-per-epoch 25 \
    --set val_iterations_per_epoch=5 --precision "$PRECISION" --seed 0
end=$(date +%s.%N)
"$BIN/python" - <<PY
import json
s = json.load(open("$nnUNet_results/Dataset004_Hippocampus/nnUNetTrainer_40epochs__nnUNetPlans__3d_fullres_bs2/fold_0/validation/summary.json"))
wall = $end - $start
print(f"train_hippocampus: precision $PRECISION, wall {wall:.0f} s (training + final validation), "
      f"fold-0 mean foreground Dice {s['foreground_mean']['Dice']:.4f} "
      f"(per label {[round(v['Dice'], 4) for k, v in s['mean'].items()]}); epochs: see training_log "
      "'Epoch time' lines")
PY
"$BIN/python" bench/cpuinfo.py
