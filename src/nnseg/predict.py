"""``torchrun --nproc-per-node N -m nnseg.predict -i IN -o OUT -d DATASET -c CONFIGURATION [nnUNetv2_predict options]``.

Every rank predicts the input cases ``sorted[rank::world]`` (within ``-num_parts/-part_id`` when those are given) into
the same output folder; the parts are disjoint, so no file is written twice. On GPUs rank r uses ``cuda:LOCAL_RANK``.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # pragma: no cover - exercised through torchrun subprocesses
    from nnseg.cli.workflow.ddp_cmds import main_predict

    sys.exit(main_predict())
