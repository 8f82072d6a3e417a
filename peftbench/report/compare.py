"""`peftbench compare A B` and report/pairwise.csv: two methods side by side, with the statistics of ``stats``.

A comparison is made inside one table (one comparable setting, see ``setting.py``), over the tasks
both methods completed, from the same cells the summary shows: a fixed-recipe table's runs, or a
tuned table's final runs of the chosen configurations (``Compared`` is the view both give).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..util import did_you_mean
from .aggregate import Table
from .stats import Comparison, compare
from .tuned import TunedTable


@dataclass
class Compared:
    """What a comparison reads of a table: its id and title, what its numbers are, and per method task → seeds."""

    number: int | str  # a fixed-recipe table's number, "tuned N" for a tuned table
    title: str
    metric: str  # test_top1 | val_top1
    seeds: dict[str, dict[str, dict[int, float]]]  # method -> task -> seed -> top-1


def of_table(table: Table) -> Compared:
    seeds = {r.method: {t: dict(r.cells[t].by_seed) for t in table.layout.tasks if t in r.cells and r.cells[t].by_seed}
             for r in table.rows}
    return Compared(table.number, table.short_title(), table.metric, seeds)


def of_tuned(table: TunedTable, number: int) -> Compared:
    seeds = {m: {t: dict(table.cells[(m, t)].test) for t in table.tasks
                 if (m, t) in table.cells and table.cells[(m, t)].test} for m in table.shown_methods}
    return Compared(f"tuned {number}", f"Tuned table {number}: {table.title()} (final runs of the chosen "
                    "configurations)", "test_top1", seeds)


def _view(table: Table | Compared) -> Compared:
    return table if isinstance(table, Compared) else of_table(table)


def compare_in_table(table: Compared, a: str, b: str, with_intervals: bool = True) -> Comparison:
    return compare(a, b, table.seeds[a], table.seeds[b], with_intervals=with_intervals)


def _interval(ci: tuple[float, float] | None, fmt: str = "+.1f") -> str:
    return f" [{ci[0]:{fmt}}, {ci[1]:{fmt}}]" if ci else ""


def render_comparison(table: Compared, c: Comparison) -> list[str]:
    """The per-task differences, the overall figures and the one-line verdict (plain text)."""
    width = max(len(t) for t in c.tasks)
    lines = [table.title,
             f"{c.a} − {c.b}, test top-1 points per task (mean over seeds; 95% bootstrap interval with 2+ seeds):"
             if table.metric == "test_top1" else
             f"{c.a} − {c.b}, val200 top-1 points per task (mean over seeds; 95% bootstrap interval with 2+ seeds):"]
    lines += [f"  {t:<{width}}  {c.diffs[t]:+.1f}{_interval(c.diff_ci[t])}" for t in c.tasks]
    lines += [f"P({c.a} > {c.b}) = {c.p_improvement:.2f}{_interval(c.p_improvement_ci, '.2f')} "
              "(probability that a run of the first beats a run of the second on a task, averaged over tasks)",
              f"Wilcoxon signed-rank test over the {len(c.tasks)} per-task means: p = {c.wilcoxon_p:.3g}",
              f"Verdict: {c.verdict}"]
    return lines


PAIRWISE_COLUMNS = ["table", "a", "b", "tasks", "seeds", "mean_diff", "p_improvement", "p_improvement_ci95_low",
                    "p_improvement_ci95_high", "wilcoxon_p", "verdict"]


def pairwise_rows(table: Table | Compared) -> list[dict]:
    """Every pair of our methods in the table that share a completed task: report/pairwise.csv."""
    table = _view(table)
    methods = sorted(table.seeds)
    rows = []
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            try:
                c = compare_in_table(table, a, b)
            except ValueError:  # no completed task in common
                continue
            low, high = c.p_improvement_ci or (None, None)
            rows.append({"table": table.number, "a": a, "b": b, "tasks": len(c.tasks), "seeds": c.seeds,
                         "mean_diff": sum(c.diffs.values()) / len(c.diffs), "p_improvement": c.p_improvement,
                         "p_improvement_ci95_low": low, "p_improvement_ci95_high": high,
                         "wilcoxon_p": c.wilcoxon_p, "verdict": c.verdict})
    return rows


def compare_lines(tables: list[Table | Compared], a: str, b: str) -> list[str]:
    """``peftbench compare``: one block per table that holds both methods; UsageError when none does."""
    if a == b:
        raise UsageError(f"compare: give two different methods (got '{a}' twice)")
    views = [_view(t) for t in tables]
    both = [t for t in views if {a, b} <= set(t.seeds)]
    if not both:
        present = sorted({m for t in views for m in t.seeds})
        missing = [m for m in (a, b) if m not in present]
        what = (f"no run of {' and '.join(repr(m) for m in missing)}" if missing
                else f"'{a}' and '{b}' are never in the same table (their runs are not comparable)")
        raise UsageError(f"compare: {what}; methods with records: {', '.join(present) or 'none'}"
                         + (did_you_mean(missing[0], present) if missing else ""))
    lines: list[str] = []
    for table in both:
        try:
            lines += render_comparison(table, compare_in_table(table, a, b)) + [""]
        except ValueError as exc:
            lines += [table.title, f"  {exc}", ""]
    return lines[:-1]
