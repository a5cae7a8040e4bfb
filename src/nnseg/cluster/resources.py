"""Names of the Dask worker resources nnseg's tasks ask for (shared by the client side and the local workers)."""

from __future__ import annotations

__all__ = ["GPU", "MEMORY"]

MEMORY = "MEMORY"  # the worker resource that holds bytes of RAM a worker offers to nnseg tasks
GPU = "GPU"  # the worker resource that counts GPUs
