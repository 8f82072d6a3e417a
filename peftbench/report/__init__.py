"""Tables (markdown, CSV, JSON) and plots from result records — nothing else (no GPU, no data).

``write_report(runs_dir, out_dir)`` reads the records under ``runs_dir`` and writes into
``out_dir``: ``summary.md``, ``summary.csv``, ``summary.json``, ``records.csv``, ``pairwise.csv``
and, per table, six plots as PNG and SVG. The files are written into a temporary folder next to ``out_dir`` and
moved in together: a failure (a full disk) changes nothing and is one ReportError.

The package: ``setting`` (which runs are comparable, which task columns), ``aggregate``
(cells, averages, rows, tables on pandas), ``markdown``, ``export`` (CSV/JSON) and ``plots``.

Files under ``runs_dir`` that are not records (corrupt JSON, wrong shape) are skipped: each
message is passed to ``on_problem`` (default: a ``logging`` warning; the CLI passes its own
printer) and listed by name in ``summary.md`` and ``summary.json``.

How the numbers are made (the rules a reader of the report needs):

- Only comparable runs share a table: the same suite, backbone (the timm name and tag it resolved
  to), weights checksum, checkpoint file sha256, normalisation, image size, protocol, epochs,
  precision and recipe. Each other combination gets its own table, headed
  by what distinguishes it; a random-init backbone (weights ``none``) is flagged in its title; an
  ``official`` recipe table says the authors chose its settings on test.
- A cell holds runs of one resolved configuration: the newest run's; runs of another
  configuration of the same method and task are superseded (counted in a note), never averaged in.
- Runs of ``peftbench tune`` (trials and finals) appear only in the "Tuned" section
  (``tuned.py``), recomputed from the records with the tune's own selection rule, among the trials
  the latest tune compared (its finals name them); its tables name the weights like the others.
- A cell (method × task) is the mean ± sample std over the seeds that completed. A cell with no
  completed seed is marked (``–`` no run, else its status) and left out of every mean; a cell
  that lost some seeds is marked ``†``. Footnotes name both kinds.
- Averages are means of cell means. "Mean (N tasks)" is the plain mean over tasks and "Mean of
  group means" the mean of the natural / specialized / structured means — papers use both. An
  average over fewer than all tasks of the suite says so, e.g. ``61.2 (17/19)``. Its 95% interval
  (``[60.4, 61.9]``) comes from a stratified bootstrap over seeds, shown when every task in it has
  two or more seeds (``stats.py``).
- Bold marks every method tied with the best of its column (``stats.py``: one-sided paired t-test
  over seeds in a task column, Wilcoxon over per-task means in an average column, Holm-corrected).
  ``pairwise.csv`` compares every pair; ``critical_difference.*`` draws average ranks with
  Friedman's and Wilcoxon–Holm tests; ``--latex`` adds ``summary.tex``.
- Costs (parameters, GFLOPs, images/s) are means over tasks of the complete runs; images/s carry
  the std over the method's runs; peak memory is the largest over those runs.
- Published numbers appear only as labelled reference rows under ours, for VTAB-1k tables that
  report test accuracy on the published backbone: one row per source for each method of the table,
  both means recomputed from the per-task numbers like ours, the protocol in a footnote; they never
  enter our means.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from ..atomic import staged_folder, write_problem
from ..errors import PeftbenchError, UsageError
from ..records import finite, load_records, to_dataframe
from .aggregate import Average, Cell, Row, Table, load_reference, make_row, status_counts, summary_tables
from .compare import PAIRWISE_COLUMNS, of_tuned, pairwise_rows
from .export import summary_csv, summary_json, table_rows_flat
from .latex import render_latex
from .markdown import markdown_table, render_markdown, render_status, table_columns
from .plots import (
    BAR_SIZE,
    DPI,
    SCATTER_SIZE,
    _style,
    heatmap_figsize,
    pareto_front,
    plot_accuracy_vs_params,
    plot_accuracy_vs_throughput,
    plot_group_means,
    plot_heatmap,
    table_figures,
)
from .setting import Layout, Setting, metric_name, setting_of, split_settings, task_layout
from .stats import ONE_SEED_NOTE
from .tuned import TunedTable, is_tuned, render_tuned, tuned_json, tuned_rows, tuned_tables

__all__ = [
    "BAR_SIZE", "DPI", "SCATTER_SIZE", "Average", "Cell", "Layout", "Row", "Setting", "Table", "heatmap_figsize",
    "load_reference", "make_row", "markdown_table", "metric_name", "pareto_front", "plot_accuracy_vs_params",
    "plot_accuracy_vs_throughput", "plot_group_means", "plot_heatmap", "render_markdown", "render_status",
    "setting_of", "split_settings", "status_counts", "summary_csv", "summary_json", "summary_tables",
    "table_columns", "table_figures", "table_rows_flat", "task_layout", "tuned_tables", "write_report", "ReportError",
    "_style",
]

log = logging.getLogger(__name__)


class ReportError(PeftbenchError):
    """The report could not be written (e.g. a full disk); its folder was left as it was."""


def _json_default(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return list(obj)
    return str(obj)


def read_tables(runs_dir: Path, reference: bool = True, on_problem: Callable[[str], None] | None = None
                ) -> tuple[list[Table], list[dict], list[str]]:
    """The fixed-recipe tables of the records under ``runs_dir``, the records and the skipped files.

    Unreadable files are skipped; each message goes to ``on_problem`` (default: log warning).
    Raises UsageError when there is no record at all."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UsageError(f"runs folder '{runs_dir}' does not exist")
    records, problems = load_records(runs_dir)
    for problem in problems:
        (on_problem or log.warning)(problem)
    if not records:
        extra = f" (skipped: see the {len(problems)} warning(s) above)" if problems else ""
        raise UsageError(f"no peftbench records under '{runs_dir}'{extra}")
    tables = summary_tables([r for r in records if not is_tuned(r)], load_reference() if reference else None)
    return tables, records, problems


def write_report(runs_dir: Path, out_dir: Path, reference: bool = True,
                 on_problem: Callable[[str], None] | None = None, latex: bool = False,
                 on_notice: Callable[[str], None] | None = None) -> list[Path]:
    """Read the records under ``runs_dir``, write the report into ``out_dir``; return the files.

    Unreadable files are skipped; each message goes to ``on_problem`` (default: log warning)
    and into summary.md / summary.json. ``latex``: also summary.tex. ``on_notice`` gets one line
    when a table has one seed per run (no intervals). Raises UsageError when there is no record at all.
    """
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    tables, records, problems = read_tables(runs_dir, reference, on_problem)
    tuned = tuned_tables(records)
    if any(t.one_seed for t in tables):
        (on_notice or log.info)(f"note: {ONE_SEED_NOTE}")
    try:
        with staged_folder(out_dir) as stage:
            _write_files(stage, tables, records, problems, runs_dir, tuned)
            if latex:
                (stage / "summary.tex").write_text(render_latex(tables))
            names = sorted(p.name for p in stage.iterdir())
    except OSError as exc:
        raise ReportError(f"cannot write the report to {out_dir}: {write_problem(exc)}; nothing in it was "
                          "changed; then run `peftbench report` again") from exc
    return [out_dir / name for name in names]


def _write_files(folder: Path, tables: list[Table], records: list[dict], problems: list[str], runs_dir: Path,
                 tuned: list[TunedTable]) -> None:
    (folder / "summary.md").write_text(render_markdown(tables, records, problems, runs_dir,
                                                       tuned=render_tuned(tuned), tuned_tables=len(tuned)))
    (folder / "summary.csv").write_text(summary_csv(tables))
    data = summary_json(tables, records, problems, runs_dir)
    if tuned:
        data["tuned"] = tuned_json(tuned)
    (folder / "summary.json").write_text(json.dumps(finite(data), indent=2, default=_json_default) + "\n")
    to_dataframe(records).to_csv(folder / "records.csv", index=False)
    views = [*tables, *(of_tuned(t, n) for n, t in enumerate(tuned, start=1))]
    pd.DataFrame([row for t in views for row in pairwise_rows(t)],
                 columns=PAIRWISE_COLUMNS).to_csv(folder / "pairwise.csv", index=False)
    if tuned:
        pd.DataFrame(tuned_rows(tuned)).to_csv(folder / "tuned.csv", index=False)
    style = _style(sorted({r.method for t in tables for r in [*t.rows, *t.references]}))
    for table in tables:
        mine = [r for r in records if setting_of(r) == table.setting]
        for name, fig in table_figures(table, style, mine).items():
            for fmt in ("png", "svg"):
                meta = {"Date": None} if fmt == "svg" else {"Software": None}
                fig.savefig(folder / f"{name}.{fmt}", format=fmt, dpi=DPI, metadata=meta)
