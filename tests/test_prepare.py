"""`peftbench prepare vtab1k --from ZIP`: every defect named (file:line), the good tasks still prepared,
unsafe zip entries refused; runs on the prepared folder record its data source; the report keeps sources apart.

The task table is the real one except for the test sizes (30 images, so that a task is 1030 tiny JPEGs):
train800 / val200 / train800val200 stay 800 / 200 / 1000.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
from pathlib import Path

import pytest

from peftbench.cli import main
from peftbench.data import tasks as task_table
from peftbench.data.manifest import read_manifest, verify_and_write_manifest
from peftbench.data.synthetic import noah_task_files, write_noah_zip
from peftbench.records import load_records

TEST_SIZE = 30
DEFECTS = {"kitti": "missing_image", "dtd": "label_out_of_range", "oxford_pet": "train_799",
           "eurosat": "train_val_overlap", "svhn": "truncated_jpeg", "caltech101": "symlink"}
TASKS = ["cifar100", *DEFECTS]
TINY_RUN = ["--backbone", "test_vit", "--weights", "none", "--img-size", "32", "--set", "epochs=1",
            "--set", "warmup_epochs=0", "--set", "bench_steps=1", "--set", "bench_warmup=0", "--no-report"]


@pytest.fixture(scope="module")
def table():
    """The VTAB-1k table with 30 test images per task (everything else as it is)."""
    small = tuple(dataclasses.replace(t, test_size=TEST_SIZE) for t in task_table.VTAB1K)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(task_table.SUITES, "vtab1k", small)
        yield {t.name: t for t in small}


def _main(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue() + err.getvalue()


@pytest.fixture(scope="module")
def prepared(table, tmp_path_factory):
    """One zip: cifar100 clean, one defect in each other task, and two entries that try to leave the target."""
    base = tmp_path_factory.mktemp("prepare")
    zip_path = write_noah_zip(base / "vtab-1k.zip", [table[n] for n in TASKS], DEFECTS, escape=True)
    code, text = _main(["prepare", "vtab1k", "--from", str(zip_path), "--tasks", ",".join(TASKS)])
    return code, text, base / "vtab-1k", base


def test_every_defect_is_named_with_its_file_and_line(prepared):
    code, text, root, _ = prepared
    assert code == 1 and "Traceback" not in text
    expected = [
        f"{root / 'kitti' / 'train800.txt'}:5: missing image images/train800val200/train800_000004.jpg",
        f"{root / 'dtd' / 'val200.txt'}:3: label 47 outside [0, 47)",
        f"{root / 'oxford_iiit_pet' / 'train800.txt'}: 799 image(s) listed, expected 800",
        f"{root / 'eurosat' / 'val200.txt'}:1: image images/train800val200/train800_000000.jpg is also in "
        f"{root / 'eurosat' / 'train800.txt'}:1",
        f"{root / 'svhn' / 'test.txt'}:7: cannot decode image images/test/test_000006.jpg",
        "entry 'vtab-1k/caltech101/images/test/test_000001.jpg': a symbolic link; refused",
        f"{root / 'caltech101' / 'test.txt'}:2: missing image images/test/test_000001.jpg",
        "entry 'vtab-1k/../escaped.txt': '..' leaves the target folder; refused",
        "entry '/tmp/peftbench-absolute.txt': an absolute path; refused",
    ]
    for line in expected:
        assert line in text, line
    for task in DEFECTS:
        assert f"error: task '{task}' failed" in text
    assert "1 task(s) verified (data source noah-jpeg), 6 failed" in text


def test_nothing_outside_the_target_and_the_good_task_prepared(prepared):
    _, _, root, base = prepared
    assert sorted(p.name for p in base.iterdir()) == ["vtab-1k", "vtab-1k.zip"]
    assert not Path("/tmp/peftbench-absolute.txt").exists() and not list(base.rglob("escaped.txt"))
    assert not list(root.rglob("*.part")) and not any(p.is_symlink() for p in root.rglob("*"))
    # the aliases of the NOAH folder names were accepted (cifar, oxford_iiit_pet)
    assert {"cifar", "oxford_iiit_pet", "kitti"} <= {p.name for p in root.iterdir()}
    manifest = read_manifest(root)
    assert list(manifest["tasks"]) == ["cifar100"]  # the failed tasks are not in it
    entry = manifest["tasks"]["cifar100"]
    assert entry["source"] == "noah-jpeg" and entry["folder"] == "cifar"
    assert {s: v["images"] for s, v in entry["splits"].items()} == {
        "train800": 800, "val200": 200, "train800val200": 1000, "test": TEST_SIZE}
    # the images' sha256: their bytes concatenated in list order, computed here independently
    lines = (root / "cifar" / "val200.txt").read_text().splitlines()
    concat = b"".join((root / "cifar" / ln.split()[0]).read_bytes() for ln in lines)
    assert entry["splits"]["val200"]["images_sha256"] == hashlib.sha256(concat).hexdigest()
    assert entry["splits"]["val200"]["list_sha256"] == hashlib.sha256(
        (root / "cifar" / "val200.txt").read_bytes()).hexdigest()


def test_preparing_again_resumes_without_rewriting_images(prepared, table):
    """A second prepare of the same zip keeps the unpacked files (same size) and writes the same entry."""
    _, _, root, base = prepared
    before = read_manifest(root)["tasks"]["cifar100"]["sha256"]
    image = root / "cifar" / "images" / "test" / "test_000000.jpg"
    inode = image.stat().st_ino
    code, text = _main(["prepare", "vtab1k", "--from", str(base / "vtab-1k.zip"), "--tasks", "cifar100"])
    assert code == 1 and "3 zip entries refused" in text  # the unsafe entries are refused again
    assert image.stat().st_ino == inode and read_manifest(root)["tasks"]["cifar100"]["sha256"] == before


def _second_root(path: Path, task) -> Path:
    """cifar100 again with other image bytes, as another copy of the data would have."""
    files, _ = noah_task_files(task, seed=7)
    for rel, data in files.items():
        (path / "cifar100" / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / "cifar100" / rel).write_bytes(data)
    return path


def test_runs_record_the_source_and_the_report_keeps_sources_apart(prepared, table, tmp_path):
    _, _, root, _ = prepared
    out = tmp_path / "runs"
    code, text = _main(["run", "--data-root", str(root), "--tasks", "cifar100", "--methods", "linear",
                        "--out", str(out), *TINY_RUN])
    assert code == 0, text
    assert "MANIFEST.json" not in text  # verified: no warning
    (rec,) = load_records(out)[0]
    assert rec["data"]["source"] == "noah-jpeg"
    assert rec["data"]["manifest_sha256"] == read_manifest(root)["tasks"]["cifar100"]["sha256"]

    other = _second_root(tmp_path / "tfds", table["cifar100"])
    report = verify_and_write_manifest(other, "tfds-png", ["cifar100"], {"tfds_builder": "cifar100:3.0.2"})
    assert report.ok and report.verified == {"cifar100": 1000 + TEST_SIZE}
    assert read_manifest(other)["tasks"]["cifar100"]["extra"] == {"tfds_builder": "cifar100:3.0.2"}
    code, text = _main(["run", "--data-root", str(other), "--tasks", "cifar100", "--methods", "linear",
                        "--out", str(out), *TINY_RUN])
    assert code == 0, text
    assert sorted(r["data"]["source"] for r in load_records(out)[0]) == ["noah-jpeg", "tfds-png"]

    code, text = _main(["report", str(out)])
    assert code == 0, text
    md = (out / "report" / "summary.md").read_text()
    titles = [ln for ln in md.splitlines() if ln.startswith("## Table")]
    assert len(titles) == 2 and sorted(t.rsplit("· data ", 1)[1] for t in titles) == ["noah-jpeg", "tfds-png"]
    assert "Differs from Table 1 in: data source." in md
    rows = [ln for ln in md.splitlines() if ln.startswith("| linear |")]
    assert len(rows) == 2  # one row per table: never one row (or one mean) over both
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert sorted(t["setting"]["data_source"] for t in summary["tables"]) == ["noah-jpeg", "tfds-png"]


def test_prepare_usage_errors_are_one_line(tmp_path):
    for argv, fragment in ((["prepare", "vtab1k", "--from", str(tmp_path / "nope")], "no such file or folder"),
                           (["prepare", "vtabk1", "--from", str(tmp_path)], "did you mean 'vtab1k'"),
                           (["prepare", "--verify", str(tmp_path)], "no manifest")):
        code, text = _main(argv)
        assert code == 2 and fragment in text and "Traceback" not in text, text
    (tmp_path / "x.zip").write_bytes(b"PK\x03\x04 not really a zip")
    code, text = _main(["prepare", "vtab1k", "--from", str(tmp_path / "x.zip")])
    assert code == 2 and "neither a folder nor a zip file" in text
