"""The "tuned" tables of a report: what `peftbench tune` chose, why, what it scored and what it cost.

Everything is recomputed from the records (the same :func:`selection.choose` the tune applied),
so a table never shows a choice the trial records do not support. Tune records (trials and
finals) never enter the fixed-recipe tables, and fixed-recipe or reproduction records never
enter these: the two are different protocols and are never averaged together.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean, stdev
from typing import Any

from ..data.tasks import suite_tasks
from ..errors import UsageError
from ..selection import choose, fmt_value, is_tune_record, search_values, val_top1
from .setting import data_source_of
from .stats import BOLD_NOTE, ONE_SEED_NOTE, average_interval, tied_in_average, tied_in_task


def is_tuned(record: dict) -> bool:
    return bool(record.get("tune"))


PRECISION = 5  # where tuned_setting() keeps the precision


def _but_precision(key: tuple) -> tuple:
    return key[:PRECISION] + key[PRECISION + 1:]


def tuned_setting(record: dict) -> tuple:
    """What trials and finals of one tune share (protocol differs by design, so it is not part of it)."""
    bb = record.get("backbone") or {}
    train = (record.get("config") or {}).get("train") or {}
    precision = (record.get("metrics") or {}).get("precision") or train.get("precision")
    return (record.get("suite"), bb.get("name"), bb.get("checksum") or bb.get("weights"),
            tuple(bb.get("img_size") or ()), train.get("epochs"), None if precision == "auto" else precision,
            data_source_of(record))


@dataclass
class TunedCell:
    chosen: dict[str, Any] | None  # the winning trial's searched values
    chosen_val: float | None  # its val200 top-1 (the number that chose it)
    trials: int  # trial records present
    trials_scored: int  # of which complete with a val200 accuracy
    test: dict[int, float] = field(default_factory=dict)  # seed -> test top-1 of the finals of the chosen config
    final_problems: list[str] = field(default_factory=list)
    superseded: int = 0  # finals of a configuration that is no longer the choice
    statuses: dict[str, int] = field(default_factory=dict)  # status -> trial records (of the trials compared)

    @property
    def test_mean(self) -> float | None:
        return fmean(self.test.values()) if self.test else None

    @property
    def test_std(self) -> float | None:
        return stdev(self.test.values()) if len(self.test) >= 2 else None


@dataclass
class Cost:
    trials: int = 0
    finals: int = 0
    trial_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # device kind -> seconds
    final_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))


@dataclass
class TunedTable:
    setting: tuple
    tasks: list[str]
    methods: list[str]
    cells: dict[tuple[str, str], TunedCell]
    costs: dict[str, Cost]
    budgets: dict[str, set]  # method -> trials per task seen (equal budget shows as one value)
    weights_names: list[str] = field(default_factory=list)  # the records' backbone.weights ("none": random init)
    failed: dict[str, str] = field(default_factory=dict)  # method -> why: no trial of it scored on any task

    @property
    def random_init(self) -> bool:
        return "none" in self.weights_names

    @property
    def weights(self) -> str:
        return ", ".join(w if w in ("none", "pretrained") else Path(w).name for w in self.weights_names) or "?"

    @property
    def shown_methods(self) -> list[str]:
        """The methods with a row: every method but those whose trials all failed (a line each)."""
        return [m for m in self.methods if m not in self.failed]

    def title(self) -> str:
        suite, backbone, _, size, epochs, precision, data = self.setting
        px = "×".join(str(v) for v in size) or "?"
        flag = "⚠ RANDOM-INIT BACKBONE (weights: none) — " if self.random_init else ""
        return (f"{flag}{backbone} (weights {self.weights}) · {px} px · suite {suite} · {epochs} epochs · "
                f"{precision or 'precision unresolved'} · data {data}")


def _device_kind(record: dict) -> str:
    device = str((record.get("provenance") or {}).get("device") or "")
    return "GPU" if device.startswith("cuda") else "CPU"


def _wall(record: dict) -> float:
    return float(sum(v for v in ((record.get("metrics") or {}).get("wall_s") or {}).values() if v))


def compared_trials(trials: list[dict], finals: list[dict]) -> list[dict]:
    """The trials the latest tune compared: the final it chose last names them (``tune.trials``, run ids),
    so a re-run with a smaller budget is judged on its own trials as the tune judged it, not on every
    trial an earlier, larger tune left behind. Without such a final (a tune whose trials all failed,
    or records before the field): every trial."""
    named = [r for r in finals if isinstance((r.get("tune") or {}).get("trials"), list)]
    if not named:
        return trials
    latest = max(named, key=lambda r: str(r["tune"].get("chosen_at") or r.get("created") or ""))
    ids = set(map(str, latest["tune"]["trials"]))
    return [r for r in trials if r["run_id"] in ids]


def _cell(trials: list[dict], finals: list[dict]) -> TunedCell:
    trials = compared_trials(trials, finals)
    best = choose(trials)
    cell = TunedCell(search_values(best) if best else None, val_top1(best) if best else None, len(trials),
                     sum(val_top1(r) is not None for r in trials))
    for rec in trials:
        cell.statuses[rec["status"]] = cell.statuses.get(rec["status"], 0) + 1
    latest: dict[int, dict] = {}
    for rec in sorted(finals, key=lambda r: str(r.get("created") or "")):
        if cell.chosen is None or search_values(rec) != cell.chosen:
            cell.superseded += 1
            continue
        latest[rec["seed"]] = rec
    for seed, rec in sorted(latest.items()):
        acc = (rec.get("metrics") or {}).get("test_top1")
        if rec["status"] == "complete" and acc is not None:
            cell.test[seed] = float(acc)
        else:
            cell.final_problems.append(f"seed {seed}: {rec['status']}")
    return cell


def tuned_tables(records: list[dict]) -> list[TunedTable]:
    """Tune records -> one table per setting (pure)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    pending = []
    for rec in records:
        if is_tuned(rec):
            key = tuned_setting(rec)
            (pending if key[PRECISION] is None else groups[key]).append(rec)
    for rec in pending:  # failed before its precision was resolved: joins the one table it matches otherwise
        key = tuned_setting(rec)
        match = [k for k in groups if _but_precision(k) == _but_precision(key)]
        groups[match[0] if len(match) == 1 else key].append(rec)
    tables = []
    for setting, recs in groups.items():
        tasks = _task_order(setting[0], {r["task"] for r in recs})
        methods = sorted({r["method"] for r in recs})
        by_key: dict[tuple[str, str], dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
        costs: dict[str, Cost] = defaultdict(Cost)
        for rec in recs:
            role = "trial" if is_tune_record(rec, "trial") else "final"
            by_key[(rec["method"], rec["task"])][role].append(rec)
            cost = costs[rec["method"]]
            if role == "trial":
                cost.trials += 1
                cost.trial_s[_device_kind(rec)] += _wall(rec)
            else:
                cost.finals += 1
                cost.final_s[_device_kind(rec)] += _wall(rec)
        cells = {k: _cell(v["trial"], v["final"]) for k, v in by_key.items()}
        budgets = {m: {cells[(m, t)].trials for t in tasks if (m, t) in cells} for m in methods}
        weights = sorted({str((r.get("backbone") or {}).get("weights")) for r in recs})
        failed = {m: _all_failed(m, [c for (cm, _), c in cells.items() if cm == m]) for m in methods}
        tables.append(TunedTable(setting, tasks, methods, cells, dict(costs), budgets, weights,
                                 {m: why for m, why in failed.items() if why}))
    return tables


def _all_failed(method: str, cells: list[TunedCell]) -> str | None:
    """One line for a method none of whose trials scored on any task (and so no final ran), else None."""
    if any(c.chosen is not None or c.test for c in cells):
        return None
    statuses: dict[str, int] = {}
    for cell in cells:
        for status, n in cell.statuses.items():
            statuses[status] = statuses.get(status, 0) + n
    counts = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) or "no trial record"
    return (f"{method}: no trial completed with a val200 accuracy on any task ({counts}); no final run — "
            "see its records (`peftbench inspect` / records.csv) for the reasons")


def _task_order(suite: str | None, tasks: set[str]) -> list[str]:
    """The suite's own task order where the suite is known, else alphabetical."""
    try:
        order = [t.name for t in suite_tasks(suite)] if suite else []
    except UsageError:
        order = []
    return [t for t in order if t in tasks] + sorted(tasks - set(order))


def _fmt_test(cell: TunedCell | None) -> str:
    if cell is None:
        return "–"
    if not cell.test:
        return "no final" if cell.chosen is not None else "no trial scored"
    std = f" ± {cell.test_std:.2f}" if cell.test_std is not None else ""
    return f"{cell.test_mean:.2f}{std}"


def _fmt_mean(cells: list[TunedCell | None]) -> str:
    """The mean over the tasks of the chosen configurations' test top-1, with its interval where there is one."""
    tested = [c for c in cells if c is not None and c.test]
    if not tested:
        return "–"
    text = f"{fmean(c.test_mean for c in tested):.2f}"
    if len(tested) < len(cells):
        return text + f" ({len(tested)}/{len(cells)})"
    ci = average_interval([c.test for c in tested])
    return text + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci is not None else "")


def _ties(table: TunedTable) -> dict[str, set[str]]:
    """Per task column, and for the mean ('mean'): the methods tied with the best (see stats)."""
    methods = table.shown_methods
    ties = {t: tied_in_task({m: table.cells[(m, t)].test for m in methods if (m, t) in table.cells})
            for t in table.tasks}
    complete = [m for m in methods if all((m, t) in table.cells and table.cells[(m, t)].test for t in table.tasks)]
    task_means = {m: {t: table.cells[(m, t)].test_mean for t in table.tasks} for m in complete}
    ties["mean"] = tied_in_average({m: fmean(task_means[m].values()) for m in complete}, task_means)
    return ties


def _bold(text: str, bold: bool) -> str:
    return f"**{text}**" if bold else text


def _hours(seconds: dict[str, float]) -> str:
    return ", ".join(f"{s / 3600:.3f} {kind}-h" for kind, s in sorted(seconds.items())) or "0"


def render_tuned(tables: list[TunedTable]) -> list[str]:
    """Markdown lines of the tuned section (empty when there is no tune record)."""
    if not tables:
        return []
    out = ["## Tuned (peftbench tune)", "",
           "Every method gets the same number of trials per task from its search space (the shared lr × weight-"
           "decay grid and the method's own knobs); each trial trains on train800 and is scored by val200 top-1 "
           "after its last epoch. The best trial (ties: fewer trainable parameters, then grid order) is retrained "
           "on train800val200 and tested once per seed. The test split is never read while tuning. These rows are "
           "a different protocol from the fixed-recipe and reproduction tables and are never averaged with them.",
           ""]
    for number, table in enumerate(tables, start=1):
        out += [f"### Tuned table {number} — {table.title()}", ""]
        if not table.shown_methods:
            out += [f"- {why}" for why in table.failed.values()] + [""]
            continue
        ties = _ties(table)
        out += ["| method | " + " | ".join(table.tasks) + " | mean |",
                "|:---|" + "---:|" * (len(table.tasks) + 1)]
        for method in table.shown_methods:
            cells = [table.cells.get((method, t)) for t in table.tasks]
            texts = [_bold(_fmt_test(c), method in ties.get(t, ())) for c, t in zip(cells, table.tasks)]
            out.append(f"| {method} | " + " | ".join(texts) + f" | {_bold(_fmt_mean(cells), method in ties['mean'])} |")
        out += ["", "- Test top-1 (%) of the chosen configuration: mean ± sample std over the final seeds; the mean "
                "over the tasks with a 95% interval [low, high] from a stratified bootstrap (each task's final seeds "
                "resampled, the tasks fixed) where every task has 2 or more final seeds.", f"- {BOLD_NOTE}"]
        seeds = [len(c.test) for (m, _), c in table.cells.items() if c.test and m in table.shown_methods]
        if seeds and max(seeds) < 2:
            out.append(f"- {ONE_SEED_NOTE.replace('run `--seeds 0,1,2`', 'tune with `--final-seeds 3`')}")
        out += [""]
        out += ["| method | task | chosen | val200 top-1 (chose it) | trials scored | test top-1 | seeds |",
                "|:---|:---|:---|---:|---:|---:|---:|"]
        for method in table.shown_methods:
            for task in table.tasks:
                cell = table.cells.get((method, task))
                if cell is None:
                    continue
                chosen = ", ".join(f"{k}={fmt_value(v)}" for k, v in (cell.chosen or {}).items()) or "–"
                val = f"{cell.chosen_val:.2f}" if cell.chosen_val is not None else "–"
                out.append(f"| {method} | {task} | {chosen} | {val} | {cell.trials_scored}/{cell.trials} | "
                           f"{_fmt_test(cell)} | {len(cell.test)} |")
        out += ["", "| method | trials per task | trials | trial cost | finals | final cost |",
                "|:---|---:|---:|---:|---:|---:|"]
        for method in table.shown_methods:
            cost = table.costs[method]
            budget = ", ".join(str(b) for b in sorted(table.budgets[method]))
            out.append(f"| {method} | {budget} | {cost.trials} | {_hours(cost.trial_s)} | {cost.finals} | "
                       f"{_hours(cost.final_s)} |")
        notes = [*table.failed.values(),
                 "Search cost: the summed wall time of the runs (training, evaluation and measurement) in "
                 "device-hours, by device kind (CPU-h or GPU-h)."]
        if any(len(b) > 1 for b in table.budgets.values()) or len({x for b in table.budgets.values() for x in b}) > 1:
            notes.append("Trial counts differ between methods or tasks (a search space smaller than the budget, or a "
                         "tune still running): the comparison is not equal-budget where they differ.")
        superseded = sum(c.superseded for c in table.cells.values())
        if superseded:
            notes.append(f"{superseded} final run(s) of a configuration that is no longer the choice (e.g. after a "
                         "larger --budget) were superseded and ignored.")
        problems = [f"{m}/{t} {p}" for (m, t), c in table.cells.items() for p in c.final_problems]
        if problems:
            notes.append("Final runs without a test accuracy: " + "; ".join(problems) + ".")
        out += [""] + [f"- {n}" for n in notes] + [""]
    return out


def tuned_rows(tables: list[TunedTable]) -> list[dict]:
    """One flat row per (table, method, task) for tuned.csv."""
    rows = []
    for number, table in enumerate(tables, start=1):
        for (method, task), cell in sorted(table.cells.items()):
            rows.append({"table": number, "backbone": table.setting[1], "weights": table.weights,
                         "random_init": table.random_init, "method": method, "task": task,
                         "chosen": ";".join(f"{k}={fmt_value(v)}" for k, v in (cell.chosen or {}).items()),
                         "val200_top1": cell.chosen_val, "trials": cell.trials, "trials_scored": cell.trials_scored,
                         "test_mean": cell.test_mean, "test_std": cell.test_std, "seeds": len(cell.test)})
    return rows


def tuned_json(tables: list[TunedTable]) -> list[dict]:
    """The tuned section for summary.json: per table its setting, then per method and task the choice."""
    out = []
    for number, table in enumerate(tables, start=1):
        suite, backbone, checksum, size, epochs, precision, data = table.setting
        cells = [{"method": m, "task": t, "chosen": c.chosen, "val200_top1": c.chosen_val, "trials": c.trials,
                  "trials_scored": c.trials_scored, "trial_statuses": c.statuses,
                  "test": {"mean": c.test_mean, "std": c.test_std, "by_seed": {str(k): v for k, v in c.test.items()}},
                  "final_problems": c.final_problems, "superseded_finals": c.superseded}
                 for (m, t), c in sorted(table.cells.items())]
        out.append({"number": number, "title": table.title(), "suite": suite, "backbone": backbone,
                    "weights": table.weights_names, "weights_checksum": checksum, "random_init": table.random_init,
                    "img_size": list(size), "epochs": epochs, "precision": precision, "data_source": data,
                    "tasks": table.tasks,
                    "methods": table.methods, "all_trials_failed": table.failed,
                    "budgets": {m: sorted(b) for m, b in table.budgets.items()},
                    "costs": {m: {"trials": c.trials, "finals": c.finals, "trial_s": dict(c.trial_s),
                                  "final_s": dict(c.final_s)} for m, c in table.costs.items()},
                    "cells": cells})
    return out
