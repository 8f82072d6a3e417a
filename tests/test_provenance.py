"""Provenance reads git state only from this project's own development work tree."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from peftbench import provenance

ROOT = Path(__file__).resolve().parents[1]
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _repo(path: Path, pyproject: str | None) -> Path:
    (path / "peftbench").mkdir(parents=True)
    if pyproject is not None:
        (path / "pyproject.toml").write_text(pyproject)
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    subprocess.run(["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "x"], check=True)
    return path / "peftbench"


@needs_git
def test_the_development_tree_records_its_commit():
    if provenance.source_repo() is None:
        pytest.skip("this checkout of peftbench is not a git work tree (an installed copy)")
    assert provenance.source_repo() == ROOT
    commit, dirty = provenance._git_state()
    assert re.fullmatch(r"[0-9a-f]{40}", commit) and isinstance(dirty, bool)


@needs_git
@pytest.mark.parametrize("pyproject", [None, '[project]\nname = "someone-else"\n',
                                       '[project]\nname = "app"\n\n[tool.x]\nname = "peftbench"\n'])
def test_a_package_inside_another_repository_records_no_git_state(tmp_path, monkeypatch, pyproject):
    package = _repo(tmp_path / "other", pyproject)
    assert provenance.source_repo(package) is None
    monkeypatch.setattr(provenance, "PACKAGE_DIR", package)
    assert provenance._git_state() == (None, None)


@needs_git
def test_a_peftbench_work_tree_is_recognised(tmp_path):
    package = _repo(tmp_path / "clone", '[project]\ndependencies = ["x[y]"]\nname = "peftbench"\n')
    assert provenance.source_repo(package) == (tmp_path / "clone").resolve()
    assert provenance.source_repo(package / "sub") is None  # the package must sit at the top of the tree


def test_outside_any_repository_there_is_no_git_state(tmp_path):
    assert provenance.source_repo(tmp_path) is None
