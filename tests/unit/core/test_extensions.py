"""Extensions load in every process that needs them: an installed package's entry point, and a folder named in
NNSEG_EXTENSIONS seen by spawned worker processes through a registry lookup (no explicit loading there)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nnseg.extensions import ExtensionError, extension_folders, load_extensions
from shared_paths import REPO

EXAMPLE = REPO / "examples" / "custom_loss_network"


def _python(code: str, *, env: dict[str, str]) -> str:
    full = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), env.pop("PYTHONPATH", "")]), **env}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_entry_point_of_an_installed_package_registers_components(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "i17ext-0.1.dist-info").mkdir(parents=True)
    (site / "i17ext-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: i17ext\nVersion: 0.1\n")
    (site / "i17ext-0.1.dist-info" / "entry_points.txt").write_text(
        "[nnseg.extensions]\ni17 = i17ext_components:register\n")
    (site / "i17ext_components.py").write_text(textwrap.dedent("""
        from nnseg.training.schedule import LR_SCHEDULES

        def register():
            LR_SCHEDULES.add("i17_halving", lambda epoch, num_epochs, initial_lr: initial_lr / 2 ** epoch)
    """))
    out = _python("""
        from nnseg.training.schedule import LR_SCHEDULES
        from nnseg.extensions import loaded_modules
        print(LR_SCHEDULES["i17_halving"](3, 10, 1.0), loaded_modules())
    """, env={"PYTHONPATH": str(site)})
    assert out.split()[0] == "0.125" and "i17ext_components:register" in out


def test_spawned_workers_find_the_components_of_an_extension_folder() -> None:
    out = _python("""
        from nnseg.parallel import spawn_map
        from nnseg.training.config import preset_for_trainer
        from nnseg.extensions import loaded_modules

        if __name__ == "__main__":
            presets = spawn_map(preset_for_trainer, ["MyPreset", "MyPreset"], num_processes=2)
            print(sorted({(p.loss, p.network) for p in presets}), loaded_modules())
    """, env={"NNSEG_EXTENSIONS": str(EXAMPLE)})
    assert "[('dice_focal', 'my_components.MyUNet')]" in out
    assert out.rstrip().endswith("[]")  # the parent never imported the extension: the workers did, on their own


def test_folders_are_checked_and_shadowing_file_names_refused(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError, match="NNSEG_EXTENSIONS names"):
        extension_folders({"NNSEG_EXTENSIONS": str(tmp_path / "nope")})
    folder = tmp_path / "ext"
    folder.mkdir()
    (folder / "json.py").write_text("raise SystemExit('must not run')\n")
    with pytest.raises(ExtensionError, match="has the name of the already imported module 'json'"):
        load_extensions({"NNSEG_EXTENSIONS": str(folder)})
