"""Issue 23.15: the GitHub Actions workflow is valid YAML and runs the README's test command on Linux, Windows and
macOS with Python 3.10-3.12 (it cannot run here; this checks what can be checked without GitHub)."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
WORKFLOW = REPO / ".github" / "workflows" / "tests.yml"


def test_workflow_parses_and_covers_every_system_and_python() -> None:
    flow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert set(flow["on"]) >= {"push", "pull_request"}  # quoted: YAML 1.1 reads a bare `on` as true
    seen = set()
    for job in flow["jobs"].values():
        matrix = job["strategy"]["matrix"]
        systems = matrix.get("os", [job["runs-on"]])
        assert matrix["python"] == ["3.10", "3.11", "3.12"]
        assert all(isinstance(step, dict) and ("uses" in step or "run" in step) for step in job["steps"])
        commands = " ".join(step.get("run", "") for step in job["steps"])
        assert "./dev.sh test" in commands or ".ci/run" in commands
        seen.update(s.split("-")[0] for s in systems)
    assert seen == {"ubuntu", "windows", "macos"}


def test_the_command_is_the_readme_one() -> None:
    assert "./dev.sh test" in (REPO / "README.md").read_text(encoding="utf-8")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert ci.rstrip().endswith("./dev.sh test")
    dev = (REPO / "dev.sh").read_text(encoding="utf-8")
    assert ".venv/Scripts" in dev  # Windows venvs keep python.exe there; dev.sh finds it under Git Bash
