#!/usr/bin/env bash
# ISBI 2012 EM membranes (2D, grey PNG 512x512), configuration 2d (planned as nnU-Net plans it: one 8-stage U-Net,
# patch 512x512, batch size 2), short CPU training: EPOCHS x ITERS iterations (default 30 x 10 = 300) on 25 training
# images; the last 5 training images (em_25 .. em_29) are held back as the test set through a custom
# splits_final.json (fold 0: train em_00 .. em_24, val em_25 .. em_29), so the fold's final validation (sliding window
# with mirroring, checkpoint_final) scores images the network never trained on. Prints the membrane Dice, and the
# cell (background) Dice and pixel accuracy for comparison with figures quoted as "pixel error".
#
# Issue 7's target, membrane Dice >= 0.85, is NOT reached, and nnU-Net's recipe does not reach it on this split even
# with 16x the iterations. Measured:
#   2-core CPU, 30 x 10 (default): 0.7837 in 474 s quiet (525 s beside other work), twice; per case 0.785 0.801 0.790
#     0.798 0.744; cell Dice 0.944, pixel accuracy 0.911; 49 % of the wrong pixels lie within 1 pixel of a true membrane
#     edge; predicted membrane area 0.21 vs 0.20 true.
#   H200 (bench/isbi_sweep.py, seed 0 unless said): 300 iterations 0.778 (seed 1: 0.783); --set augmentation=none
#     0.779; deep_supervision=false 0.782; batch_size=4 0.782; initial_lr=0.02 0.796; momentum=0.95 initial_lr=0.05
#     0.804; momentum=0.9 initial_lr=0.1 0.804; momentum=0.9 initial_lr=0.2 0.808. Longer: 1000 iterations 0.808
#     (augmentation=none 0.808; momentum=0.9 initial_lr=0.1 0.816), 2000 iterations 0.815, 4800 iterations 0.8145
#     (train loss -0.74 against validation -0.56 at the end: the network overfits the 25 images).
#   In every run the probability cut that maximises Dice is 0.5 or 0.6, worth at most +0.001: the predictions are not
#     biased thick or thin; the errors are boundary pixels and dark organelles taken for membrane.
# Usage: bench/train_isbi.sh [EPOCHS] [ITERS]   (WORK=/some/dir to keep the data; PRECISION=fp32 to force fp32)
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${1:-30}
ITERS=${2:-10}
PRECISION=${PRECISION:-auto}
BIN=${BIN:-.venv/bin}
"$BIN/python" bench/cpuinfo.py  # the CPU these figures come from
SHARED=${NNSEG_SHARED:-$(cd .. && pwd)/shared}
WORK=${WORK:-$(mktemp -d)}
export nnUNet_raw=$WORK/raw nnUNet_preprocessed=$WORK/preprocessed nnUNet_results=$WORK/results
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"
DS=Dataset120_ISBI2012
if [ ! -d "$nnUNet_preprocessed/$DS/nnUNetPlans_2d" ]; then
    rm -rf "${nnUNet_raw:?}/$DS" && cp -r "$SHARED/data/ISBI2012_EM_2D" "$nnUNet_raw/$DS"
    chmod -R u+w "$nnUNet_raw/$DS"
    "$BIN/nnUNetv2_plan_and_preprocess" -d 120 -c 2d -np 2
fi
"$BIN/python" - <<PY
import json, pathlib
pre = pathlib.Path("$nnUNet_preprocessed/$DS")
golden = pathlib.Path("$SHARED/reference/expected/$DS/nnUNetPlans.json")
ours, gold = json.loads((pre / "nnUNetPlans.json").read_text()), json.loads(golden.read_text())
key = "foreground_intensity_properties_per_channel"  # nnU-Net sums the mean in float32: compare to 1e-4
close = all(abs(ours[key][c][s] - v) <= 1e-4 * abs(v) for c in gold[key] for s, v in gold[key][c].items())
same = close and {k: v for k, v in ours.items() if k != key} == {k: v for k, v in gold.items() if k != key}
print(f"train_isbi: plans {'equal' if same else 'DIFFER FROM'} the golden nnU-Net plans")
cases = [f"em_{i:02d}" for i in range(30)]
(pre / "splits_final.json").write_text(json.dumps([{"train": cases[:25], "val": cases[25:]}], indent=4))
PY
start=$(date +%s.%N)
"$BIN/nnUNetv2_train" 120 2d 0 -device cpu --epochs "$EPOCHS" --iterations-per-epoch "$ITERS" \
    --set val_iterations_per_epoch=2 --precision "$PRECISION" --seed 0
end=$(date +%s.%N)
"$BIN/python" - <<PY
import json, pathlib
import numpy as np
from PIL import Image
fold = pathlib.Path("$nnUNet_results/$DS/nnUNetTrainer_${EPOCHS}epochs__nnUNetPlans__2d/fold_0/validation")
s = json.load(open(fold / "summary.json"))
agree = cell_tp = cell_wrong = total = 0
for png in sorted(fold.glob("*.png")):
    pred = np.asarray(Image.open(png)) == 1
    true = np.asarray(Image.open(pathlib.Path("$nnUNet_preprocessed/$DS/gt_segmentations") / png.name)) == 1
    agree, total = agree + int((pred == true).sum()), total + pred.size
    cell_tp, cell_wrong = cell_tp + int((~pred & ~true).sum()), cell_wrong + int((pred != true).sum())
print(f"train_isbi: {$EPOCHS} x {$ITERS} iterations, precision $PRECISION, wall {$end - $start:.0f} s (training + "
      f"final validation); membrane Dice on the 5 held-back images {s['mean']['1']['Dice']:.4f} "
      f"(per case {[round(c['metrics']['1']['Dice'], 4) for c in s['metric_per_case']]}); cell Dice "
      f"{2 * cell_tp / (2 * cell_tp + cell_wrong):.4f}, pixel accuracy {agree / total:.4f}")
PY
