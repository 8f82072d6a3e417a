"""summary.md: the tables in the papers' form, their footnotes, and the run status."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from .aggregate import STATUS_TEXT, Average, Cell, Row, Table, one_line, speed_ties, status_counts
from .plots import plot_names
from .setting import Layout
from .stats import BOLD_NOTE, ONE_SEED_NOTE


def _fmt_acc(value: float | None, std: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.1f}" + (f" ± {std:.1f}" if std is not None else "")


def _fmt_avg(avg: Average | None) -> str:
    """An average with its 95% interval where there is one: ``61.2 [60.4, 61.9]``."""
    if avg is None or avg.mean is None:
        return "–"
    ci = f" [{avg.ci[0]:.1f}, {avg.ci[1]:.1f}]" if avg.ci is not None else ""
    return f"{avg.mean:.1f}{ci}" + (f" ({avg.n}/{avg.total})" if avg.partial else "")


def _fmt_cell(cell: Cell | None) -> str:
    if cell is None:
        return "–"
    if not cell.by_seed:
        return "/".join(sorted({STATUS_TEXT.get(s, s) for s, _ in cell.failed.values()}))
    return _fmt_acc(cell.mean, cell.std) + ("†" if cell.failed else "")


def _fmt_num(value: float | None, kind: str) -> str:
    if value is None:
        return ""
    if kind == "params":
        return f"{value:.1f}" if value >= 100 else f"{value:.2f}" if value >= 1 else f"{value:.3f}"
    if kind == "gflops":
        return f"{value:.1f}" if value >= 10 else f"{value:.2f}" if value >= 1 else f"{value:.3f}"
    if kind == "mem":
        return f"{value:.2f}"
    return f"{value:,.0f}"


def _esc(text: str) -> str:
    return str(text).replace("|", "\\|")


def table_columns(layout: Layout, stored: bool = False) -> list[tuple[str, str]]:
    """(column id, header) in display order: tasks with each group's mean after the group.

    ``stored``: with the stored-per-task column (when the records carry it)."""
    cols = [("method", "Method")]
    several = len(layout.groups) >= 2
    for group, tasks in layout.groups:
        cols += [(f"task:{t}", t) for t in tasks]
        if several:
            cols.append((f"group:{group}", f"{group.capitalize()} mean"))
    cols.append(("mean_tasks", f"Mean ({layout.total} tasks)"))
    if several:
        cols.append(("mean_groups", f"Mean of {len(layout.groups)} group means"))
    cols += [("params_m", "Params (M)"), ("params_excl_head_m", "Params excl. head (M)"),
             *([("stored_m", "Stored per task (M)")] if stored else []), ("gflops", "GFLOPs"),
             ("train_img_per_s", "Train img/s"), ("infer_img_per_s", "Infer img/s"),
             ("peak_mem_gib", "Peak mem (GiB)"), ("seeds", "Seeds")]
    return cols


def _row_cells(row: Row, cols: list[tuple[str, str]], mixed_mem: bool,
               ties: dict[str, set[str]] | None = None) -> list[str]:
    out = []
    for col, _ in cols:
        kind, _, name = col.partition(":")
        if col == "method":
            out.append(row.label)
        elif kind in ("task", "group") or col in ("mean_tasks", "mean_groups"):
            text = _fmt_cell(row.cells.get(name)) if kind == "task" else _fmt_avg(
                row.group_means.get(name) if kind == "group" else getattr(row, col))
            bold = row.source == "peftbench" and row.method in (ties or {}).get(col, ())
            out.append(f"**{text}**" if bold else text)
        elif col == "seeds":
            out.append(row.seed_text)
        elif col == "peak_mem_gib":
            text = _fmt_num(row.costs.get(col), "mem") or ("—" if _mem_unmeasured(row) else "")
            if text and mixed_mem:
                text += " (" + "/".join(_MEM_KIND.get(k, k) for k in row.costs.get("peak_mem_kind", [])) + ")"
            out.append(text)
        else:
            kind = "params" if col in ("params_m", "params_excl_head_m", "stored_m") else (
                "gflops" if col == "gflops" else "rate")
            text = _fmt_num(row.costs.get(col), kind)
            spread = row.costs.get(f"{col}_std") if kind == "rate" else None
            out.append(f"{text} ± {spread:,.0f}" if text and spread else text)
    return out


_MEM_KIND = {"cuda_max_allocated": "CUDA max allocated", "run_peak_rss": "peak resident set during the run",
             "process_peak_rss": "process peak RSS"}


def _mem_unmeasured(row: Row) -> bool:
    """Our row has complete runs (their parameter counts) but none of them could measure its peak memory."""
    return row.source == "peftbench" and row.costs.get("params_m") is not None and row.costs.get("peak_mem_gib") is None


def has_stored(table: Table) -> bool:
    return any(row.costs.get("stored_m") is not None for row in table.rows)


def markdown_table(table: Table) -> list[str]:
    """The table in the papers' form: our rows, then the published reference rows."""
    cols = table_columns(table.layout, has_stored(table))
    mixed_mem = len(table.mem_kinds) > 1
    lines = ["| " + " | ".join(_esc(h) for _, h in cols) + " |",
             "|" + "|".join(":---" if c == "method" else "---:" for c, _ in cols) + "|"]
    for row in [*table.rows, *table.references]:
        lines.append("| " + " | ".join(_esc(v) for v in _row_cells(row, cols, mixed_mem, table.ties)) + " |")
    return lines


_PLOT_CAPTIONS = {
    "accuracy_vs_params": "Mean top-1 vs trainable parameters",
    "heatmap": "Per-task top-1",
    "accuracy_vs_throughput": "Mean top-1 vs inference throughput",
    "group_means": "Group means",
    "training_curves": "Training curves",
    "critical_difference": "Critical-difference diagram: average ranks, Friedman and Wilcoxon–Holm tests",
}


def render_markdown(tables: list[Table], records: list[dict], problems: list[str], runs_dir: Path,
                    generated: str | None = None, tuned: list[str] | None = None, tuned_tables: int = 0) -> str:
    """The whole summary.md (pure: tables and records in, text out)."""
    generated = generated or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    counts = status_counts(records)
    where = (f"{len(tables)} fixed-recipe table(s) and {tuned_tables} tuned table(s)" if tuned_tables
             else f"{len(tables)} table(s)")
    out = ["# peftbench report", "",
           f"Generated {generated} from `{runs_dir}`: {len(records)} record(s) in {where} — "
           + ", ".join(f"{n} {s}" for s, n in counts.items())
           + ("; some files were skipped (see Skipped files)." if problems else "."), ""]
    if len(tables) > 1:
        out += ["Runs that are not comparable (backbone, weights, image size, protocol, epochs, precision, "
                + "suite or data source differ) are in separate tables.", ""]
    for table in tables:
        out += [f"## Table {table.number} — {table.title()}", ""]
        if table.differs_from_first:
            out += [f"Differs from Table 1 in: {', '.join(table.differs_from_first)}.", ""]
        out += markdown_table(table) + [""]
        out += [f"- {note}" for note in [*table.notes, *_column_notes(table), *table.reference_notes]]
        out.append("")
        for kind, name in plot_names(table.number).items():
            out.append(f"![{_PLOT_CAPTIONS[kind]} (Table {table.number})]({name}.png)")
        out.append("")
    out += tuned or []  # the tuned section (report/tuned.py), a different protocol, after the fixed-recipe tables
    out += render_status(records, runs_dir)
    if problems:
        out += ["", "## Skipped files", "", *[f"- {_esc(one_line(p, 400))}" for p in problems]]
    return "\n".join(out).rstrip() + "\n"


def _column_notes(table: Table) -> list[str]:
    notes = ["Cells: mean ± sample std over seeds (± only with 2 or more seeds); averages are means of the cells, "
             + "with a 95% interval [low, high] from a stratified bootstrap (each task's seeds resampled, the tasks "
             + "fixed) where every task in them has 2 or more seeds; (n/N) marks an average over n of the suite's "
             + "N tasks.", BOLD_NOTE, *([ONE_SEED_NOTE] if table.one_seed else [])]
    notes.append("Params: trainable parameters in millions, mean over tasks, with and without the classifier "
                 "head; GFLOPs: inference per image; img/s: training and inference throughput (each run's figure is "
                 "the median of its timing windows; ± the std over the method's runs); all from complete runs.")
    ties = speed_ties(table.rows)
    if ties:
        notes.append("Inference img/s within one another's spread (differences that are measurement noise, not a "
                     "ranking): " + "; ".join(", ".join(g) for g in ties) + ".")
    if has_stored(table):
        notes.append("Stored per task: what a user keeps for each task besides the shared pre-trained backbone "
                     "— the trainable parameters plus the frozen tensors the method adds (e.g. SHIP's prototype "
                     "bank), in millions, mean over tasks.")
    notes += _memory_notes(table)
    if len(table.devices) > 1:
        notes.append("Throughput measured on different devices (" + ", ".join(table.devices)
                     + "): images/s are not comparable across them.")
    elif table.devices:
        notes.append(f"Device: {table.devices[0]}.")
    if table.references and not any(r.costs.get("params_m") for r in table.references):
        notes.append("Published rows have no parameter counts in the reference file, so they are absent from "
                     "the accuracy-vs-parameters plot.")
    return notes


def _memory_notes(table: Table) -> list[str]:
    notes = []
    if table.mem_kinds:
        kinds = ", ".join(_MEM_KIND.get(k, k) for k in table.mem_kinds)
        notes.append(f"Peak mem: largest over the runs ({kinds})"
                     + ("; the kinds differ between runs, so the numbers are not comparable." if len(
                         table.mem_kinds) > 1 else "."))
    if "process_peak_rss" in table.mem_kinds:
        notes.append("Process peak RSS (records written before memory was measured per run) is the sweep "
                     "process's lifetime high-water mark: it grows with the sweep order and is not a per-run figure.")
    if any(_mem_unmeasured(row) for row in table.rows):
        notes.append("Peak mem —: not measured; on a CPU a run's own peak needs Linux (a VmHWM reset per run), "
                     "and the process's lifetime peak is not shown in its place.")
    return notes


def render_status(records: list[dict], runs_dir: Path) -> list[str]:
    out = ["## Run status", "", "| status | runs |", "|:---|---:|"]
    out += [f"| {s} | {n} |" for s, n in status_counts(records).items()]
    bad = sorted((r for r in records if r["status"] != "complete"),
                 key=lambda r: (r["method"], r["task"], r["seed"]))
    if bad:
        out += ["", "Runs that did not complete:", "", "| method | task | seed | status | reason |",
                "|:---|:---|---:|:---|:---|"]
        out += [f"| {_esc(r['method'])} | {_esc(r['task'])} | {r['seed']} | {r['status']} | "
                f"{_esc(one_line(r.get('reason') or ''))} |" for r in bad]
    return out
