"""The built-in mini suite (generated data) and the shipped mini ViT."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import peftbench.data.mini as mini
import peftbench.models  # noqa: F401 - registers vit_mini_patch8_32 with timm
from peftbench.backbone import load_backbone
from peftbench.data.images import Batches, load_split
from peftbench.data.mini import MARKER, MINI_TASKS, ensure_mini_suite, list_checksums, pixel_checksum
from peftbench.data.splits import read_task_lists
from peftbench.data.tasks import GROUPS, suite_tasks
from peftbench.errors import DataError
from peftbench.models import MINI_VIT, mini_weights_path


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return ensure_mini_suite(tmp_path_factory.mktemp("data") / "mini")


def test_suite_is_registered_and_covers_the_three_groups():
    assert suite_tasks("mini") == MINI_TASKS
    assert {t.group for t in MINI_TASKS} == set(GROUPS)


@pytest.mark.slow
def test_generation_is_deterministic(suite, tmp_path):
    again = ensure_mini_suite(tmp_path / "mini")
    assert list_checksums(again) == list_checksums(suite)
    assert pixel_checksum(again) == pixel_checksum(suite)
    for task in MINI_TASKS:
        for rel in ("images/trainval/00000.png", "images/trainval/00999.png", "images/test/00123.png"):
            assert (again / task.name / rel).read_bytes() == (suite / task.name / rel).read_bytes()


def test_existing_suite_is_reused(suite):
    marker = (suite / MARKER).stat().st_mtime_ns
    assert ensure_mini_suite(suite) == suite
    assert (suite / MARKER).stat().st_mtime_ns == marker
    assert json.loads((suite / MARKER).read_text())["tasks"] == [t.name for t in MINI_TASKS]


def test_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="no complete mini suite"):
        ensure_mini_suite(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("task", MINI_TASKS, ids=lambda t: t.name)
def test_task_passes_preflight_without_warnings(suite, task):
    lists = read_task_lists(suite, task)
    assert lists.warnings == []
    for split in ("train800val200", "test"):
        assert {e.label for e in lists.splits[split]} == set(range(task.num_classes))
    with Image.open(lists.splits["test"][0].path) as img:
        assert (img.mode, img.size) == ("RGB", (32, 32))


def test_shipped_checkpoint_loads_without_missing_keys():
    path = mini_weights_path()
    assert path.is_file() and path.stat().st_size < 10_000_000
    backbone = load_backbone(MINI_VIT, weights=str(path))  # strict: raises on missing/unexpected keys
    assert backbone.preprocess.img_size == (32, 32)
    assert backbone.checksum != load_backbone(MINI_VIT, weights="none").checksum
    model = backbone.instantiate(num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


def _features(model, backbone, entries, cache_dir) -> tuple[np.ndarray, np.ndarray]:
    pre = backbone.preprocess
    data = load_split(entries, pre.img_size, pre.interpolation, "mini", cache_dir=cache_dir, threads=1)
    batches = Batches(data, pre.img_size, pre.mean, pre.std, pre.interpolation, torch.device("cpu"))
    with torch.no_grad():
        feats = torch.cat([model(x) for x, _ in batches.iterate(250)])
    return feats.double().numpy(), data.labels


def test_linear_probe_on_shipped_features_beats_chance(suite, tmp_path):
    """Ridge regression onto one-hot labels, in closed form, on frozen features of one task."""
    task = next(t for t in MINI_TASKS if t.name == "texture")
    backbone = load_backbone(MINI_VIT, weights=str(mini_weights_path()))
    model = backbone.instantiate(num_classes=0).eval()
    lists = read_task_lists(suite, task)
    x_train, y_train = _features(model, backbone, lists.splits["train800val200"], tmp_path)
    x_test, y_test = _features(model, backbone, lists.splits["test"], tmp_path)
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mu) / sd, (x_test - mu) / sd
    x_train, x_test = (np.hstack([x, np.ones((len(x), 1))]) for x in (x_train, x_test))
    targets = np.eye(task.num_classes)[y_train]
    w = np.linalg.solve(x_train.T @ x_train + 10.0 * np.eye(x_train.shape[1]), x_train.T @ targets)
    accuracy = float(((x_test @ w).argmax(1) == y_test).mean())
    assert accuracy > 2.0 / task.num_classes, accuracy


def test_concurrent_caller_that_finishes_second_keeps_the_winner(suite, tmp_path, monkeypatch):
    """Another process renames its complete suite into place while this one is generating."""
    root = tmp_path / "mini"

    def write_while_another_finishes(task, folder, digest):
        if not root.exists():
            shutil.copytree(suite, root)  # the other caller's rename lands first
        folder.mkdir(parents=True)

    monkeypatch.setattr(mini, "_write_task", write_while_another_finishes)
    assert ensure_mini_suite(root) == root
    assert pixel_checksum(root) == pixel_checksum(suite)
    assert [p.name for p in tmp_path.iterdir()] == ["mini"]  # the loser's temporary copy is gone
