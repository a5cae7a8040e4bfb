"""A worker plugin for the LocalCluster nnseg starts itself: the worker process ends at once when the cluster closes.

A worker process that imported torch takes about 4 s to exit (the nanny then kills it), which doubled the overhead of
``--cluster local:N`` on a short run; nnseg's tasks write every output atomically, so nothing is lost by ending the
process without the interpreter's exit handlers. Imported only when Dask is installed (it subclasses its plugin).
"""

from __future__ import annotations

import os
from typing import Any

from distributed import WorkerPlugin


class ExitOnClose(WorkerPlugin):
    """``os._exit(0)`` in the worker's teardown (only for workers nnseg started and closes itself)."""

    name = "nnseg-exit-on-close"

    def teardown(self, worker: Any) -> None:
        os._exit(0)
