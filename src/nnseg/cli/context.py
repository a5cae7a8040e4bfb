"""What a command may know about its environment. Only the CLI layer builds one from ``os.environ``."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nnseg.paths import DataRoots, find_dataset_name, resolve_roots


@dataclass
class Context:
    env: Mapping[str, str]
    cwd: Path
    _roots: DataRoots | None = field(default=None, repr=False)
    _announced: bool = field(default=False, repr=False)

    def roots(self, *, announce: bool = True) -> DataRoots:
        """The data folders; announces once on stderr where data goes when a default is used (``announce=False``:
        for ``nnseg paths``, whose output is that explanation)."""
        if self._roots is None:
            self._roots = resolve_roots(self.env, cwd=self.cwd)
        if announce and not self._announced:
            self._announced = True
            defaulted = [k for k, src in self._roots.sources.items() if src.startswith("default")]
            if defaulted:
                print(f"nnseg: data goes to {self.cwd / 'nnseg_data'} (nnUNet_raw/_preprocessed/_results not set; "
                      "`nnseg paths` explains)", file=sys.stderr)
        return self._roots

    def dataset_name(self, ref: str | int) -> str:
        return find_dataset_name(ref, self.roots())

    def env_int(self, name: str, default: int) -> int:
        value = self.env.get(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"environment variable {name}={value!r} is not an integer; set it to a number such as {default}") from None
