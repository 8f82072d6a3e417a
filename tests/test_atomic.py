"""One atomic writer: every file or folder peftbench renames into place comes from peftbench.atomic."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from peftbench.atomic import atomic_folder, atomic_write
from peftbench.data.images import load_split
from peftbench.data.splits import read_task_lists
from peftbench.data.synthetic import make_synthetic
from peftbench.data.tasks import TaskSpec
from peftbench.methods.ship import _save_atomic
from peftbench.records import write_record


@pytest.fixture
def renames(monkeypatch) -> list[tuple[Path, Path, bool]]:
    """Every os.replace as (source, destination, source made by tempfile in the destination's folder).

    The helper names its temporaries with mkstemp / mkdtemp: unique even across hosts that share
    a filesystem, unlike the old per-module ``name.<pid>.tmp`` names."""
    made: set[Path] = set()
    seen: list[tuple[Path, Path, bool]] = []
    mkstemp, mkdtemp, replace = tempfile.mkstemp, tempfile.mkdtemp, os.replace

    def spy_mkstemp(*args, **kwargs):
        fd, name = mkstemp(*args, **kwargs)
        made.add(Path(name))
        return fd, name

    def spy_mkdtemp(*args, **kwargs):
        name = mkdtemp(*args, **kwargs)
        made.add(Path(name))
        return name

    def spy_replace(src, dst):
        src, dst = Path(src), Path(dst)
        seen.append((src, dst, src in made and src.parent == dst.parent))
        return replace(src, dst)

    monkeypatch.setattr(tempfile, "mkstemp", spy_mkstemp)
    monkeypatch.setattr(tempfile, "mkdtemp", spy_mkdtemp)
    monkeypatch.setattr(os, "replace", spy_replace)
    return seen


def test_every_writer_goes_through_the_helper(tmp_path, renames):
    task = TaskSpec("tiny", 3, "natural", 4, "16x12")
    make_synthetic(tmp_path / "data", [task], scale=0.01)
    entries = read_task_lists(tmp_path / "data", task).splits["test"]
    split = load_split(entries, (16, 16), "bicubic", "test.txt", cache_dir=tmp_path / "cache", threads=1)
    _save_atomic(tmp_path / "ship" / "bank.npy", np.ones((2, 3), dtype=np.float32))
    write_record(tmp_path / "runs" / "r.json", {"run_id": "r"})

    assert split.images.shape == (len(entries), 12, 16, 3)  # native 16x12 (w x h) fits the target: kept
    assert np.load(tmp_path / "ship" / "bank.npy").sum() == 6
    destinations = {dst.relative_to(tmp_path).parts[0] for _, dst, _ in renames}
    assert destinations == {"data", "cache", "ship", "runs"}, renames
    assert all(ok for *_, ok in renames), [r for r in renames if not r[2]]
    assert not [p for p in tmp_path.rglob("*.tmp")]  # no temporary left behind


def test_a_failed_writer_leaves_the_old_file_or_nothing(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")

    def boom(tmp: Path) -> None:
        (tmp / "part" if tmp.is_dir() else tmp).write_text("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    with pytest.raises(RuntimeError):
        atomic_folder(tmp_path / "folder", boom)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_atomic_folder_loses_a_race_cleanly(tmp_path):
    winner = tmp_path / "suite"
    winner.mkdir()
    (winner / "MARKER").write_text("first")
    assert atomic_folder(winner, lambda tmp: (tmp / "MARKER").write_text("second")) is False
    assert (winner / "MARKER").read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["suite"]
