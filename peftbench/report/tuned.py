"""The "tuned" tables of a report: what `peftbench tune` chose, why, what it scored and what it cost.

Everything is recomputed from the records (the same :func:`selection.choose` the tune applied),
so a table never shows a choice the trial records do not support. Tune records (trials and
finals) never enter the fixed-recipe tables, and fixed-recipe or reproduction records never
enter these: the two are different protocols and are never averaged together.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from statistics import fmean, stdev
from typing import Any

from ..data.tasks import suite_tasks
from ..errors import UsageError
from ..selection import choose, is_tune_record, search_values, val_top1
from .setting import data_source_of


def is_tuned(record: dict) -> bool:
    return bool(record.get("tune"))


def tuned_setting(record: dict) -> tuple:
    """What trials and finals of one tune share (protocol differs by design, so it is not part of it)."""
    bb = record.get("backbone") or {}
    train = (record.get("config") or {}).get("train") or {}
    precision = (record.get("metrics") or {}).get("precision") or train.get("precision")
    return (record.get("suite"), bb.get("name"), bb.get("checksum") or bb.get("weights"),
            tuple(bb.get("img_size") or ()), train.get("epochs"), precision, data_source_of(record))


@dataclass
class TunedCell:
    chosen: dict[str, Any] | None  # the winning trial's searched values
    chosen_val: float | None  # its val200 top-1 (the number that chose it)
    trials: int  # trial records present
    trials_scored: int  # of which complete with a val200 accuracy
    test: dict[int, float] = field(default_factory=dict)  # seed -> test top-1 of the finals of the chosen config
    final_problems: list[str] = field(default_factory=list)
    superseded: int = 0  # finals of a configuration that is no longer the choice

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

    def title(self) -> str:
        suite, backbone, _, size, epochs, precision, data = self.setting
        px = "×".join(str(v) for v in size) or "?"
        return (f"{backbone} · {px} px · suite {suite} · {epochs} epochs · {precision or 'precision unresolved'} · "
                f"data {data}")


def _device_kind(record: dict) -> str:
    device = str((record.get("provenance") or {}).get("device") or "")
    return "GPU" if device.startswith("cuda") else "CPU"


def _wall(record: dict) -> float:
    return float(sum(v for v in ((record.get("metrics") or {}).get("wall_s") or {}).values() if v))


def _cell(trials: list[dict], finals: list[dict]) -> TunedCell:
    best = choose(trials)
    cell = TunedCell(search_values(best) if best else None, val_top1(best) if best else None, len(trials),
                     sum(val_top1(r) is not None for r in trials))
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
    for rec in records:
        if is_tuned(rec):
            groups[tuned_setting(rec)].append(rec)
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
        tables.append(TunedTable(setting, tasks, methods, cells, dict(costs), budgets))
    return tables


def _task_order(suite: str | None, tasks: set[str]) -> list[str]:
    """The suite's own task order where the suite is known, else alphabetical."""
    try:
        order = [t.name for t in suite_tasks(suite)] if suite else []
    except UsageError:
        order = []
    return [t for t in order if t in tasks] + sorted(tasks - set(order))


def _fmt_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _fmt_test(cell: TunedCell | None) -> str:
    if cell is None:
        return "–"
    if not cell.test:
        return "no final" if cell.chosen is not None else "no trial scored"
    std = f" ± {cell.test_std:.2f}" if cell.test_std is not None else ""
    return f"{cell.test_mean:.2f}{std}"


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
        out += ["| method | " + " | ".join(table.tasks) + " | mean |",
                "|:---|" + "---:|" * (len(table.tasks) + 1)]
        for method in table.methods:
            cells = [table.cells.get((method, t)) for t in table.tasks]
            means = [c.test_mean for c in cells if c is not None and c.test_mean is not None]
            mean = f"{fmean(means):.2f}" + ("" if len(means) == len(table.tasks) else
                                            f" ({len(means)}/{len(table.tasks)})") if means else "–"
            out.append(f"| {method} | " + " | ".join(_fmt_test(c) for c in cells) + f" | {mean} |")
        out += ["", "Test top-1 (%) of the chosen configuration: mean ± sample std over the final seeds.", ""]
        out += ["| method | task | chosen | val200 top-1 (chose it) | trials scored | test top-1 | seeds |",
                "|:---|:---|:---|---:|---:|---:|---:|"]
        for method in table.methods:
            for task in table.tasks:
                cell = table.cells.get((method, task))
                if cell is None:
                    continue
                chosen = ", ".join(f"{k}={_fmt_value(v)}" for k, v in (cell.chosen or {}).items()) or "–"
                val = f"{cell.chosen_val:.2f}" if cell.chosen_val is not None else "–"
                out.append(f"| {method} | {task} | {chosen} | {val} | {cell.trials_scored}/{cell.trials} | "
                           f"{_fmt_test(cell)} | {len(cell.test)} |")
        out += ["", "| method | trials per task | trials | trial cost | finals | final cost |",
                "|:---|---:|---:|---:|---:|---:|"]
        for method in table.methods:
            cost = table.costs[method]
            budget = ", ".join(str(b) for b in sorted(table.budgets[method]))
            out.append(f"| {method} | {budget} | {cost.trials} | {_hours(cost.trial_s)} | {cost.finals} | "
                       f"{_hours(cost.final_s)} |")
        notes = ["Search cost: the summed wall time of the runs (training, evaluation and measurement) in "
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
            rows.append({"table": number, "method": method, "task": task,
                         "chosen": ";".join(f"{k}={_fmt_value(v)}" for k, v in (cell.chosen or {}).items()),
                         "val200_top1": cell.chosen_val, "trials": cell.trials, "trials_scored": cell.trials_scored,
                         "test_mean": cell.test_mean, "test_std": cell.test_std, "seeds": len(cell.test)})
    return rows
