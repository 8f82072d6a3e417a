"""`peftbench tune`: protocol=val trials, equal budgets, selection blind to test, resume, concurrent workers.

Runs use timm's ``test_vit`` at 32 px, random init, one epoch, on the generated ``vtab_root`` data.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from peftbench.cli import main
from peftbench.config import resolve
from peftbench.data.images import Batches
from peftbench.records import load_records
from peftbench.registry import available_methods, get_method
from peftbench.selection import val_top1
from peftbench.sweep import plan as sweep_plan
from peftbench.sweep import run as sweep_run
from peftbench.sweep.request import SweepRequest
from peftbench.sweep.resolve import load_suite
from peftbench.tune import TuneRequest, plan_trials, run_tune

FAST = ["epochs=1", "bench_steps=0", "batch_size=8", "eval_batch_size=8"]
BACKBONE = ["--backbone", "test_vit", "--weights", "none", "--img-size", "32"]
# a small search space: 3 lr x 1 wd for every method, 2 prompt lengths for VPT (grid 6 > budget 2)
SPACE = """suite: vtab1k
defaults: {epochs: 1, batch_size: 8, eval_batch_size: 8, bench_steps: 0, warmup_epochs: 0}
methods: {vpt_shallow: {prompt_length: 2}}
tune:
  budget: 2
  grid: {lr: [1.0e-3, 1.0e-2, 1.0e-1], weight_decay: [0.0]}
  methods: {vpt_shallow: {prompt_length: [1, 4]}}
"""



@pytest.fixture
def suite_file(tmp_path: Path) -> Path:
    path = tmp_path / "tune.yaml"
    path.write_text(SPACE)
    return path


def tune(root: Path, out: Path, suite_file: Path, methods=("linear", "vpt_shallow"), budget=None, seeds=1, **kw):
    sweep = SweepRequest(methods=list(methods), tasks="cifar,eurosat", data_root=root, out=out, suite_file=suite_file,
                         backbone="test_vit", weights="none", img_size=32, **kw)
    return run_tune(TuneRequest(sweep, budget=budget, final_seeds=seeds, poll_s=0.2))


def by_role(out: Path) -> dict[str, list[dict]]:
    records, problems = load_records(out)
    assert problems == []
    roles: dict[str, list[dict]] = {"trial": [], "final": []}
    for rec in records:
        roles[rec["tune"]["role"]].append(rec)
    return roles


class SplitReads:
    """Counts every decode of a split file and every pass over a decoded split."""

    def __init__(self, monkeypatch):
        self.decoded: list[str] = []
        self.passes: dict[str, int] = {}
        self.tags: dict[int, str] = {}
        real_load, real_iterate = sweep_plan.load_split, Batches.iterate

        def load_split(entries, target, interpolation, where, *a, **k):
            split = Path(where).stem
            self.decoded.append(split)
            data = real_load(entries, target, interpolation, where, *a, **k)
            self.tags[id(data)] = split
            return data

        def iterate(batches, *a, **k):
            split = self.tags.get(id(batches.data), "?")
            self.passes[split] = self.passes.get(split, 0) + 1
            return real_iterate(batches, *a, **k)

        monkeypatch.setattr(sweep_plan, "load_split", load_split)
        monkeypatch.setattr(Batches, "iterate", iterate)


def test_tune_on_a_vtab_folder_writes_trials_finals_and_a_tuned_report(vtab_root, tmp_path, capsys):
    """Acceptance: `peftbench tune` with --data-root and no --suite (= vtab1k) on the quirky VTAB layout."""
    out = tmp_path / "runs"
    code = main(["tune", "--methods", "linear", "--tasks", "cifar,eurosat", "--data-root", str(vtab_root),
                 "--out", str(out), *BACKBONE, "--budget", "2", "--final-seeds", "2",
                 *[a for s in FAST for a in ("--set", s)]])
    text = capsys.readouterr().out
    assert code == 0, text
    roles = by_role(out)
    assert len(roles["trial"]) == 2 * 2 and len(roles["final"]) == 2 * 2
    for rec in roles["trial"]:
        assert rec["suite"] == "vtab1k" and rec["config"]["train"]["protocol"] == "val"
        assert rec["data"]["eval_split"] == "val200" and "val_top1" in rec["metrics"]
        assert "test_top1" not in rec["metrics"]
    for rec in roles["final"]:
        assert rec["config"]["train"]["protocol"] == "final" and rec["metrics"]["test_top1"] is not None
    md = (out / "report" / "summary.md").read_text()
    assert "## Tuned (peftbench tune)" in md
    chosen = {(r["task"], json.dumps(r["tune"]["search"], sort_keys=True)) for r in roles["final"]}
    for task, search in chosen:
        values = ", ".join(f"{k}={v:g}" for k, v in json.loads(search).items())
        assert f"| linear | {task} | {values} |" in md
    assert "cifar100" in (out / "report" / "tuned.csv").read_text()
    # tune records never enter the fixed-recipe tables
    assert "## Table 1" not in md


def test_trials_never_read_the_test_split_and_each_final_reads_it_once(vtab_root, tmp_path, suite_file,
                                                                       monkeypatch):
    counter = SplitReads(monkeypatch)
    real_until_done = __import__("peftbench.tune", fromlist=["_until_done"])._until_done
    seen_during_trials: list[tuple[list[str], dict]] = []

    def until_done(req, reporter, poll_s):
        result = real_until_done(req, reporter, poll_s)
        if all(p.role == "trial" for p in req.points):
            seen_during_trials.append((list(counter.decoded), dict(counter.passes)))
        return result

    monkeypatch.setattr("peftbench.tune._until_done", until_done)
    result = tune(vtab_root, tmp_path / "runs", suite_file, seeds=2)
    (decoded, passes), = seen_during_trials
    assert "test" not in decoded and "test" not in passes  # zero reads while tuning
    finals = by_role(tmp_path / "runs")["final"]
    assert len(finals) == 2 * 2 * 2 and result.finals.statuses == {"complete": 8}
    assert counter.passes["test"] == len(finals)  # exactly one pass per final run


def test_poisoned_test_labels_do_not_change_the_choice(vtab_root, tmp_path, suite_file):
    first = tune(vtab_root, tmp_path / "a", suite_file)
    for task_dir in vtab_root.iterdir():  # shift every test label: a different test set, same images
        lines = (task_dir / "test.txt").read_text().splitlines()
        classes = 100 if task_dir.name == "cifar" else 10
        poisoned = [f"{p} {(int(y) + 1) % classes}" for p, y in (ln.rsplit(maxsplit=1) for ln in lines if ln)]
        (task_dir / "test.txt").write_text("\n".join(poisoned) + "\n")
    second = tune(vtab_root, tmp_path / "b", suite_file)
    pick = lambda res: {k: (v["tune"]["search"], val_top1(v)) for k, v in res.chosen.items()}
    assert pick(first) == pick(second)
    tests = lambda out: sorted((r["method"], r["task"], r["metrics"]["test_top1"]) for r in by_role(out)["final"])
    assert tests(tmp_path / "a") != tests(tmp_path / "b")  # the poison did reach the finals


def test_every_method_gets_the_same_number_of_trials(vtab_root, tmp_path, suite_file):
    tune(vtab_root, tmp_path / "runs", suite_file)
    counts: dict[tuple[str, str], int] = {}
    for rec in by_role(tmp_path / "runs")["trial"]:
        counts[(rec["method"], rec["task"])] = counts.get((rec["method"], rec["task"]), 0) + 1
    assert len(counts) == 4 and set(counts.values()) == {2}, counts
    # the shipped search spaces: every registered method has at least the vtab1k budget
    suite = load_suite("vtab1k", None)
    for name in available_methods():
        trials, size = plan_trials(get_method(name), suite, suite.tune.budget, 0)
        assert len(trials) == suite.tune.budget <= size, name


def test_a_larger_budget_keeps_the_earlier_trials():
    suite = load_suite("vtab1k", None)
    for name in ("linear", "vpt_deep", "ship"):
        small, _ = plan_trials(get_method(name), suite, 4, 0)
        large, _ = plan_trials(get_method(name), suite, 8, 0)
        assert set(small) < set(large)
        assert plan_trials(get_method(name), suite, 4, 0)[0] == small  # deterministic


def test_a_half_done_tune_resumes_and_a_larger_budget_only_adds(vtab_root, tmp_path, suite_file, monkeypatch):
    calls: list[str] = []
    real = sweep_run.execute_run

    def execute_run(job, *a, **k):
        calls.append(f"{job.spec.name}/{job.task.name}/{job.tcfg.protocol}")
        if len(calls) == 3 and crash[0]:
            raise KeyboardInterrupt
        return real(job, *a, **k)

    crash = [True]
    monkeypatch.setattr(sweep_run, "execute_run", execute_run)
    with pytest.raises(KeyboardInterrupt):
        tune(vtab_root, tmp_path / "runs", suite_file, budget=2)
    assert len(by_role(tmp_path / "runs")["trial"]) == 2
    crash[0], calls[:] = False, []
    tune(vtab_root, tmp_path / "runs", suite_file, budget=2)
    assert len(calls) == 2 * 2 * 2 - 2 + 4  # the two done trials are not run again; then 4 finals
    calls[:] = []
    result = tune(vtab_root, tmp_path / "runs", suite_file, budget=3)
    assert sum(c.endswith("/val") for c in calls) == 4  # one new trial per method and task, none repeated
    assert len(by_role(tmp_path / "runs")["trial"]) == 3 * 4 and result.budget == 3


@pytest.mark.slow
def test_two_concurrent_tune_workers_run_each_trial_once(concurrent_workers, vtab_root, tmp_path, suite_file):
    out = tmp_path / "runs"
    trained = concurrent_workers(["tune", "--methods", "linear,vpt_shallow", "--tasks", "cifar,eurosat",
                                  "--data-root", str(vtab_root), "--suite-file", str(suite_file), "--out", str(out),
                                  *BACKBONE, "--final-seeds", "1", "--no-report"], 2, tmp_path / "cache")
    assert len(trained) == 2 * 2 * 2 + 4 and all(len(ws) == 1 for ws in trained.values()), trained
    roles = by_role(out)
    assert len(roles["trial"]) == 8 and len(roles["final"]) == 4
    assert len({r["run_id"] for r in [*roles["trial"], *roles["final"]]}) == 12


def test_default_recipe_gives_no_method_per_task_settings():
    """`peftbench run --suite vtab1k` with default options: every task gets its method's one recipe, and the
    training recipe is the same for every method."""
    suite = load_suite("vtab1k", None)
    tasks = [t.name for t in __import__("peftbench.data.tasks", fromlist=["x"]).suite_tasks("vtab1k")]
    trains, recipes = set(), set()
    for name in available_methods():
        spec = get_method(name)
        _, _, base = resolve(spec, None, suite, [])
        for task in tasks:
            _, _, resolved = resolve(spec, task, suite, [])
            assert resolved == base, (name, task)
        trains.add(json.dumps(base["train"], sort_keys=True))
        recipes.add(base.get("recipe"))
    assert len(trains) == 1, trains
    assert recipes == {"shared"}


# --- method families, --data-root without --suite, run identity, one configuration per row ------------------------

def test_family_names_expand_and_methods_lists_families(capsys):
    from peftbench.registry import expand_methods

    assert expand_methods(["vpt", "ship"]) == ["vpt_deep", "vpt_shallow", "ship"]
    assert expand_methods(["vpt_deep", "vpt"]) == ["vpt_deep", "vpt_shallow"]
    assert get_method("vpt_shallow").family_name == "vpt" and get_method("ship").family_name == "ship"
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "family vpt = vpt_deep, vpt_shallow" in out and "vpt_deep v1  (family vpt)" in out
    assert "(tune searches [1, 5, 10, 50, 100, 200])" in out


def test_run_with_a_family_and_data_root_without_suite(vtab_root, tmp_path, capsys):
    """The user's own words: `--methods vpt` and a --data-root without --suite (= vtab1k)."""
    code = main(["run", "--methods", "vpt", "--tasks", "cifar", "--data-root", str(vtab_root),
                 "--out", str(tmp_path / "runs"), *BACKBONE, "--no-report", "--set", "vpt_deep.prompt_length=2",
                 "--set", "vpt_shallow.prompt_length=2", *[a for s in FAST for a in ("--set", s)]])
    assert code == 0, capsys.readouterr()
    records, _ = load_records(tmp_path / "runs")
    assert sorted((r["method"], r["suite"]) for r in records) == [("vpt_deep", "vtab1k"), ("vpt_shallow", "vtab1k")]
    assert all(r["method_version"] == 1 for r in records)


def test_run_id_includes_precision_device_and_method_version(monkeypatch):
    from dataclasses import replace
    from types import SimpleNamespace

    backbone = SimpleNamespace(name="vit", checksum="c", preprocess=SimpleNamespace(img_size=(32, 32)))
    spec = get_method("linear")
    rid = lambda spec=spec, precision="fp32", device="cpu", role=None: sweep_plan.run_id_of(
        sweep_plan.RunKey(spec, "cifar100", "vtab1k", 0, {"train": {}}, "d", precision, role), backbone,
        torch.device(device))
    ids = {rid(), rid(precision="bf16"), rid(device="cuda"), rid(spec=replace(spec, version=2)), rid(role="trial")}
    assert len(ids) == 5


def test_report_never_averages_two_configurations_into_one_cell():
    from test_report import make_record

    from peftbench import report

    old = make_record("linear", "cifar100", 0, 50.0)
    old["config"]["train"]["lr"] = 0.1
    new = make_record("linear", "cifar100", 1, 90.0)
    new["config"]["train"]["lr"] = 0.5
    new["created"] = "2025-02-01T00:00:00Z"
    official = make_record("ship", "cifar100", 0, 70.0)
    official["config"]["recipe"] = "official"
    tables = report.summary_tables([old, new, official])
    (shared,) = [t for t in tables if t.setting.recipe == "shared"]
    (row,) = shared.rows
    assert row.cells["cifar100"].by_seed == {1: 90.0}  # never the mean of lr 0.1 and lr 0.5
    assert any("superseded" in n for n in shared.notes)
    (repro,) = [t for t in tables if t.setting.recipe == "official"]
    assert "chosen on test" in repro.title() and any("test-set selection" in n for n in repro.notes)
    assert report.setting_of(make_record("linear", "dtd", 0, 1.0)).recipe == "shared"  # old records: readable


# --- the official recipe's loop options ---------------------------------------------------------------------------

def test_per_epoch_schedule_matches_timm_cosine_and_sgd_has_momentum():
    from timm.scheduler import CosineLRScheduler

    from peftbench.config import TrainConfig
    from peftbench.train import lr_at, make_optimizer

    cfg = TrainConfig(epochs=12, lr=0.5, warmup_epochs=3, warmup_lr=1e-6, min_lr=1e-5, schedule="per_epoch",
                      optimizer="sgd", momentum=0.8)
    model = torch.nn.Linear(4, 2)
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.8
    timm_sched = CosineLRScheduler(opt, t_initial=cfg.epochs, lr_min=cfg.min_lr, warmup_t=cfg.warmup_epochs,
                                   warmup_lr_init=cfg.warmup_lr)
    steps = 5
    for epoch in range(cfg.epochs):
        expected = timm_sched._get_lr(epoch)[0]
        ours = {lr_at(epoch * steps + i, steps, cfg) for i in range(steps)}
        assert len(ours) == 1 and ours.pop() == pytest.approx(expected, rel=1e-9), epoch
