"""Data provenance at run time: the manifest's source and digest in each record, checked by file stats only;
`unverified` (one warning line) without a manifest or after a change; `prepare --verify` re-hashes."""

from __future__ import annotations

import dataclasses
import os

import pytest

from peftbench.cli import main
from peftbench.data import tasks as task_table
from peftbench.data.manifest import read_manifest, verify_and_write_manifest
from peftbench.records import load_records
from peftbench.report.setting import setting_of, split_settings

RUN = ["run", "--tasks", "cifar100,eurosat", "--methods", "linear", "--backbone", "test_vit", "--weights", "none",
       "--img-size", "32", "--set", "epochs=1", "--set", "warmup_epochs=0", "--set", "bench_steps=1",
       "--set", "bench_warmup=0", "--no-report"]


@pytest.fixture
def small_table(monkeypatch):
    """vtab_root's split sizes (24 / 8 / 16) in the task table, so that its folders verify."""
    small = tuple(dataclasses.replace(t, train_val=(24, 8), test_size=16) for t in task_table.VTAB1K)
    monkeypatch.setitem(task_table.SUITES, "vtab1k", small)


def _sources(out) -> dict[str, tuple[str, str | None]]:
    return {r["task"]: (r["data"]["source"], r["data"]["manifest_sha256"]) for r in load_records(out)[0]}


def test_no_manifest_runs_unverified_with_one_warning_line(vtab_root, tmp_path, capsys):
    assert main([*RUN, "--data-root", str(vtab_root), "--out", str(tmp_path / "runs")]) == 0
    text = capsys.readouterr().out
    assert [ln for ln in text.splitlines() if "MANIFEST.json" in ln] == [
        f"warning: {vtab_root} has no MANIFEST.json: runs are recorded as data source 'unverified' "
        "(`peftbench prepare vtab1k --from FOLDER` verifies a folder and writes one)"]
    assert _sources(tmp_path / "runs") == {"cifar100": ("unverified", None), "eurosat": ("unverified", None)}


def test_a_changed_file_makes_the_task_unverified_and_verify_names_it(vtab_root, tmp_path, capsys, small_table):
    report = verify_and_write_manifest(vtab_root, "noah-jpeg")
    assert report.ok is False  # the other 17 tasks have no folder ...
    assert set(report.verified) == {"cifar100", "eurosat"}  # ... and the two that exist are written
    digests = {t: e["sha256"] for t, e in read_manifest(vtab_root)["tasks"].items()}

    # one image rewritten with other bytes (and another size): cheap check -> eurosat unverified
    image = vtab_root / "eurosat" / (vtab_root / "eurosat" / "test.txt").read_text().split()[0]
    image.write_bytes(image.read_bytes() + b"\0")
    out = tmp_path / "runs"
    assert main([*RUN, "--data-root", str(vtab_root), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "warning: task 'eurosat': images of test.txt changed (size or modification time)" in text
    assert _sources(out) == {"cifar100": ("noah-jpeg", digests["cifar100"]), "eurosat": ("unverified", None)}

    # --verify re-hashes: names the changed split, drops the task from the manifest, keeps the other
    assert main(["prepare", "--verify", str(vtab_root)]) == 1
    captured = capsys.readouterr()
    assert "eurosat/test.txt: image bytes changed since the manifest was written" in captured.err
    assert "Traceback" not in captured.out + captured.err
    assert list(read_manifest(vtab_root)["tasks"]) == ["cifar100"]


def test_a_copied_folder_verifies_again_with_the_same_digest(vtab_root, tmp_path, capsys, small_table):
    verify_and_write_manifest(vtab_root, "noah-jpeg", ["cifar100"])
    digest = read_manifest(vtab_root)["tasks"]["cifar100"]["sha256"]
    listed = vtab_root / "cifar" / "train800.txt"
    os.utime(listed, ns=(listed.stat().st_atime_ns, listed.stat().st_mtime_ns + 10**9))  # as a plain copy does
    out = tmp_path / "runs"
    assert main([*RUN, "--tasks", "cifar100", "--data-root", str(vtab_root), "--out", str(out)]) == 0
    assert "train800.txt changed (size or modification time)" in capsys.readouterr().out
    assert _sources(out) == {"cifar100": ("unverified", None)}

    assert main(["prepare", "--verify", str(vtab_root)]) == 0  # same bytes: stats refreshed, digest kept
    assert read_manifest(vtab_root)["tasks"]["cifar100"]["sha256"] == digest
    for path in (out / "linear").rglob("*.json"):
        path.unlink()
    assert main([*RUN, "--tasks", "cifar100", "--data-root", str(vtab_root), "--out", str(out)]) == 0
    assert _sources(out) == {"cifar100": ("noah-jpeg", digest)}


def test_records_without_a_data_source_read_as_unverified_in_one_table():
    base = {"status": "complete", "method": "linear", "task": "cifar100", "suite": "vtab1k", "seed": 0,
            "config": {"train": {"protocol": "final", "epochs": 1, "precision": "fp32"}},
            "backbone": {"name": "b", "weights": "none", "img_size": [32, 32]}}
    old = {**base, "data": {"checksum": "x"}}  # written before data provenance
    new = {**base, "seed": 1, "data": {"checksum": "x", "source": "unverified", "manifest_sha256": None}}
    noah = {**base, "seed": 2, "data": {"checksum": "x", "source": "noah-jpeg", "manifest_sha256": "d"}}
    assert setting_of(old) == setting_of(new) != setting_of(noah)
    assert setting_of(old).data_source == "unverified"
    assert [len(v) for v in split_settings([old, new, noah]).values()] == [2, 1]
