"""Where the read-only shared data and nnU-Net's golden files are (``NNSEG_SHARED`` overrides ``../shared``)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ["NNSEG_SHARED"]) if os.environ.get("NNSEG_SHARED") else REPO.parent / "shared"
EXPECTED = SHARED / "reference" / "expected"
DATA = SHARED / "data"
