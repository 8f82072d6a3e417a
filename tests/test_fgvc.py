"""The FGVC suite: the VPT split files verified by `peftbench prepare fgvc`, each defect named (file:line),
and the runner, records and report on it unchanged (a tiny ViT, one epoch, small splits)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json

import pytest

from peftbench.cli import main
from peftbench.data import tasks as task_table
from peftbench.data.manifest import read_manifest
from peftbench.data.splits import collect_task_lists
from peftbench.data.synthetic import write_fgvc_folder
from peftbench.records import load_records

SIZES = {"train_val": (20, 10), "test_size": 12}


@pytest.fixture
def table(monkeypatch):
    """The FGVC table with 20 / 10 / 12 images per split (classes, folders and image roots as they are)."""
    small = tuple(dataclasses.replace(t, **SIZES) for t in task_table.FGVC)
    monkeypatch.setitem(task_table.SUITES, "fgvc", small)
    return {t.name: t for t in small}


def _main(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue() + err.getvalue()


def test_the_table_has_the_five_tasks_with_their_classes_and_image_roots():
    table = {t.name: (t.num_classes, t.image_root, t.folder_names[1]) for t in task_table.suite_tasks("fgvc")}
    assert table == {"cub200": (200, "images", "CUB_200_2011"), "nabirds": (555, "images", "NABirds"),
                     "oxford_flowers": (102, "", "OxfordFlowers"), "stanford_dogs": (120, "Images", "StanfordDogs"),
                     "stanford_cars": (196, "", "StanfordCars")}


def test_prepare_names_each_defect_and_prepares_the_good_task(table, tmp_path):
    root = write_fgvc_folder(tmp_path / "fgvc", list(table.values()),
                             {"nabirds": "label_out_of_range", "oxford_flowers": "train_short",
                              "stanford_dogs": "truncated_jpeg", "stanford_cars": "symlink"})
    code, text = _main(["prepare", "fgvc", "--from", str(root)])
    assert code == 1 and "Traceback" not in text
    for line in (f"{root / 'NABirds' / 'val.json'}:3: label 555 of",
                 f"{root / 'OxfordFlowers' / 'train.json'}: 19 image(s) listed, expected 20",
                 f"{root / 'StanfordDogs' / 'test.json'}:5: cannot decode image Images/",
                 f"{root / 'StanfordCars' / 'test.json'}:5: image path"):
        assert line in text, line
    assert "leaves the task folder" in text  # the symbolic link points outside
    manifest = read_manifest(root)
    assert list(manifest["tasks"]) == ["cub200"]
    entry = manifest["tasks"]["cub200"]
    assert entry["source"] == "fgvc-vpt" and entry["folder"] == "CUB_200_2011"
    assert {s: (v["file"], v["images"]) for s, v in entry["splits"].items()} == {
        "train": ("train.json", 20), "val": ("val.json", 10), "test": ("test.json", 12)}


def test_prepare_missing_image_and_train_val_overlap(table, tmp_path):
    root = write_fgvc_folder(tmp_path / "fgvc", [table["cub200"], table["nabirds"]],
                             {"cub200": "missing_image", "nabirds": "train_val_overlap"})
    code, text = _main(["prepare", "fgvc", "--from", str(root), "--tasks", "cub200,nabirds"])
    assert code == 1 and "Traceback" not in text
    assert f"{root / 'CUB_200_2011' / 'train.json'}:4: missing image images/" in text
    assert f"{root / 'NABirds' / 'val.json'}:3: image images/" in text
    assert f"is also in {root / 'NABirds' / 'train.json'}:2" in text
    assert read_manifest(root) is None  # nothing verified, nothing written


def test_sparse_class_ids_are_numbered_in_sorted_order(table, tmp_path):
    spec = dataclasses.replace(table["oxford_flowers"], num_classes=3)
    root = write_fgvc_folder(tmp_path / "fgvc", [spec])
    folder = root / "OxfordFlowers"
    for name in ("train.json", "val.json", "test.json"):  # ids 0, 1, 2 -> 10, 20, 30
        data = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({k: 10 * (v + 1) for k, v in data.items()}))
    lists, problems = collect_task_lists(root, spec)
    assert problems == []
    assert sorted({e.label for e in lists.splits["test"]}) == [0, 1, 2]


def test_fgvc_sweep_runs_records_and_reports_the_mean_over_five(table, tmp_path):
    root = write_fgvc_folder(tmp_path / "fgvc", list(table.values()))
    code, text = _main(["prepare", "fgvc", "--from", str(root)])
    assert code == 0, text
    out = tmp_path / "runs"
    code, text = _main(["run", "--suite", "fgvc", "--data-root", str(root), "--methods", "linear,vpt_deep",
                        "--tasks", "all", "--backbone", "test_vit", "--weights", "none", "--img-size", "32",
                        "--set", "epochs=1", "--set", "warmup_epochs=0", "--set", "bench_steps=1",
                        "--set", "bench_warmup=0", "--out", str(out)])
    assert code == 0, text
    records = load_records(out)[0]
    assert len(records) == 10 and {r["status"] for r in records} == {"complete"}
    cub = next(r for r in records if r["task"] == "cub200")
    assert cub["data"]["source"] == "fgvc-vpt"
    assert cub["data"]["manifest_sha256"] == read_manifest(root)["tasks"]["cub200"]["sha256"]
    # protocol final: train + val (20 + 10) -> test (12)
    assert cub["data"]["train_split"] == "train800val200" and cub["data"]["splits"]["train800val200"] == 30
    md = (out / "report" / "summary.md").read_text()
    header = next(ln for ln in md.splitlines() if ln.startswith("| Method |"))
    assert header.startswith("| Method | cub200 | nabirds | oxford_flowers | stanford_dogs | stanford_cars | "
                             "Mean (5 tasks) |")
    row = [v.strip("*") for v in next(ln for ln in md.splitlines() if ln.startswith("| linear |")).split(" | ")]
    cells = [float(v) for v in row[1:6]]  # (bold marks a method tied with the column's best)
    assert float(row[6]) == pytest.approx(round(sum(cells) / 5, 1), abs=0.051)
    assert "suite fgvc" in md and "data fgvc-vpt" in md
