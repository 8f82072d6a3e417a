"""Option values argparse accepts but no command can use: one `error:` line each, exit 2, nothing started."""

from __future__ import annotations

import pytest

from peftbench.cli import main
from peftbench.data.tasks import known_suites

UNKNOWN_SUITE = f"error: unknown suite 'nope' (suites: {', '.join(known_suites())})"

CASES = [
    (["inspect", "--method", "linear", "--img-size", "0"], "error: --img-size 0: must be a positive number of pixels"),
    (["inspect", "--method", "linear", "--img-size", "-32"],
     "error: --img-size -32: must be a positive number of pixels"),
    (["inspect", "--method", "linear", "--img-size", "4"],
     "error: --img-size 4: smaller than one 8x8 patch of --backbone vit_mini_patch8_32; give at least 8 (default: "
     "the model's own size)"),
    (["inspect", "--method", "linear", "--num-classes", "0"], "error: --num-classes 0: must be at least 1"),
    (["inspect", "--method", "linear", "--num-classes", "-3"], "error: --num-classes -3: must be at least 1"),
    (["inspect", "--method", "linear", "--suite", "nope"], UNKNOWN_SUITE),
    (["methods", "--suite", "nope"], UNKNOWN_SUITE),
    (["run", "--methods", ""], "error: --methods '': no method given (a comma list of methods or families, or 'all')"),
    (["tune", "--methods", " , "],
     "error: --methods '': no method given (a comma list of methods or families, or 'all')"),
    (["run", "--seeds", ""], "error: --seeds '': no seed given (a comma list of integers, e.g. 0,1,2)"),
    (["run", "--seeds", "0,1,0"],
     "error: --seeds 0,1,0: seed 0 given more than once (each seed is one run)"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_value_is_one_error_line(argv, message, tmp_path, capsys):
    out = tmp_path / "runs"
    extra = ["--out", str(out)] if argv[0] in ("run", "tune") else []
    assert main([*argv, *extra]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == message
    assert not out.exists()


def test_img_size_smaller_than_a_patch_is_refused_before_a_sweep_starts(vtab_root, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["run", "--methods", "linear", "--tasks", "cifar", "--data-root", str(vtab_root), "--backbone",
                 "test_vit", "--weights", "none", "--img-size", "15", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == ("error: --img-size 15: smaller than one 16x16 patch of --backbone "
                                               "test_vit; give at least 16 (default: the model's own size)")
    assert not list(out.rglob("*.json"))
