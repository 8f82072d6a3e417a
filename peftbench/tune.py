"""`peftbench tune`: every method tuned with the same budget on train800 -> val200, then final runs.

The protocol (docs/architecture.md, "Tuning"; the VPT authors' tune_vtab.py): each (method, task) gets the same
number of trials N from its search space — the suite's shared lr x weight-decay grid times the
method's own knobs — a deterministic seeded subsample when the grid is larger. Trials train on
train800 and are scored by val200 top-1 after the last epoch; the test split is never decoded
for them. The winner (ties: fewer trainable parameters, then grid order) is retrained on
train800val200 with S seeds and tested once per run. Trials and finals are ordinary runs of the
sweep machinery, so they resume, skip and share work between workers exactly like `run`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .config import SHARED_RECIPE, TRAIN_KEYS, Suite, parse_sets
from .data.tasks import resolve_tasks
from .errors import UsageError
from .records import find_record, record_path, write_record
from .registry import MethodSpec, get_method
from .selection import choose, fmt_value, val_top1
from .sweep.request import Point, Reporter, SweepRequest, SweepResult
from .sweep.resolve import load_suite, suite_of, sweep_methods
from .sweep.run import run_sweep
from .util import did_you_mean

DEFAULT_BUDGET = 8  # used when neither --budget nor the suite's tune.budget says otherwise
DEFAULT_GRID = {"lr": [1e-4, 5e-4, 1e-3, 5e-3, 1e-2], "weight_decay": [0.0, 1e-4, 1e-2]}


@dataclass
class TuneRequest:
    sweep: SweepRequest  # methods, tasks, suite, data, backbone, out, workers ... (its seeds are not used)
    budget: int | None = None  # trials per (method, task); None: the suite's tune.budget, else DEFAULT_BUDGET
    final_seeds: int = 3
    trial_seed: int = 0  # the seed of every trial, and of the subsample of a larger grid
    poll_s: float = 2.0  # while other workers hold runs this tune needs, look again this often


@dataclass(frozen=True)
class Candidate:
    grid_index: int  # position in the full grid (the last tie-break)
    values: tuple[tuple[str, Any], ...]  # (key, value): training keys and method knobs

    def sets(self, method: str) -> tuple[tuple[str | None, str, Any], ...]:
        """The values as parsed settings ``(method or None, key, value)``, typed as searched: never
        written out as text and parsed again (a tuple of targets is not a comma-separated string)."""
        return tuple((None if k in TRAIN_KEYS else method, k, v) for k, v in self.values)


def _frozen(value: Any) -> Any:
    """Lists (from a suite file) as tuples: a Point holding them stays hashable."""
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


@dataclass
class TuneResult:
    trials: SweepResult
    finals: SweepResult
    budget: int
    chosen: dict[tuple[str, str], dict | None] = field(default_factory=dict)  # (method, task) -> trial record
    trial_counts: dict[str, int] = field(default_factory=dict)  # method -> trials per task


def search_space(spec: MethodSpec, suite: Suite, pins: list[tuple[str | None, str, Any]] | None = None
                 ) -> dict[str, list[Any]]:
    """The shared grid (suite ``tune.grid``) and the method's knobs (declared ``search`` values,
    overridden per method by the suite's ``tune.methods``), in a fixed order. ``pins`` are the
    request's parsed ``--set`` items: one naming a searched key fixes it to that one value."""
    space = dict(suite.tune.grid or DEFAULT_GRID)
    knobs = spec.search_space()
    override = suite.tune.methods.get(spec.name, {})
    names = {f.name for f in dataclasses.fields(spec.config_cls)}
    for key in override:
        if key not in names:
            raise UsageError(f"{suite.source}: tune.methods.{spec.name}.{key}: not a knob of '{spec.name}'"
                             + did_you_mean(key, sorted(names)))
    space.update({**knobs, **override})
    for method, key, value in pins or []:
        if key in space and method in (None, spec.name):
            space[key] = [value]
    return space


def grid(space: dict[str, list[Any]]) -> list[Candidate]:
    keys = list(space)
    return [Candidate(i, tuple(zip(keys, map(_frozen, combo))))
            for i, combo in enumerate(itertools.product(*space.values()))]


def subsample(candidates: list[Candidate], budget: int, key: str) -> list[Candidate]:
    """The first ``budget`` of a permutation seeded by ``key``: deterministic, and a larger budget
    keeps every earlier trial (its prefix), so re-running with more adds trials and discards none."""
    order = list(range(len(candidates)))
    random.Random(int(hashlib.sha256(key.encode()).hexdigest()[:16], 16)).shuffle(order)
    return [candidates[i] for i in sorted(order[:budget])]


def plan_trials(spec: MethodSpec, suite: Suite, budget: int, trial_seed: int,
                pins: list[tuple[str | None, str, Any]] | None = None) -> tuple[list[Candidate], int]:
    """-> (this method's trials, the size of its full grid)."""
    full = grid(search_space(spec, suite, pins))
    return subsample(full, budget, f"peftbench-tune:{trial_seed}:{spec.name}"), len(full)


def _until_done(req: SweepRequest, reporter: Reporter, poll_s: float) -> SweepResult:
    """Run the points; while other live workers hold some, wait and look again (stale claims are
    taken over by the sweep itself), so every run this tune needs has a record when it returns."""
    total = SweepResult()
    while True:
        result = run_sweep(req, reporter)
        total.written += result.written
        total.run_ids.update(result.run_ids)
        for status, n in result.statuses.items():
            total.statuses[status] = total.statuses.get(status, 0) + n
        if not result.left_to_others:
            total.skipped, total.orphaned = result.skipped, result.orphaned
            return total
        reporter.message(f"waiting for {len(result.left_to_others)} run(s) held by other workers")
        time.sleep(poll_s)


def run_tune(req: TuneRequest, reporter: Reporter | None = None) -> TuneResult:
    reporter = reporter or Reporter()
    sweep = req.sweep
    if sweep.recipe != SHARED_RECIPE:
        raise UsageError(f"--recipe {sweep.recipe}: tune searches its own settings on the shared recipe; "
                         "run a named recipe with `peftbench run --recipe NAME`")
    if req.final_seeds < 1:
        raise UsageError(f"--final-seeds {req.final_seeds}: must be at least 1")
    pins = parse_sets(sweep.sets)
    for method, key, _ in pins:
        if method is None and key == "protocol":
            raise UsageError("--set protocol: tune sets it itself (val for trials, final for the chosen "
                             "configuration); drop it")
    specs = [get_method(m) for m in sweep_methods(sweep)]
    suite_name = suite_of(sweep)
    suite = load_suite(suite_name, sweep.suite_file)
    tasks = resolve_tasks(sweep.tasks, suite_name)
    budget = req.budget if req.budget is not None else (suite.tune.budget or DEFAULT_BUDGET)
    if budget < 1:
        raise UsageError(f"--budget {budget}: must be at least 1")

    trial_points: dict[tuple[str, str], list[tuple[Point, Candidate]]] = {}
    counts: dict[str, int] = {}
    for spec in specs:
        candidates, size = plan_trials(spec, suite, budget, req.trial_seed, pins)
        counts[spec.name] = len(candidates)
        if len(candidates) < budget:
            reporter.message(f"warning: {spec.name}: its search space has only {size} configuration(s), fewer "
                             f"than the budget {budget}: it gets {size} trial(s) per task")
        for task in tasks:
            trial_points[(spec.name, task.name)] = [(Point(
                spec.name, task.name, ((None, "protocol", "val"), *c.sets(spec.name)), (req.trial_seed,), "trial",
                {"label": f"trial{c.grid_index}", "search": dict(c.values), "grid_index": c.grid_index,
                 "grid_size": size}), c) for c in candidates]
    searched = {k for spec in specs for k in search_space(spec, suite)}
    reporter.message(tune_header(counts, budget, len(tasks), req.final_seeds, [p for p in pins if p[1] in searched]))
    trials = _until_done(dataclasses.replace(sweep, points=[p for ps in trial_points.values() for p, _ in ps]),
                         reporter, req.poll_s)

    chosen: dict[tuple[str, str], dict | None] = {}
    finals = []
    for (method, task), pairs in trial_points.items():
        run_ids = [trials.run_ids[(p, req.trial_seed)] for p, _ in pairs]
        records = {run_id: find_record(sweep.out, run_id) for run_id in run_ids}
        best = choose([r for r in records.values() if r is not None])
        chosen[(method, task)] = best
        if best is None:
            reporter.message(f"warning: {method}/{task}: no trial completed with a val200 accuracy; no final run")
            continue
        cand = next(c for (_, c), run_id in zip(pairs, run_ids) if run_id == best["run_id"])
        finals.append(Point(method, task, ((None, "protocol", "final"), *cand.sets(method)),
                            tuple(range(req.final_seeds)), "final",
                            {"label": "final", "search": dict(cand.values), "grid_index": cand.grid_index,
                             "trial": best["run_id"], "trials": run_ids}))
        reporter.message(f"{method}/{task}: chose {_fmt(dict(cand.values))} (val200 top-1 {val_top1(best):.2f}%)")
    final_result = (_until_done(dataclasses.replace(sweep, points=finals), reporter, req.poll_s) if finals
                    else SweepResult())
    _mark_chosen(sweep.out, final_result)
    return TuneResult(trials, final_result, budget, chosen, counts)


def _mark_chosen(out: Path, finals: SweepResult) -> None:
    """Stamp this tune's choice on its final records, also on those an earlier tune wrote and this one
    reused: ``tune.trials`` (the trials compared) and ``tune.chosen_at``. The report takes the finals
    chosen last, so after a re-run with another budget it shows what this tune chose, not an older pick."""
    now = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    for (point, _), run_id in finals.run_ids.items():
        rec = find_record(out, run_id)
        if rec is None or not record_path(out, rec).is_file():  # a record moved elsewhere stays as it is
            continue
        rec["tune"].update(trials=point.extra["trials"], chosen_at=now)
        write_record(record_path(out, rec), rec)


def tune_header(counts: dict[str, int], budget: int, tasks: int, final_seeds: int,
                pins: list[tuple[str | None, str, Any]]) -> str:
    """What the tune is about to run, counted as it will run it: trials per method (a search space
    smaller than the budget gives fewer), then at most one configuration per method and task times
    the final seeds (none where no trial scores)."""
    smaller = {m: n for m, n in counts.items() if n < budget}
    per = f"{budget} per method and task" + (
        "; fewer for " + ", ".join(f"{m} ({n})" for m, n in smaller.items()) if smaller else "")
    pairs = len(counts) * tasks
    pinned = [f"{m + '.' if m else ''}{k}={v}" for m, k, v in pins]
    return (f"tune: {sum(counts.values()) * tasks} trial(s) ({per}, train800 -> val200), then up to "
            f"{pairs * final_seeds} final run(s) ({final_seeds} seed(s) x {pairs} method-task pair(s))"
            + (f"; fixed by --set: {', '.join(pinned)}" if pinned else ""))


def _fmt(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in values.items())
