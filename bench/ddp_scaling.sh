#!/usr/bin/env bash
# Epoch time of data-parallel training (issue 8): one process vs N processes on the same global batch.
#
#   bench/ddp_scaling.sh                 # GPUs: 1 GPU vs all GPUs (NUM_GPUS=N to choose); no GPU: 1 vs 2 CPU ranks
#   EPOCHS=4 ITERS=50 BATCH=4 bench/ddp_scaling.sh
#
# A synthetic dataset is written to $WORK (a temporary folder by default) and preprocessed with fixed plans: on GPUs a
# 5-stage 3D U-Net (32..320 features, patch 64^3), on the CPU a tiny one (4..16 features, patch 16^3). Each run trains
# EPOCHS epochs of ITERS iterations (global batch BATCH, split over the ranks) with `nnseg train -num_gpus N`; the
# figure is the median epoch time of all epochs but the first (warm-up), read from checkpoint_final.pth.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
"$PY" "$REPO/bench/cpuinfo.py"  # the CPU these figures come from
WORK=${WORK:-$(mktemp -d -t nnseg_ddp_bench.XXXXXX)}
EPOCHS=${EPOCHS:-4}
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")

if [ "$GPUS" -ge 1 ]; then
  DEVICE=cuda SIZE=gpu N=${NUM_GPUS:-$GPUS} ITERS=${ITERS:-50} BATCH=${BATCH:-2}
  "$PY" -c "import torch; print('GPUs:', ', '.join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))"
  if [ "$N" -lt 2 ]; then
    echo "only $GPUS GPU here: measuring 1 GPU only (no scaling figure); run on a machine with 2+ GPUs for one"
  fi
else
  DEVICE=cpu SIZE=cpu N=${NUM_GPUS:-2} ITERS=${ITERS:-10} BATCH=${BATCH:-2}
  echo "no GPU found: measuring CPU ranks instead (gloo, $("$PY" -c 'import os; print(os.cpu_count())') cores" \
       "shared between the ranks); these are NOT GPU figures"
fi

export nnUNet_raw=$WORK/raw nnUNet_preprocessed=$WORK/preprocessed
"$PY" - "$WORK" "$SIZE" <<'EOF'
import shutil, sys
from pathlib import Path

from nnseg.jsonio import save_json
from nnseg.plans.schema import Plans
from nnseg.preprocessed.preprocess import preprocess_files
from nnseg.preprocessed.store import save_case
from nnseg.raw.dataset_json import load_dataset_json
from nnseg.raw.demo_data import make_demo_dataset
from nnseg.raw.discover import training_cases

work, size = Path(sys.argv[1]), sys.argv[2]
name = "Dataset991_DDPBench"
if size == "gpu":
    shape, patch, features, strides = (80, 80, 80), (64, 64, 64), [32, 64, 128, 256, 320], [1, 2, 2, 2, 2]
else:
    shape, patch, features, strides = (20, 20, 20), (16, 16, 16), [4, 8, 16], [1, 2, 2]
stages = len(features)
arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {"n_stages": stages, "features_per_stage": features, "conv_op": "torch.nn.modules.conv.Conv3d",
                        "kernel_sizes": [[3, 3, 3]] * stages, "strides": [[s] * 3 for s in strides],
                        "n_conv_per_stage": [2] * stages, "n_conv_per_stage_decoder": [2] * (stages - 1),
                        "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
rs = lambda seg, order: {"is_seg": seg, "order": order, "order_z": 0, "force_separate_z": None}
config = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
          "patch_size": list(patch), "median_image_size_in_voxels": list(shape), "spacing": [1.0] * 3,
          "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
          "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": rs(False, 3),
          "resampling_fn_seg": "resample_data_or_seg_to_shape", "resampling_fn_seg_kwargs": rs(True, 1),
          "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
          "resampling_fn_probabilities_kwargs": rs(False, 1), "architecture": arch, "batch_dice": False}
plans_json = {"dataset_name": name, "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [1.0] * 3,
              "original_median_shape_after_transp": list(shape), "image_reader_writer": "SimpleITKIO",
              "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "configurations": {"3d_fullres": config},
              "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
              "foreground_intensity_properties_per_channel": {"0": {"max": 3.0, "mean": 1.0, "median": 1.0, "min": -1.0,
                  "percentile_00_5": -1.0, "percentile_99_5": 3.0, "std": 1.0}}}
raw = make_demo_dataset(work / "raw" / name, num_cases=8, num_test=0, shape=shape)
pre = work / "preprocessed" / name
save_json(plans_json, pre / "nnUNetPlans.json")
shutil.copy(raw / "dataset.json", pre / "dataset.json")
shutil.copytree(raw / "labelsTr", pre / "gt_segmentations", dirs_exist_ok=True)
plans, spec = Plans.from_json(plans_json), load_dataset_json(raw / "dataset.json")
cfg = plans.configuration("3d_fullres")
for case in training_cases(raw, spec):
    data, seg, props = preprocess_files(case.images, case.label, io="SimpleITKIO", plans=plans, configuration=cfg, spec=spec)
    save_case(pre / cfg.data_identifier, case.identifier, data, seg, props, patch_size=patch)
EOF

epoch_time() {  # $1 = number of processes; prints the median epoch time in seconds
  local n=$1 results=$WORK/results_$1
  rm -rf "$results"
  nnUNet_results=$results "$PY" -m nnseg.cli.main train Dataset991_DDPBench 3d_fullres 0 -num_gpus "$n" \
    -device "$DEVICE" --epochs "$EPOCHS" --iterations-per-epoch "$ITERS" --set val_iterations_per_epoch=2 \
    --set batch_size="$BATCH" --seed 0 >"$WORK/train_$n.log" 2>&1 || { cat "$WORK/train_$n.log" >&2; exit 1; }
  "$PY" - "$results" <<'EOF'
import sys
from pathlib import Path

import numpy as np

from nnseg.training.checkpoint import load_checkpoint

ckpt = next(Path(sys.argv[1]).rglob("checkpoint_final.pth"))
log = load_checkpoint(ckpt)["logging"]
times = np.subtract(log["epoch_end_timestamps"], log["epoch_start_timestamps"])
print(f"{float(np.median(times[1:] if len(times) > 1 else times)):.3f}")
EOF
}

UNIT=$([ "$DEVICE" = cuda ] && echo GPU || echo "CPU rank")
echo "global batch $BATCH, $ITERS iterations/epoch, $EPOCHS epochs, data in $WORK"
T1=$(epoch_time 1)
echo "1 $UNIT: $T1 s/epoch"
if [ "$N" -ge 2 ]; then
  TN=$(epoch_time "$N")
  echo "$N ${UNIT}s: $TN s/epoch (speed-up $("$PY" -c "print(f'{$T1 / $TN:.2f}')")x)"
fi
