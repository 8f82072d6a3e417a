"""The CLI end to end, in-process: acceptance commands of the core issue and its bad inputs."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from peftbench.cli import main
from peftbench.records import load_records

RUN = ["run", "--suite", "vtab1k", "--backbone", "vit_tiny_patch16_224", "--weights", "none", "--img-size", "32",
       "--set", "epochs=2", "--set", "warmup_epochs=1", "--set", "bench_steps=1", "--set", "bench_warmup=0",
       "--no-report"]


def _records(out: Path) -> list[dict]:
    return load_records(out)[0] if out.exists() else []


def test_methods_lists_builtins_and_knobs(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "linear" in out and "full" in out and "training keys" in out and "lr = 0.001" in out


def test_tasks_lists_19_with_classes(capsys):
    assert main(["tasks", "--suite", "vtab1k"]) == 0
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in capsys.readouterr().out.splitlines()
            if line.startswith("│")]
    table = {r[0]: (r[1], int(r[2])) for r in rows}
    assert len(table) == 19
    assert table["cifar100"] == ("natural", 100) and table["sun397"] == ("natural", 397)
    assert table["patch_camelyon"] == ("specialized", 2) and table["smallnorb_ele"] == ("structured", 9)
    assert table["oxford_flowers102"] == ("natural", 102) and table["kitti"] == ("structured", 4)


def test_inspect_full_vit_b16_json(capsys):
    assert main(["inspect", "--method", "full", "--backbone", "vit_base_patch16_224.orig_in21k", "--weights", "none",
                 "--num-classes", "100", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["trainable_params"] == 85_875_556
    assert abs(info["gflops"] - 35.1) <= 0.2


def test_run_writes_four_records_and_resumes(vtab_root, tmp_path, capsys):
    out = tmp_path / "runs"
    argv = RUN + ["--methods", "linear,full", "--tasks", "cifar100,eurosat", "--data-root", str(vtab_root),
                  "--out", str(out)]
    assert main(argv) == 0
    recs = _records(out)
    assert len(recs) == 4 and {r["status"] for r in recs} == {"complete"}
    assert {(r["method"], r["task"]) for r in recs} == {(m, t) for m in ("linear", "full")
                                                         for t in ("cifar100", "eurosat")}
    r = recs[0]
    for key in ("test_top1", "trainable_params", "stored_per_task_params", "head_params", "total_params", "gflops",
                "train_img_per_s", "infer_img_per_s", "peak_mem_bytes", "wall_s"):
        assert key in r["metrics"], key
    windows = r["metrics"]["throughput_windows"]  # the median of the timing windows is the run's figure
    assert statistics.median(windows["infer"]) == r["metrics"]["infer_img_per_s"] and len(windows["train"]) == 5
    assert r["backbone"]["weights"] == "none" and r["config"]["train"]["epochs"] == 2
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.json")}
    capsys.readouterr()
    assert main(argv) == 0  # the same command again trains nothing
    assert "4 skipped" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.json")} == mtimes
    # changing a setting makes a new run
    assert main(argv[:-4] + ["--methods", "linear", "--tasks", "eurosat", "--set", "lr=0.01",
                             "--data-root", str(vtab_root), "--out", str(out)]) == 0
    assert len(_records(out)) == 5
    # the report written inside the runs folder is not mistaken for a (foreign) record
    assert main(["report", str(out)]) == 0
    assert (out / "report" / "summary.md").is_file() and load_records(out)[1] == []


def _fails(argv, capsys, match: str) -> None:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.startswith("error: ") and match in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("breakage,match", [
    ("missing_image", "test.txt:1: missing image"),
    ("label", "label 10 outside [0, 10)"),
    ("split_file", "val200.txt: missing split file"),
])
def test_broken_data_one_clear_error_no_record(vtab_root, tmp_path, capsys, breakage, match):
    folder = vtab_root / "eurosat"
    if breakage == "missing_image":
        (folder / (folder / "test.txt").read_text().split()[0]).unlink()
    elif breakage == "label":
        lines = (folder / "test.txt").read_text().splitlines()
        lines[0] = lines[0].rsplit(" ", 1)[0] + " 10"
        (folder / "test.txt").write_text("\n".join(lines) + "\n")
    else:
        (folder / "val200.txt").unlink()
    out = tmp_path / "runs"
    _fails(RUN + ["--methods", "linear", "--tasks", "eurosat", "--data-root", str(vtab_root), "--out", str(out)],
           capsys, match)
    assert _records(out) == []


@pytest.mark.parametrize("args,match", [
    (["--methods", "vtp", "--tasks", "eurosat"], "unknown method 'vtp'; did you mean 'vpt'"),  # 'vpt' is a family
    (["--methods", "linear", "--tasks", "eurosta"], "unknown task 'eurosta'"),
    (["--methods", "linear", "--tasks", "eurosat", "--set", "lr"], "--set lr: expected KEY=VALUE"),
    (["--methods", "linear", "--tasks", "eurosat", "--set", "lrr=1"], "unknown training key 'lrr'"),
    (["--methods", "linear", "--tasks", "eurosat", "--set", "epochs=two"], "'two' is not a valid int"),
])
def test_bad_names_and_options(vtab_root, tmp_path, capsys, args, match):
    out = tmp_path / "runs"
    _fails(RUN + args + ["--data-root", str(vtab_root), "--out", str(out)], capsys, match)
    assert _records(out) == []


def test_unreadable_checkpoint(vtab_root, tmp_path, capsys):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"\x00garbage")
    out = tmp_path / "runs"
    argv = [a if a != "none" else str(bad) for a in RUN]
    _fails(argv + ["--methods", "linear", "--tasks", "eurosat", "--data-root", str(vtab_root), "--out", str(out)],
           capsys, "w.safetensors: unreadable checkpoint")
    assert _records(out) == []


def test_missing_data_root(tmp_path, capsys):
    _fails(RUN + ["--methods", "linear", "--tasks", "eurosat", "--data-root", str(tmp_path / "nope")], capsys,
           "no such folder")


def test_make_synthetic_like_vtab1k(tmp_path):
    from PIL import Image

    from peftbench.data.splits import read_task_lists
    from peftbench.data.tasks import resolve_tasks

    assert main(["make-synthetic", "--out", str(tmp_path), "--tasks", "eurosat,clevr_count", "--scale", "0.005"]) == 0
    for task in resolve_tasks("eurosat,clevr_count"):
        lists = read_task_lists(tmp_path, task)
        assert len(lists.splits["train800"]) == 4 and len(lists.splits["test"]) == round(task.test_size * 0.005)
        first = lists.splits["test"][0].path
        assert first.suffix == ".jpg"
        assert Image.open(first).size == task.native_size
    assert main(["make-synthetic", "--out", str(tmp_path), "--scale", "2"]) == 2


def test_synthetic_dmlab_and_clevr_are_landscape_like_the_real_frames(tmp_path):
    """VTAB's dmlab frames are 360 high, 480 wide; clevr's 320 high, 480 wide (PIL sizes are width, height)."""
    from PIL import Image

    assert main(["make-synthetic", "--out", str(tmp_path), "--tasks", "dmlab,clevr_dist", "--scale", "0.0002"]) == 0
    assert Image.open(next((tmp_path / "dmlab" / "images").rglob("*.jpg"))).size == (480, 360)
    assert Image.open(next((tmp_path / "clevr_dist" / "images").rglob("*.jpg"))).size == (480, 320)


def test_suite_recipes_ship_inside_the_package():
    """Non-editable installs get the recipes too: they are package data, not files of the checkout."""
    import peftbench
    from peftbench.sweep.resolve import default_suite_file, load_suite

    package = Path(peftbench.__file__).resolve().parent
    for suite in ("mini", "vtab1k"):
        assert default_suite_file(suite).parent == package / "suites"
    assert load_suite("mini", None).backbone == "vit_mini_patch8_32"
    assert default_suite_file("no_such_suite") is None
