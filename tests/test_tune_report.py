"""`tune` and the tuned report: typed --set pins, headers, weights, summary.json, failed methods,
agreement after a re-run with another budget, damaged and newer-schema records.

Real tunes use the linear probe on the mini suite's digits task (one epoch, cached features): seconds each.
The report-only checks use hand-made records.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from peftbench.cli import main
from peftbench.config import resolve
from peftbench.errors import UsageError
from peftbench.records import load_records, record_path, write_record
from peftbench.registry import get_method
from peftbench.report import write_report
from peftbench.report.markdown import render_markdown
from peftbench.report.tuned import render_tuned, tuned_rows, tuned_tables
from peftbench.sweep.request import Reporter, SweepRequest
from peftbench.sweep.resolve import load_suite
from peftbench.tune import TuneRequest, grid, run_tune

TINY = ["epochs=1", "warmup_epochs=0", "bench_steps=0"]
CLI_TINY = ["--methods", "linear", "--tasks", "digits", "--budget", "1", "--final-seeds", "1", "--no-report",
            *[a for s in TINY for a in ("--set", s)]]


class Said(Reporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def tune(out: Path, budget: int, sets=(), methods=("linear",), reporter: Reporter | None = None):
    sweep = SweepRequest(methods=list(methods), tasks="digits", suite="mini", out=out, sets=[*TINY, *sets])
    return run_tune(TuneRequest(sweep, budget=budget, final_seeds=1, poll_s=0.1), reporter)


def role(out: Path, name: str) -> list[dict]:
    return [r for r in load_records(out)[0] if r["tune"]["role"] == name]


def rewrite(rec: dict, **changes) -> None:
    path = Path(rec.pop("_path"))
    rec.update(changes)
    write_record(path, rec)


def test_report_agrees_with_tune_after_a_rerun_with_a_smaller_budget(tmp_path):
    """budget 1 picks A; budget 2 adds B, which wins; budget 1 again picks A (its final is reused): the
    report must show A, as the last tune said, not B, the best of every trial on disk."""
    out = tmp_path / "runs"
    first = tune(out, 1, sets=["weight_decay=0.0001"])
    a = first.chosen[("linear", "digits")]
    (trial_a,) = role(out, "trial")
    rewrite(trial_a, metrics={**trial_a["metrics"], "val_top1": 0.0})  # B, whatever it scores, beats it
    second = tune(out, 2, sets=["weight_decay=0.0001"])
    b = second.chosen[("linear", "digits")]
    assert b["run_id"] != a["run_id"]  # the precondition: the larger budget chose another trial
    said = Said()
    third = tune(out, 1, sets=["weight_decay=0.0001"], reporter=said)
    assert third.chosen[("linear", "digits")]["run_id"] == a["run_id"]
    assert third.finals.skipped and not third.finals.written  # A's final from the first tune was reused
    assert any(line.startswith("linear/digits: chose ") for line in said.lines)

    (table,) = tuned_tables(load_records(out)[0])
    cell = table.cells[("linear", "digits")]
    assert cell.chosen == a["tune"]["search"] and cell.trials == 1
    finals = {r["tune"]["grid_index"]: r for r in role(out, "final")}
    assert cell.test == {0: finals[a["tune"]["grid_index"]]["metrics"]["test_top1"]}
    # --set weight_decay (a searched key) was applied to every trial, not dropped for the grid's values
    for rec in role(out, "trial") + role(out, "final"):
        assert rec["tune"]["search"]["weight_decay"] == 0.0001 == rec["config"]["train"]["weight_decay"]


def test_tune_header_counts_trials_and_final_runs(tmp_path):
    said = Said()
    # lr and weight_decay pinned: linear's space has one configuration, fewer than the budget 3
    result = tune(tmp_path / "runs", 3, sets=["lr=0.01", "weight_decay=0.0"], reporter=said)
    header = next(line for line in said.lines if line.startswith("tune: "))
    assert header.startswith("tune: 1 trial(s) (3 per method and task; fewer for linear (1), "), header
    assert "then up to 1 final run(s) (1 seed(s) x 1 method-task pair(s))" in header
    assert "fixed by --set: lr=0.01, weight_decay=0.0" in header
    assert result.trials.statuses == {"complete": 1} and result.finals.statuses == {"complete": 1}
    sweep_lines = [line for line in said.lines if " method(s) x " in line]
    assert all(line.endswith("x 1 seed(s) = 1 runs, 0 already done") for line in sweep_lines), sweep_lines


def test_tune_refuses_set_protocol():
    sweep = SweepRequest(methods=["linear"], tasks="digits", suite="mini", sets=["protocol=final"])
    with pytest.raises(UsageError, match="--set protocol: tune sets it itself"):
        run_tune(TuneRequest(sweep, budget=1))


def test_a_damaged_tune_block_is_named_skipped_and_run_again(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["tune", "--out", str(out), *CLI_TINY]) == 0
    (trial,) = role(out, "trial")
    path = trial["_path"]
    rewrite(trial, tune={"role": "trial"})  # the searched values are gone
    records, problems = load_records(out)
    assert len(records) == 1 and len(problems) == 1 and path in problems[0] and "tune.search" in problems[0]
    capsys.readouterr()
    assert main(["tune", "--out", str(out), *CLI_TINY]) == 0
    text = capsys.readouterr().out
    assert f"warning: {path}: not a peftbench record (tune.search must be an object" in text.replace("\n", "")
    assert "trials: 1 complete" in text  # run again, and its record is whole again
    records, problems = load_records(out)
    assert problems == [] and len(records) == 2


def test_a_record_of_a_newer_schema_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["tune", "--out", str(out), *CLI_TINY]) == 0
    (final,) = role(out, "final")
    path = final["_path"]
    rewrite(final, schema=99)
    before = Path(path).read_text()
    capsys.readouterr()
    assert main(["tune", "--out", str(out), *CLI_TINY]) != 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and path in err[0] and "newer peftbench (record schema 99" in err[0], err
    assert Path(path).read_text() == before  # not overwritten by a version that cannot read it
    _, problems = load_records(out)
    assert len(problems) == 1 and "record schema 99" in problems[0]


# ---------------------------------------------------------------------------------------------------
# the report from hand-made records


def record(method: str, role_: str, run_id: str, *, val=None, test=None, status="complete", search=None,
           weights="none", seed=0, trials=None) -> dict:
    protocol = "val" if role_ == "trial" else "final"
    metrics = {} if status != "complete" else {("val_top1" if role_ == "trial" else "test_top1"): val or test,
                                               "trainable_params": 100, "precision": "fp32", "wall_s": {"train": 1.0}}
    tune_block = {"role": role_, "search": search or {"lr": 0.001}, "grid_index": 0, "grid_size": 4}
    if trials is not None:
        tune_block["trials"] = trials
    return {"tool": "peftbench", "schema": 1, "run_id": run_id, "status": status,
            "reason": None if status == "complete" else "ValueError: boom", "method": method, "task": "digits",
            "suite": "mini", "seed": seed, "created": "2026-01-01T00:00:00+00:00",
            "config": {"train": {"protocol": protocol, "epochs": 1, "precision": "auto"}, "method": {}},
            "backbone": {"name": "vit_mini_patch8_32", "weights": weights, "checksum": "c" * 64, "img_size": [32, 32]},
            "data": {"checksum": "d"}, "metrics": metrics, "provenance": {"device": "cpu"}, "tune": tune_block}


def tuned_runs() -> list[dict]:
    return [record("bitfit", "trial", "t1", val=40.0), record("bitfit", "final", "f1", test=42.0, trials=["t1"]),
            record("ssf", "trial", "t2", status="failed"), record("ssf", "trial", "t3", status="failed")]


def test_tuned_table_flags_random_init_and_lists_a_method_whose_trials_all_failed_as_a_line():
    (table,) = tuned_tables(tuned_runs())
    text = "\n".join(render_tuned([table]))
    assert "### Tuned table 1 — ⚠ RANDOM-INIT BACKBONE (weights: none) — vit_mini_patch8_32 (weights none)" in text
    assert "| bitfit | 42.00 | 42.00 |" in text
    assert "| ssf |" not in text  # no row of dashes for it
    assert "- ssf: no trial completed with a val200 accuracy on any task (2 failed); no final run" in text
    rows = tuned_rows([table])
    assert {(r["method"], r["weights"], r["random_init"]) for r in rows} == {("bitfit", "none", True),
                                                                           ("ssf", "none", True)}
    (only_failed,) = tuned_tables(tuned_runs()[2:])
    text = "\n".join(render_tuned([only_failed]))
    assert "| method |" not in text and "- ssf: no trial completed" in text  # a line, no table at all


def test_pretrained_tuned_table_names_its_weights_without_the_flag():
    search = {"lr": 0.001, "targets": ["q", "k", "v"]}
    runs = [record("lora", "trial", "t1", val=40.0, weights="/x/mini_vit.safetensors", search=search),
            record("lora", "final", "f1", test=42.0, weights="/x/mini_vit.safetensors", search=search)]
    (table,) = tuned_tables(runs)
    assert table.title().startswith("vit_mini_patch8_32 (weights mini_vit.safetensors) · 32×32 px")
    assert tuned_rows([table])[0]["weights"] == "mini_vit.safetensors"
    assert tuned_rows([table])[0]["chosen"] == "lr=0.001;targets=q,k,v"  # as written in --set
    assert "| lora | digits | lr=0.001, targets=q,k,v | 40.00 |" in "\n".join(render_tuned([table]))


def test_report_header_counts_tuned_tables_and_summary_json_holds_them(tmp_path):
    runs = tmp_path / "runs"
    for rec in tuned_runs():
        write_record(record_path(runs, rec), rec)
    write_report(runs, tmp_path / "report")
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "in 0 fixed-recipe table(s) and 1 tuned table(s)" in md and "0 table(s)" not in md.replace("e(s)", "")
    data = json.loads((tmp_path / "report" / "summary.json").read_text())
    (tuned,) = data["tuned"]
    assert tuned["random_init"] is True and tuned["weights"] == ["none"]
    cells = {c["method"]: c for c in tuned["cells"]}
    assert cells["bitfit"]["chosen"] == {"lr": 0.001} and cells["bitfit"]["test"]["by_seed"] == {"0": 42.0}
    assert cells["ssf"]["trial_statuses"] == {"failed": 2} and "ssf" in tuned["all_trials_failed"]
    csv = (tmp_path / "report" / "tuned.csv").read_text().splitlines()
    assert csv[0].startswith("table,backbone,weights,random_init,")
    # no tuned table: the header wording is unchanged
    assert "in 0 table(s)" in render_markdown([], tuned_runs(), [], runs, generated="now")


def test_search_values_from_a_suite_file_reach_the_method_typed():
    """Lists in a suite file (YAML) become tuples: hashable candidates, and resolved without any text."""
    candidates = grid({"lr": [0.01], "targets": [["q", "v"], ["q", "k", "v"]]})
    assert len(set(candidates)) == 2
    sets = candidates[1].sets("lora")
    assert sets == ((None, "lr", 0.01), ("lora", "targets", ("q", "k", "v")))
    tcfg, mcfg, _ = resolve(get_method("lora"), "digits", load_suite("mini", None), list(sets))
    assert tcfg.lr == 0.01 and tuple(mcfg.targets) == ("q", "k", "v")


def _tuned_two_tasks(seeds: int) -> list[dict]:
    """lora far above bitfit on digits, level with it on texture; ``seeds`` final seeds each."""
    scores = {("lora", "digits"): [60.0, 61.0, 59.5], ("bitfit", "digits"): [40.0, 41.2, 39.6],
              ("lora", "texture"): [50.0, 51.0, 49.0], ("bitfit", "texture"): [49.5, 50.8, 49.6]}
    runs = []
    for (method, task), tests in scores.items():
        trial = record(method, "trial", f"t-{method}-{task}", val=tests[0])
        finals = [record(method, "final", f"f-{method}-{task}-{s}", test=tests[s], seed=s, trials=[trial["run_id"]])
                  for s in range(seeds)]
        for r in (trial, *finals):
            r["task"] = task
        runs += [trial, *finals]
    return runs


def test_tuned_table_bolds_the_methods_tied_with_the_best_and_gives_the_mean_its_interval():
    text = "\n".join(render_tuned(tuned_tables(_tuned_two_tasks(3))))
    # digits: bitfit is 20 points below with three seeds (not bold); texture: level (both bold); the mean over
    # two tasks cannot be separated by the signed-rank test (both bold), and carries a bootstrap interval
    interval = r" \[[\d.]+, [\d.]+\]"
    lora = r"\| lora \| \*\*60\.17 ± 0\.76\*\* \| \*\*50\.00 ± 1\.00\*\* \| \*\*55\.08"
    assert re.search(lora + interval + r"\*\* \|", text), text
    bitfit = r"\| bitfit \| 40\.27 ± 0\.83 \| \*\*49\.97 ± 0\.72\*\* \| \*\*45\.12"
    assert re.search(bitfit + interval + r"\*\* \|", text), text
    assert "Bold: tied with the best of the column" in text and "One seed per run" not in text


def test_tuned_table_with_one_final_seed_bolds_nothing_in_a_task_and_says_why():
    text = "\n".join(render_tuned(tuned_tables(_tuned_two_tasks(1))))
    assert "| lora | 60.00 | 50.00 |" in text and "| bitfit | 40.00 | 49.50 |" in text  # no interval, no bold
    assert "tune with `--final-seeds 3`" in text


def test_compare_and_pairwise_read_the_tuned_finals(tmp_path):
    from peftbench.report.compare import compare_lines, of_tuned

    runs = _tuned_two_tasks(3)
    (table,) = tuned_tables(runs)
    lines = compare_lines([of_tuned(table, 1)], "lora", "bitfit")
    assert lines[0].startswith("Tuned table 1: ") and lines[0].endswith("(final runs of the chosen configurations)")
    assert any(line.split()[:2] == ["digits", "+19.9"] for line in lines), lines
    assert lines[-1].startswith("Verdict: no detectable difference at 3 seed(s) and 2 tasks (too few tasks to tell")
    out = tmp_path / "runs"
    for rec in runs:
        write_record(record_path(out, rec), rec)
    assert main(["compare", "lora", "bitfit", "--runs", str(out)]) == 0
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    pairs = (tmp_path / "rep" / "pairwise.csv").read_text().splitlines()
    assert len(pairs) == 2 and pairs[1].startswith("tuned 1,bitfit,lora,2,3,")
