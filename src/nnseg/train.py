"""``torchrun --nnodes M --nproc-per-node N -m nnseg.train DATASET CONFIGURATION FOLD [nnUNetv2_train options]``.

The ``train`` command (same arguments as ``nnUNetv2_train``) run as one rank of a data-parallel job; torchrun's
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) says which. Without torchrun it is
a plain ``nnUNetv2_train``.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # pragma: no cover - exercised through torchrun subprocesses
    from nnseg.cli.workflow.ddp_cmds import main_train

    sys.exit(main_train())
