from __future__ import annotations

from pathlib import Path

import pytest

from nnseg.cli.main import main
from nnseg.paths import find_dataset_name, resolve_roots
from nnseg.registry import Registry


def test_env_vars_win(tmp_path: Path) -> None:
    env = {"nnUNet_raw": "/r", "nnUNet_preprocessed": "/p", "nnUNet_results": "/x"}
    (tmp_path / "nnseg.toml").write_text('[paths]\nroot = "elsewhere"\n')
    roots = resolve_roots(env, cwd=tmp_path)
    assert roots.raw == Path("/r") and roots.preprocessed == Path("/p") and roots.results == Path("/x")
    assert "nnUNet_raw" in roots.sources["raw"]


def test_config_file_then_default(tmp_path: Path) -> None:
    (tmp_path / "nnseg.toml").write_text('[paths]\nroot = "data"\nresults = "/abs/results"\n')
    roots = resolve_roots({"nnUNet_raw": "/r"}, cwd=tmp_path)
    assert roots.raw == Path("/r")
    assert roots.preprocessed == tmp_path / "data" / "preprocessed"
    assert roots.results == Path("/abs/results")
    assert "config file" in roots.sources["preprocessed"]
    roots = resolve_roots({}, cwd=tmp_path / "nowhere")
    assert roots.raw == tmp_path / "nowhere" / "nnseg_data" / "raw"
    assert roots.sources["raw"].startswith("default")


def test_user_config_folder(tmp_path: Path) -> None:
    cfg = tmp_path / "xdg" / "nnseg"
    cfg.mkdir(parents=True)
    (cfg / "nnseg.toml").write_text('[paths]\nraw = "/data/raw"\n')
    roots = resolve_roots({"XDG_CONFIG_HOME": str(tmp_path / "xdg")}, cwd=tmp_path)
    assert roots.raw == Path("/data/raw")


def test_bad_config_is_named(tmp_path: Path) -> None:
    (tmp_path / "nnseg.toml").write_text('[paths]\nrw = "x"\n')
    with pytest.raises(ValueError, match="unknown keys"):
        resolve_roots({}, cwd=tmp_path)


@pytest.mark.parametrize("ref", ["4", "004", 4, "Dataset004_Hippocampus"])
def test_dataset_refs(tmp_path: Path, ref: object) -> None:
    (tmp_path / "raw" / "Dataset004_Hippocampus").mkdir(parents=True)
    (tmp_path / "results" / "Dataset002_Heart").mkdir(parents=True)
    roots = resolve_roots({"nnUNet_raw": str(tmp_path / "raw"), "nnUNet_preprocessed": str(tmp_path / "pre"),
                           "nnUNet_results": str(tmp_path / "results")}, cwd=tmp_path)
    assert find_dataset_name(ref, roots) == "Dataset004_Hippocampus"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Dataset002_Heart, Dataset004_Hippocampus"):
        find_dataset_name(7, roots)


def test_paths_command(roots_env: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["paths"], env=roots_env, cwd=tmp_path) == 0
    out = capsys.readouterr().out
    assert "environment variable nnUNet_raw" in out


def test_paths_with_default_folders_does_not_point_to_itself(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23.7: with no nnUNet_* variables, `nnseg paths` printed "(`nnseg paths` explains)" about itself."""
    env = {"HOME": str(tmp_path / "home")}
    assert main(["paths"], env=env, cwd=tmp_path) == 0
    captured = capsys.readouterr()
    assert "nnseg paths" not in captured.out + captured.err, captured
    assert f"{tmp_path / 'nnseg_data' / 'raw'}" in captured.out and "set nnUNet_raw or write nnseg.toml" in captured.out
    assert main(["verify", "-d", "1"], env=env, cwd=tmp_path) == 1  # every other command still announces the default
    assert "`nnseg paths` explains" in capsys.readouterr().err


def test_readme_windows_toml_keeps_the_tutorial_paths(tmp_path: Path) -> None:
    """Issue 23.16: README's `nnseg.toml` for Windows gives back the tutorial's `setx` paths, backslashes and all."""
    import re

    from shared_paths import REPO

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Windows"):]
    block = re.search(r"```toml\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    setx = dict(re.findall(r'setx (nnUNet_\w+) "([^"]+)"', section))
    (tmp_path / "nnseg.toml").write_text(block, encoding="utf-8")
    roots = resolve_roots({"HOME": str(tmp_path / "home")}, cwd=tmp_path)
    for key, folder in (("nnUNet_raw", roots.raw), ("nnUNet_preprocessed", roots.preprocessed),
                        ("nnUNet_results", roots.results)):
        assert str(folder).endswith(setx[key]) and "\n" not in str(folder), (key, folder)  # on Windows: equal


def test_registry_lists_known_names() -> None:
    reg = Registry[int]("thing")
    reg.add("a", 1, aliases=("A",))
    assert reg["A"] == 1 and "a" in reg and reg.names() == ["A", "a"]
    with pytest.raises(KeyError, match="registered"):
        reg["zzz"]


def test_atomic_writes_get_a_normal_file_mode(tmp_path: Path) -> None:
    import os

    from nnseg.jsonio import save_json

    save_json({"a": 1}, tmp_path / "x.json")
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~umask
