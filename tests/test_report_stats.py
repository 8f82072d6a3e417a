"""The statistics in the report: `peftbench compare`, pairwise.csv, the CD diagram, --latex, the one-seed note."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from peftbench.cli import main
from peftbench.data.tasks import suite_tasks
from peftbench.records import record_path, write_record

TASKS = [t.name for t in suite_tasks("vtab1k")]
SHIFT = {"linear": 0.0, "vpt_deep": 3.0, "ship": 3.0, "full": 3.1}


def _record(method: str, task: str, seed: int, acc: float) -> dict:
    return {"run_id": f"{method}-{task}-{seed}", "schema": 1, "status": "complete", "reason": None,
            "method": method, "task": task, "suite": "vtab1k", "seed": seed, "created": "2026-01-01T00:00:00Z",
            "config": {"train": {"protocol": "final", "epochs": 100, "precision": "auto"}, "method": {}},
            "backbone": {"name": "vit_base_patch16_224.orig_in21k", "weights": "pretrained", "checksum": "sha256:a",
                         "img_size": [224, 224]},
            "data": {"checksum": "d"}, "provenance": {"device": "cpu"},
            "metrics": {"test_top1": acc, "trainable_params": 100_000, "head_params": 1000, "gflops": 35.0,
                        "precision": "fp32"}}


def _write_runs(root: Path, seeds: range) -> Path:
    rng = np.random.default_rng(5)
    base = rng.uniform(30, 90, len(TASKS))
    for method, shift in SHIFT.items():
        for i, task in enumerate(TASKS):
            for seed in seeds:
                rec = _record(method, task, seed, float(base[i] + shift + rng.normal(0, 0.8)))
                write_record(record_path(root, rec), rec)
    return root


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory) -> Path:
    return _write_runs(tmp_path_factory.mktemp("runs3"), range(3))


def test_compare_prints_tasks_probability_and_verdict(three_seeds, capsys):
    assert main(["compare", "ship", "vpt_deep", "--runs", str(three_seeds)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sum(line.startswith(f"  {t} ") for line in out for t in TASKS) == 19
    assert any(line.startswith("P(ship > vpt_deep) = ") and "[" in line for line in out)
    assert out[-1] == "Verdict: no detectable difference at 3 seed(s) and 19 tasks"  # the same planted shift
    assert main(["compare", "ship", "linear", "--runs", str(three_seeds)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "Verdict: ship better"  # planted 3 points


def test_compare_bad_method_is_one_line(three_seeds, capsys):
    assert main(["compare", "ship", "vpt_dep", "--runs", str(three_seeds)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: compare: no run of 'vpt_dep'; methods with records: full, linear, ship, vpt_deep; "
                   "did you mean 'vpt_deep'?"]


def test_report_writes_pairwise_cd_diagram_and_intervals(three_seeds, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(three_seeds), "--out", str(out)]) == 0
    pairs = list(csv.DictReader((out / "pairwise.csv").open()))
    assert len(pairs) == 6  # 4 methods → 6 pairs
    by_pair = {(r["a"], r["b"]): r for r in pairs}
    assert by_pair[("linear", "ship")]["verdict"] == "ship better"
    assert by_pair[("ship", "vpt_deep")]["verdict"].startswith("no detectable difference")
    assert (out / "critical_difference.png").stat().st_size > 0 and (out / "critical_difference.svg").exists()
    assert "Friedman" in (out / "critical_difference.svg").read_text()
    md = (out / "summary.md").read_text()
    linear = next(ln for ln in md.splitlines() if ln.startswith("| linear |"))
    averages = linear.split(" | ")[-10:-8]  # Mean (19 tasks), Mean of 3 group means: intervals, not bold
    assert all(" [" in cell and "**" not in cell for cell in averages), averages
    assert "Bold: tied with the best of the column" in md


def test_one_seed_report_says_so_once(tmp_path, capsys):
    runs = _write_runs(tmp_path / "runs1", range(1))
    assert main(["report", str(runs), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert out.count("One seed per run") == 1
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert "One seed per run" in md and " [" not in next(ln for ln in md.splitlines() if ln.startswith("| ship |"))


def test_latex_has_the_papers_layout_and_compiles(three_seeds, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(three_seeds), "--out", str(out), "--latex"]) == 0
    tex = (out / "summary.tex").read_text()
    assert r"\multicolumn{7}{c}{Natural} & \multicolumn{4}{c}{Specialized} & \multicolumn{8}{c}{Structured}" in tex
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    rows = [ln for ln in tex.splitlines() if ln.endswith(r"\\") and ln.split(" & ")[0].replace("\\_", "_") in SHIFT]
    assert len(rows) == 4 and all(len(r.split(" & ")) == 1 + 19 + 3 + 2 + 1 for r in rows)
    assert r"\textbf{" in tex and r"$\pm$" in tex
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed: the LaTeX was checked for structure only "
                    "(CI installs texlive-latex-recommended)")
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs,graphicx}\n\\begin{document}\n"
                   f"\\input{{{out / 'summary.tex'}}}\n\\end{{document}}\n")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000


def test_speed_spread_and_ties_from_the_runs():
    from peftbench.report.aggregate import speed_ties, summary_tables

    records = []
    speeds = {"linear": [3000, 3400, 2600], "lora": [3100, 2500, 3500], "vpt_deep": [1500, 1510, 1490]}
    for method, rates in speeds.items():
        for seed, rate in enumerate(rates):
            rec = _record(method, "cifar100", seed, 50.0 + seed)
            rec["metrics"] |= {"infer_img_per_s": float(rate), "train_img_per_s": 100.0}
            records.append(rec)
    (table,) = summary_tables(records)
    costs = {r.method: r.costs for r in table.rows}
    assert costs["linear"]["infer_img_per_s"] == pytest.approx(3000.0)
    assert costs["linear"]["infer_img_per_s_std"] == pytest.approx(400.0)  # sample std of 3000, 3400, 2600
    assert costs["vpt_deep"]["infer_img_per_s_std"] == pytest.approx(10.0)
    assert costs["linear"]["train_img_per_s_std"] == 0.0
    # linear (3000 ± 400) and lora (3033 ± 503) overlap; vpt_deep (1500 ± 10) is apart
    assert speed_ties(table.rows) == [["linear", "lora"]]
    from peftbench.report.markdown import markdown_table, render_markdown

    row = next(ln for ln in markdown_table(table) if ln.startswith("| linear |"))
    assert "3,000 ± 400" in row
    md = render_markdown([table], records, [], Path("runs"))
    assert "Inference img/s within one another's spread (differences that are measurement noise, not a " \
           "ranking): linear, lora." in md


def test_throughput_is_timed_in_windows():
    import torch

    from peftbench.measure import TIMING_WINDOWS, throughput

    calls = []
    rates = throughput(lambda x, y: calls.append(x.shape[0]), 4, (8, 8), 3, torch.device("cpu"), steps=10, warmup=2)
    assert len(rates) == TIMING_WINDOWS and all(r > 0 for r in rates)
    assert len(calls) == 2 + TIMING_WINDOWS * (10 // TIMING_WINDOWS)  # warm-up, then the windows
