"""Tables (markdown, CSV, JSON) and plots from result records — nothing else (no GPU, no data).

``write_report(runs_dir, out_dir)`` reads the records under ``runs_dir`` and writes into
``out_dir``: ``summary.md``, ``summary.csv``, ``summary.json``, ``records.csv`` and, per table,
four plots as PNG and SVG. Each file is written to a temporary name and renamed into place.

Files under ``runs_dir`` that are not records (corrupt JSON, wrong shape) are skipped: each
message is passed to ``on_problem`` (default: a ``logging`` warning; the CLI passes its own
printer) and listed by name in ``summary.md`` and ``summary.json``.

How the numbers are made (the rules a reader of the report needs):

- Only comparable runs share a table: the same suite, backbone name, weights checksum, image
  size, protocol, epochs and precision. Each other combination gets its own table, headed by
  what distinguishes it; a random-init backbone (weights ``none``) is flagged in its title.
- A cell (method × task) is the mean ± sample std over the seeds that completed. A cell with no
  completed seed is marked (``–`` no run, else its status) and left out of every mean; a cell
  that lost some seeds is marked ``†``. Footnotes name both kinds.
- Averages are means of cell means. "Mean (N tasks)" is the plain mean over tasks and "Mean of
  group means" the mean of the natural / specialized / structured means — papers use both. An
  average over fewer than all tasks of the suite says so, e.g. ``61.2 (17/19)``. Its ± is the
  std over seeds of per-seed averages, shown when two or more seeds completed every task in it.
- Costs (parameters, GFLOPs, images/s) are means over tasks of the complete runs; peak memory
  is the largest over those runs.
- Published numbers appear only as labelled reference rows under ours, for VTAB-1k tables that
  report test accuracy; they never enter our means.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import textwrap
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from statistics import fmean, stdev
from typing import Any, ClassVar

from .data.tasks import BUILTIN_SUITE_MODULES, GROUPS, SUITES, suite_tasks
from .errors import UsageError
from .records import atomic_write, finite, load_records, to_dataframe

log = logging.getLogger(__name__)

DPI = 150
SCATTER_SIZE = (9.0, 5.6)  # inches; a PNG is exactly size × DPI pixels (no tight bbox)
BAR_SIZE = (10.0, 5.6)
REFERENCE_SUITE = "vtab1k"
OTHER_GROUP = "other"
_STATUS_TEXT = {"diverged": "diverged", "oom": "OOM", "failed": "failed"}
_CAVEAT_MARKERS = ("best test", "test-set selection")  # reference protocols that selected on test


# ----------------------------------------------------------------------------------------------
# the comparability key


@dataclass(frozen=True)
class Setting:
    """What must be equal for two runs to share a table."""

    suite: str | None
    backbone: str | None
    weights: str | None  # the checksum, else the weights string
    img_size: tuple[int, ...]
    protocol: str | None
    epochs: int | None
    precision: str | None

    LABELS: ClassVar[dict[str, str]] = {"suite": "suite", "backbone": "backbone", "weights": "weights checksum",
              "img_size": "image size", "protocol": "protocol", "epochs": "epochs", "precision": "precision"}

    def differences(self, other: Setting) -> list[str]:
        return [self.LABELS[f.name] for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]


def setting_of(record: dict) -> Setting:
    bb = record.get("backbone") or {}
    train = (record.get("config") or {}).get("train") or {}
    precision = (record.get("metrics") or {}).get("precision") or train.get("precision")
    return Setting(
        suite=record.get("suite"),
        backbone=bb.get("name"),
        weights=bb.get("checksum") or bb.get("weights"),
        img_size=tuple(bb.get("img_size") or ()),
        protocol=train.get("protocol"),
        epochs=train.get("epochs"),
        precision=None if precision == "auto" else precision,
    )


def split_settings(records: list[dict]) -> dict[Setting, list[dict]]:
    """Records by setting, largest group first. A run that failed before its precision was
    resolved ('auto') joins the table that matches it in everything else, if there is one."""
    groups: dict[Setting, list[dict]] = defaultdict(list)
    pending = []
    for rec in records:
        key = setting_of(rec)
        (pending if key.precision is None else groups[key]).append(rec)
    for rec in pending:
        key = setting_of(rec)
        match = [k for k in groups if k == Setting(**{**asdict(key), "precision": k.precision})]
        groups[match[0] if len(match) == 1 else key].append(rec)
    order = sorted(groups, key=lambda k: (-sum(r["status"] == "complete" for r in groups[k]), -len(groups[k]),
                                          json.dumps(asdict(k), default=str)))
    return {k: groups[k] for k in order}


def metric_name(protocol: str | None) -> str:
    return "val_top1" if protocol == "val" else "test_top1"


# ----------------------------------------------------------------------------------------------
# task layout: which columns, in which order, and the denominators of "(n/N)"


@dataclass
class Layout:
    groups: list[tuple[str, list[str]]]  # (group, shown tasks) in suite order
    group_totals: dict[str, int]  # tasks per group in the whole suite
    total: int  # tasks in the whole suite

    @property
    def tasks(self) -> list[str]:
        return [t for _, tasks in self.groups for t in tasks]


def task_layout(suite: str | None, tasks: Iterable[str]) -> Layout:
    """Suite order when the suite is known, else alphabetical; groups natural, specialized,
    structured, then anything else. Denominators count the whole suite when it is known."""
    shown = set(tasks)
    if suite in BUILTIN_SUITE_MODULES:
        suite_tasks(suite)  # a built-in suite defined in its own module registers itself on first use
    if suite in SUITES:
        specs = SUITES[suite]
        extra = sorted(shown - {s.name for s in specs})  # tasks the suite does not know
        order = [s.name for s in specs] + extra
        group_of = {s.name: s.group for s in specs}
        totals = Counter(s.group for s in specs) + Counter({OTHER_GROUP: len(extra)})
    else:
        order = sorted(shown)
        group_of = {s.name: s.group for specs in SUITES.values() for s in specs}
        totals = Counter(group_of.get(t, OTHER_GROUP) for t in shown)
    group_order = [*GROUPS, *sorted({group_of.get(t, OTHER_GROUP) for t in shown} - set(GROUPS))]
    groups = [(g, [t for t in order if t in shown and group_of.get(t, OTHER_GROUP) == g]) for g in group_order]
    groups = [(g, ts) for g, ts in groups if ts]
    return Layout(groups, dict(totals), sum(totals.values()))


# ----------------------------------------------------------------------------------------------
# cells, averages, rows, tables


@dataclass
class Cell:
    by_seed: dict[int, float] = field(default_factory=dict)  # completed seeds → accuracy (%)
    failed: dict[int, tuple[str, str]] = field(default_factory=dict)  # seed → (status, reason)

    @property
    def mean(self) -> float | None:
        return fmean(self.by_seed.values()) if self.by_seed else None

    @property
    def std(self) -> float | None:
        return stdev(self.by_seed.values()) if len(self.by_seed) >= 2 else None


@dataclass
class Average:
    mean: float | None
    std: float | None
    n: int  # tasks in it
    total: int  # tasks it should have
    per_seed: dict[int, float]

    @property
    def partial(self) -> bool:
        return self.n < self.total


def _average(cells: list[Cell], total: int) -> Average:
    used = [c for c in cells if c.by_seed]
    if not used:
        return Average(None, None, 0, total, {})
    common = set.intersection(*(set(c.by_seed) for c in used))
    per_seed = {s: fmean(c.by_seed[s] for c in used) for s in sorted(common)}
    std = stdev(per_seed.values()) if len(per_seed) >= 2 else None
    return Average(fmean(c.mean for c in used), std, len(used), total, per_seed)


def _mean_of_averages(avgs: list[Average], total: int) -> Average:
    used = [a for a in avgs if a.mean is not None]
    if not used:
        return Average(None, None, 0, total, {})
    common = set.intersection(*(set(a.per_seed) for a in used))
    per_seed = {s: fmean(a.per_seed[s] for a in used) for s in sorted(common)}
    std = stdev(per_seed.values()) if len(per_seed) >= 2 else None
    return Average(fmean(a.mean for a in used), std, sum(a.n for a in used), total, per_seed)


@dataclass
class Row:
    method: str
    source: str  # "peftbench" or "published"
    cells: dict[str, Cell]
    group_means: dict[str, Average]
    mean_tasks: Average
    mean_groups: Average | None  # None when the table has a single group
    costs: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    caveat: str | None = None  # published rows: protocol caveat carried on the row
    footnote: int | None = None  # published rows: number of the source footnote

    @property
    def label(self) -> str:
        if self.source == "peftbench":
            return self.method
        text = f"{self.method} (published [{self.footnote}])"
        return f"{text} ⚠ {self.caveat}" if self.caveat else text

    @property
    def seed_text(self) -> str:
        if self.source != "peftbench":
            return ""
        counts = sorted({len(c.by_seed) for c in self.cells.values() if c.by_seed})
        if not counts:
            return "0"
        return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"


def make_row(method: str, source: str, cells: dict[str, Cell], layout: Layout) -> Row:
    group_means = {g: _average([cells[t] for t in tasks if t in cells], layout.group_totals.get(g, len(tasks)))
                   for g, tasks in layout.groups}
    mean_tasks = _average([cells[t] for t in layout.tasks if t in cells], layout.total)
    mean_groups = None
    if len(layout.groups) >= 2:
        mean_groups = _mean_of_averages(list(group_means.values()), layout.total)
    seeds = sorted({s for c in cells.values() for s in c.by_seed})
    return Row(method, source, cells, group_means, mean_tasks, mean_groups, seeds=seeds)


def _costs(records: list[dict]) -> dict[str, Any]:
    """Per-task means of the complete runs, then the mean over tasks; peak memory: the maximum."""
    per_task: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    mem, kinds, devices = [], set(), set()
    for rec in records:
        m = rec.get("metrics") or {}
        vals = per_task[rec["task"]]
        if m.get("trainable_params") is not None:
            vals["params_m"].append(m["trainable_params"] / 1e6)
            if m.get("head_params") is not None:
                vals["params_excl_head_m"].append(max(m["trainable_params"] - m["head_params"], 0) / 1e6)
        for key in ("gflops", "train_img_per_s", "infer_img_per_s"):
            if m.get(key) is not None:
                vals[key].append(m[key])
        if m.get("peak_mem_bytes") is not None:
            mem.append(m["peak_mem_bytes"] / 2**30)
            kinds.add(m.get("peak_mem_kind") or "unknown")
        if (rec.get("provenance") or {}).get("device"):
            devices.add(rec["provenance"]["device"])
    out: dict[str, Any] = {}
    for key in ("params_m", "params_excl_head_m", "gflops", "train_img_per_s", "infer_img_per_s"):
        task_means = [fmean(v[key]) for v in per_task.values() if v.get(key)]
        out[key] = fmean(task_means) if task_means else None
    out["peak_mem_gib"] = max(mem) if mem else None
    out["peak_mem_kind"] = sorted(kinds)
    out["devices"] = sorted(devices)
    return out


@dataclass
class Table:
    number: int
    setting: Setting
    layout: Layout
    rows: list[Row]  # ours
    references: list[Row]
    weights_names: list[str]
    devices: list[str]
    mem_kinds: list[str]
    notes: list[str]  # footnotes about cells (missing, failed, fewer seeds, duplicates)
    reference_notes: list[str]
    differs_from_first: list[str]

    @property
    def random_init(self) -> bool:
        return "none" in self.weights_names

    @property
    def metric(self) -> str:
        return metric_name(self.setting.protocol)

    def title(self) -> str:
        s = self.setting
        size = "×".join(str(v) for v in s.img_size) or "?"
        weights = ", ".join(w if w in ("none", "pretrained") else Path(w).name for w in self.weights_names)
        checksum = f", checksum {s.weights[:12]}" if s.weights and s.weights not in self.weights_names else ""
        metric = "val200 top-1" if self.metric == "val_top1" else "test top-1"
        flag = "⚠ RANDOM-INIT BACKBONE (weights: none) — " if self.random_init else ""
        return (f"{flag}{s.backbone} (weights {weights}{checksum}) · {size} px · suite {s.suite} · "
                f"protocol {s.protocol} ({metric}, %) · {s.epochs} epochs · {s.precision or 'precision unresolved'}")

    def short_title(self) -> str:
        s = self.setting
        size = "×".join(str(v) for v in s.img_size)
        flag = " · RANDOM INIT" if self.random_init else ""
        precision = s.precision or "precision unresolved"
        return f"Table {self.number}: {s.backbone} · {s.protocol} · {s.epochs} ep · {size} · {precision}{flag}"


def _latest(records: list[dict]) -> tuple[dict[tuple, dict], int]:
    """One record per (method, task, seed): the newest; the count of superseded ones."""
    by_key: dict[tuple, list[dict]] = defaultdict(list)
    for rec in records:
        by_key[(rec["method"], rec["task"], rec["seed"])].append(rec)
    chosen = {k: max(v, key=lambda r: (str(r.get("created") or ""), r.get("_path", ""))) for k, v in by_key.items()}
    return chosen, len(records) - len(chosen)


def _method_cells(chosen: dict[tuple, dict], method: str, metric: str) -> dict[str, Cell]:
    cells: dict[str, Cell] = defaultdict(Cell)
    for (m, task, seed), rec in chosen.items():
        if m != method:
            continue
        acc = (rec.get("metrics") or {}).get(metric)
        if rec["status"] == "complete" and acc is not None:
            cells[task].by_seed[seed] = float(acc)
        elif rec["status"] == "complete":
            cells[task].failed[seed] = ("failed", f"no {metric} in the record")
        else:
            cells[task].failed[seed] = (rec["status"], _one_line(rec.get("reason") or ""))
    return dict(cells)


def load_reference(path: Path | None = None) -> list[dict]:
    """Published per-task accuracies (method, task, top1, protocol, source[, params_m])."""
    if path is None:
        text = resources.files("peftbench").joinpath("resources/published_vtab1k.csv").read_text()
    else:
        text = Path(path).read_text()
    return list(csv.DictReader(io.StringIO(text)))


def _reference_rows(reference: list[dict], layout: Layout) -> tuple[list[Row], list[str]]:
    by_method: dict[str, list[dict]] = {}
    for line in reference:
        by_method.setdefault(line["method"], []).append(line)
    sources: dict[tuple[str, str], int] = {}
    rows = []
    for method, lines in by_method.items():
        cells = {ln["task"]: Cell({0: float(ln["top1"])}) for ln in lines if ln["task"] in layout.tasks}
        if not cells:
            continue
        row = make_row(method, "published", cells, layout)
        note_key = (lines[0]["source"], lines[0]["protocol"])
        row.footnote = sources.setdefault(note_key, len(sources) + 1)
        protocol = lines[0]["protocol"]
        if any(marker in protocol.lower() for marker in _CAVEAT_MARKERS):
            row.caveat = protocol
        params = [float(ln["params_m"]) for ln in lines if ln.get("params_m")]
        row.costs = {"params_m": fmean(params) if params else None}
        rows.append(row)
    notes = [f"[{n}] {source}. Protocol: {protocol}." for (source, protocol), n in sources.items()]
    return rows, notes


def summary_tables(records: list[dict], reference: list[dict] | None = None) -> list[Table]:
    """Records → one Table per comparable setting (pure; no files)."""
    tables: list[Table] = []
    for number, (setting, recs) in enumerate(split_settings(records).items(), start=1):
        chosen, superseded = _latest(recs)
        metric = metric_name(setting.protocol)
        layout = task_layout(setting.suite, {t for (_, t, _) in chosen})
        rows = []
        for method in sorted({m for (m, _, _) in chosen}):
            row = make_row(method, "peftbench", _method_cells(chosen, method, metric), layout)
            row.costs = _costs([r for (m, _, _), r in chosen.items() if m == method and r["status"] == "complete"])
            rows.append(row)
        notes = _cell_notes(rows, layout)
        if superseded:
            notes.append(f"{superseded} older run(s) of the same method, task and seed were superseded by newer "
                         "records and ignored.")
        weights_names = sorted({str((r.get("backbone") or {}).get("weights")) for r in recs})
        refs, ref_notes = [], []
        if reference is not None:
            if setting.suite != REFERENCE_SUITE:
                ref_notes = ["No published reference rows: they are VTAB-1k numbers and this table is for "
                             + f"suite '{setting.suite}'."]
            elif "none" in weights_names:
                ref_notes = ["No published reference rows: they come from a pre-trained backbone and this table's "
                             + "backbone is randomly initialised."]
            elif setting.protocol == "val":
                ref_notes = ["No published reference rows: they are test accuracies and this table reports "
                             + "val200 accuracy."]
            else:
                refs, ref_notes = _reference_rows(reference, layout)
        mem_kinds = {(r.get("metrics") or {}).get("peak_mem_kind") for r in recs if r["status"] == "complete"}
        tables.append(Table(
            number=number, setting=setting, layout=layout, rows=rows, references=refs,
            weights_names=weights_names,
            devices=sorted({d for row in rows for d in row.costs["devices"]}),
            mem_kinds=sorted(k for k in mem_kinds if k),
            notes=notes, reference_notes=ref_notes,
            differs_from_first=setting.differences(tables[0].setting) if tables else []))
    return tables


def _cell_notes(rows: list[Row], layout: Layout) -> list[str]:
    excluded: list[str] = []
    fewer: list[str] = []
    for row in rows:
        out = []
        for task in layout.tasks:
            cell = row.cells.get(task)
            if cell is None:
                out.append(f"{task} (no run)")
            elif not cell.by_seed:
                out.append(f"{task} ({_failures(cell)})")
            elif cell.failed:
                fewer.append(f"{row.method} / {task}: over {len(cell.by_seed)} of "
                             f"{len(cell.by_seed) + len(cell.failed)} seeds; {_failures(cell)}")
        if out:
            excluded.append(f"{row.method}: " + ", ".join(out))
    notes = []
    if excluded:
        notes.append("Not in the means (no completed run): " + "; ".join(excluded) + ".")
    if fewer:
        notes.append("† " + "; ".join(fewer) + ".")
    return notes


def _failures(cell: Cell) -> str:
    parts = []
    for seed, (status, reason) in sorted(cell.failed.items()):
        parts.append(f"seed {seed} {status}" + (f": {reason}" if reason else ""))
    return ", ".join(parts)


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ----------------------------------------------------------------------------------------------
# markdown


def _fmt_acc(value: float | None, std: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.1f}" + (f" ± {std:.1f}" if std is not None else "")


def _fmt_avg(avg: Average | None) -> str:
    if avg is None or avg.mean is None:
        return "–"
    return _fmt_acc(avg.mean, avg.std) + (f" ({avg.n}/{avg.total})" if avg.partial else "")


def _fmt_cell(cell: Cell | None) -> str:
    if cell is None:
        return "–"
    if not cell.by_seed:
        return "/".join(sorted({_STATUS_TEXT.get(s, s) for s, _ in cell.failed.values()}))
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


def table_columns(layout: Layout) -> list[tuple[str, str]]:
    """(column id, header) in display order: tasks with each group's mean after the group."""
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
             ("gflops", "GFLOPs"), ("train_img_per_s", "Train img/s"), ("infer_img_per_s", "Infer img/s"),
             ("peak_mem_gib", "Peak mem (GiB)"), ("seeds", "Seeds")]
    return cols


def _row_cells(row: Row, cols: list[tuple[str, str]], mixed_mem: bool) -> list[str]:
    out = []
    for col, _ in cols:
        kind, _, name = col.partition(":")
        if col == "method":
            out.append(row.label)
        elif kind == "task":
            cell = row.cells.get(name)
            out.append(_fmt_cell(cell))
        elif kind == "group":
            out.append(_fmt_avg(row.group_means.get(name)))
        elif col == "mean_tasks":
            out.append(_fmt_avg(row.mean_tasks))
        elif col == "mean_groups":
            out.append(_fmt_avg(row.mean_groups))
        elif col == "seeds":
            out.append(row.seed_text)
        elif col == "peak_mem_gib":
            text = _fmt_num(row.costs.get(col), "mem")
            if text and mixed_mem:
                text += " (" + "/".join(_MEM_KIND.get(k, k) for k in row.costs.get("peak_mem_kind", [])) + ")"
            out.append(text)
        else:
            kind = "params" if col.startswith("params") else "gflops" if col == "gflops" else "rate"
            out.append(_fmt_num(row.costs.get(col), kind))
    return out


_MEM_KIND = {"cuda_max_allocated": "CUDA max allocated", "process_peak_rss": "process peak RSS"}


def markdown_table(table: Table) -> list[str]:
    """The table in the papers' form: our rows, then the published reference rows."""
    cols = table_columns(table.layout)
    mixed_mem = len(table.mem_kinds) > 1
    lines = ["| " + " | ".join(_esc(h) for _, h in cols) + " |",
             "|" + "|".join(":---" if c == "method" else "---:" for c, _ in cols) + "|"]
    for row in [*table.rows, *table.references]:
        lines.append("| " + " | ".join(_esc(v) for v in _row_cells(row, cols, mixed_mem)) + " |")
    return lines


def _plot_names(number: int) -> dict[str, str]:
    suffix = "" if number == 1 else f"_table{number}"
    return {kind: f"{kind}{suffix}" for kind in ("accuracy_vs_params", "heatmap", "accuracy_vs_throughput",
                                                  "group_means")}


_PLOT_CAPTIONS = {
    "accuracy_vs_params": "Mean top-1 vs trainable parameters",
    "heatmap": "Per-task top-1",
    "accuracy_vs_throughput": "Mean top-1 vs inference throughput",
    "group_means": "Group means",
}


def render_markdown(tables: list[Table], records: list[dict], problems: list[str], runs_dir: Path,
                    generated: str | None = None) -> str:
    """The whole summary.md (pure: tables and records in, text out)."""
    generated = generated or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    counts = status_counts(records)
    out = ["# peftbench report", "",
           f"Generated {generated} from `{runs_dir}`: {len(records)} record(s) in {len(tables)} table(s) — "
           + ", ".join(f"{n} {s}" for s, n in counts.items())
           + (f"; {len(problems)} unreadable file(s) skipped." if problems else "."), ""]
    if len(tables) > 1:
        out += ["Runs that are not comparable (backbone, weights, image size, protocol, epochs, precision or "
                + "suite differ) are in separate tables.", ""]
    for table in tables:
        out += [f"## Table {table.number} — {table.title()}", ""]
        if table.differs_from_first:
            out += [f"Differs from Table 1 in: {', '.join(table.differs_from_first)}.", ""]
        out += markdown_table(table) + [""]
        out += [f"- {note}" for note in [*table.notes, *_column_notes(table), *table.reference_notes]]
        out.append("")
        for kind, name in _plot_names(table.number).items():
            out.append(f"![{_PLOT_CAPTIONS[kind]} (Table {table.number})]({name}.png)")
        out.append("")
    out += render_status(records, runs_dir)
    if problems:
        out += ["", "## Skipped files", "", *[f"- {_esc(_one_line(p, 400))}" for p in problems]]
    return "\n".join(out).rstrip() + "\n"


def _column_notes(table: Table) -> list[str]:
    notes = ["Cells: mean ± sample std over seeds (± only with 2 or more seeds); averages are means of the cells, "
             + "their ± the std of per-seed averages; (n/N) marks an average over n of the suite's N tasks."]
    notes.append("Params: trainable parameters in millions, mean over tasks, with and without the classifier "
                 "head; GFLOPs: inference per image; img/s: training and inference throughput; all from "
                 "complete runs.")
    if table.mem_kinds:
        kinds = ", ".join(_MEM_KIND.get(k, k) for k in table.mem_kinds)
        notes.append(f"Peak mem: largest over the runs ({kinds})"
                     + ("; the kinds differ between runs, so the numbers are not comparable." if len(
                         table.mem_kinds) > 1 else "."))
    if len(table.devices) > 1:
        notes.append("Throughput measured on different devices (" + ", ".join(table.devices)
                     + "): images/s are not comparable across them.")
    elif table.devices:
        notes.append(f"Device: {table.devices[0]}.")
    if table.references and not any(r.costs.get("params_m") for r in table.references):
        notes.append("Published rows have no parameter counts in the reference file, so they are absent from "
                     "the accuracy-vs-parameters plot.")
    return notes


def status_counts(records: list[dict]) -> dict[str, int]:
    counts = Counter(r["status"] for r in records)
    return {s: counts.get(s, 0) for s in ("complete", "diverged", "oom", "failed")} | {
        s: n for s, n in counts.items() if s not in ("complete", "diverged", "oom", "failed")}


def render_status(records: list[dict], runs_dir: Path) -> list[str]:
    out = ["## Run status", "", "| status | runs |", "|:---|---:|"]
    out += [f"| {s} | {n} |" for s, n in status_counts(records).items()]
    bad = sorted((r for r in records if r["status"] != "complete"),
                 key=lambda r: (r["method"], r["task"], r["seed"]))
    if bad:
        out += ["", "Runs that did not complete:", "", "| method | task | seed | status | reason |",
                "|:---|:---|---:|:---|:---|"]
        out += [f"| {_esc(r['method'])} | {_esc(r['task'])} | {r['seed']} | {r['status']} | "
                f"{_esc(_one_line(r.get('reason') or ''))} |" for r in bad]
    return out


# ----------------------------------------------------------------------------------------------
# CSV / JSON


def _avg_dict(avg: Average | None) -> dict | None:
    if avg is None:
        return None
    return {"mean": avg.mean, "std": avg.std, "n_tasks": avg.n, "of_tasks": avg.total}


def table_rows_flat(table: Table) -> list[dict]:
    """One flat row per table row (ours and published) with numbers, not formatted text."""
    out = []
    setting = asdict(table.setting) | {"img_size": "x".join(str(v) for v in table.setting.img_size)}
    for row in [*table.rows, *table.references]:
        flat: dict[str, Any] = {"table": table.number, "source": row.source, "method": row.method,
                                "label": row.label, "seeds": row.seed_text, **setting}
        for task in table.layout.tasks:
            cell = row.cells.get(task)
            flat[task] = cell.mean if cell else None
            flat[f"{task}_std"] = cell.std if cell else None
            flat[f"{task}_n_seeds"] = len(cell.by_seed) if cell else 0
        for group, avg in row.group_means.items():
            flat[f"mean_{group}"], flat[f"mean_{group}_std"] = avg.mean, avg.std
            flat[f"mean_{group}_n_tasks"], flat[f"mean_{group}_of_tasks"] = avg.n, avg.total
        for name, avg in (("mean_tasks", row.mean_tasks), ("mean_group_means", row.mean_groups)):
            if avg is not None:
                flat[name], flat[f"{name}_std"] = avg.mean, avg.std
                flat[f"{name}_n_tasks"], flat[f"{name}_of_tasks"] = avg.n, avg.total
        for key in ("params_m", "params_excl_head_m", "gflops", "train_img_per_s", "infer_img_per_s",
                    "peak_mem_gib"):
            flat[key] = row.costs.get(key)
        flat["caveat"] = row.caveat
        out.append(flat)
    return out


def summary_csv(tables: list[Table]) -> str:
    rows = [r for t in tables for r in table_rows_flat(t)]
    names: dict[str, None] = {}
    for r in rows:
        names.update(dict.fromkeys(r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(names), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if v is None else v for k, v in r.items()})
    return buf.getvalue()


def summary_json(tables: list[Table], records: list[dict], problems: list[str], runs_dir: Path) -> dict:
    def row_json(row: Row) -> dict:
        return {"method": row.method, "source": row.source, "label": row.label, "caveat": row.caveat,
                "seeds": row.seeds,
                "cells": {t: {"mean": c.mean, "std": c.std, "by_seed": {str(s): v for s, v in c.by_seed.items()},
                              "failed": {str(s): {"status": st, "reason": why} for s, (st, why) in c.failed.items()}}
                          for t, c in row.cells.items()},
                "group_means": {g: _avg_dict(a) for g, a in row.group_means.items()},
                "mean_tasks": _avg_dict(row.mean_tasks), "mean_group_means": _avg_dict(row.mean_groups),
                "costs": row.costs}

    return {
        "runs_dir": str(runs_dir),
        "status": status_counts(records),
        "not_complete": [{k: r.get(k) for k in ("method", "task", "seed", "status", "reason", "run_id")}
                         for r in records if r["status"] != "complete"],
        "skipped_files": problems,
        "tables": [{"number": t.number, "title": t.title(), "setting": asdict(t.setting),
                    "random_init": t.random_init, "metric": t.metric, "differs_from_table_1": t.differs_from_first,
                    "groups": {g: ts for g, ts in t.layout.groups}, "suite_tasks": t.layout.total,
                    "rows": [row_json(r) for r in t.rows], "references": [row_json(r) for r in t.references],
                    "notes": t.notes + t.reference_notes} for t in tables],
    }


# ----------------------------------------------------------------------------------------------
# plots (matplotlib Figure objects on the Agg canvas; no pyplot global state)


def _figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _style(methods: list[str]) -> dict[str, tuple[Any, str]]:
    """A fixed colour and marker per method, the same in every plot of a report."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    markers = "osD^vP*Xh<>p"
    return {m: (cmap(i % cmap.N), markers[i % len(markers)]) for i, m in enumerate(methods)}


def _title(fig, title: str, table: Table) -> None:
    """Figure-level title (constrained layout keeps it clear of the legend), wrapped to the width."""
    width = int(fig.get_figwidth() * 11)
    sub = "\n".join(textwrap.wrap(table.short_title(), width))
    fig.suptitle(f"{title}\n{sub}", fontsize=11)


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.4")


def _legend_label(row: Row) -> str:
    avg = row.mean_tasks
    return row.method + (f" ({avg.n}/{avg.total} tasks)" if avg.partial else "")


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (fewer or equal parameters and higher or equal
    accuracy, one of them strictly), sorted by parameters."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(x2 <= x and y2 >= y and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def _scatter(table: Table, style: dict, xkey: str, xlabel: str, title: str, refs: bool):
    fig = _figure(SCATTER_SIZE)
    ax = fig.add_subplot()
    rows = [r for r in table.rows if r.costs.get(xkey) and r.mean_tasks.mean is not None]
    pts = [(r.costs[xkey], r.mean_tasks.mean) for r in rows]
    ref_rows = [r for r in table.references if refs and r.costs.get(xkey) and r.mean_tasks.mean is not None]
    if xkey == "params_m":
        front = pareto_front(pts)
        if len(front) >= 2:
            ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], drawstyle="steps-post", color="0.3",
                    lw=1.2, ls="--", zorder=1, label="Pareto front (ours)")
        for i in front:
            ax.scatter(*pts[i], s=260, facecolors="none", edgecolors="black", linewidths=1.6, zorder=2)
    for row, (x, y) in zip(rows, pts):
        color, marker = style[row.method]
        if row.mean_tasks.std is not None:
            ax.errorbar(x, y, yerr=row.mean_tasks.std, fmt="none", ecolor=color, capsize=3, zorder=3)
        ax.scatter(x, y, s=90, color=color, marker=marker, edgecolors="white", linewidths=0.8, zorder=4,
                   label=_legend_label(row))
    for row in ref_rows:
        color, marker = style.get(row.method, ("0.4", "o"))
        ax.scatter(row.costs[xkey], row.mean_tasks.mean, s=90, facecolors="none", edgecolors=[color],
                   marker=marker, linewidths=1.6, zorder=4, label=f"{row.method} (published, hollow)")
    if not rows and not ref_rows:
        _no_data(ax, "no complete runs with this measurement")
    else:
        xs = [p[0] for p in pts] + [r.costs[xkey] for r in ref_rows]
        if xkey == "params_m" or max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        fig.legend(loc="outside lower center", ncols=4, fontsize=9, frameon=False)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"Mean {_metric_label(table)} over tasks (%)")
    ax.grid(True, which="major", alpha=0.3)
    _title(fig, title, table)
    return fig


def _metric_label(table: Table) -> str:
    return "val200 top-1" if table.metric == "val_top1" else "test top-1"


def plot_accuracy_vs_params(table: Table, style: dict):
    return _scatter(table, style, "params_m", "Trainable parameters incl. head (M, log scale)",
                    "Accuracy vs trainable parameters", refs=True)


def plot_accuracy_vs_throughput(table: Table, style: dict):
    device = f", {table.devices[0]}" if len(table.devices) == 1 else ""
    return _scatter(table, style, "infer_img_per_s", f"Inference throughput (images/s{device})",
                    "Accuracy vs inference throughput", refs=False)


def heatmap_figsize(n_rows: int, n_cols: int) -> tuple[float, float]:
    """Inches; multiples of 0.1 so that size × DPI is a whole number of pixels."""
    return (round(max(8.0, 3.4 + 0.62 * n_cols), 1), round(2.6 + 0.42 * n_rows, 1))


def plot_heatmap(table: Table):
    import numpy as np
    from matplotlib import colormaps

    rows = [*table.rows, *table.references]
    tasks = table.layout.tasks
    cols = [*tasks, "mean"]
    data = np.full((len(rows), len(cols)), np.nan)
    text = [["" for _ in cols] for _ in rows]
    for i, row in enumerate(rows):
        for j, task in enumerate(tasks):
            cell = row.cells.get(task)
            if cell and cell.by_seed:
                data[i, j] = cell.mean
                text[i][j] = f"{cell.mean:.1f}" + ("†" if cell.failed else "")
            elif cell and cell.failed:
                text[i][j] = "/".join(sorted({_STATUS_TEXT.get(s, s)[:4] for s, _ in cell.failed.values()}))
            else:
                text[i][j] = "–"
        if row.mean_tasks.mean is not None:
            data[i, -1] = row.mean_tasks.mean
            text[i][-1] = f"{row.mean_tasks.mean:.1f}" + ("*" if row.mean_tasks.partial else "")
    fig = _figure(heatmap_figsize(len(rows), len(cols)))
    ax = fig.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad="0.88")
    img = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(cols)):
            value = data[i, j]
            dark = not np.isnan(value) and sum(cmap(value / 100)[:3]) < 1.6
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7.5, color="white" if dark else "black")
    ax.set_xticks(range(len(cols)), [*tasks, "Mean (* partial)"], rotation=45, ha="right", rotation_mode="anchor",
                  fontsize=8.5)
    ax.set_yticks(range(len(rows)), [r.method + (" (published)" if r.source != "peftbench" else "") for r in rows],
                  fontsize=9)
    edge = 0
    for _, ts in table.layout.groups:
        edge += len(ts)
        ax.axvline(edge - 0.5, color="white", lw=3)
    if table.references:
        ax.axhline(len(table.rows) - 0.5, color="white", lw=4)
    ax.tick_params(length=0)
    ax.set_xlabel("Task (groups separated by white lines)")
    ax.set_ylabel("Method")
    fig.colorbar(img, ax=ax, label=f"{_metric_label(table)} (%)", fraction=0.04, pad=0.02)
    _title(fig, f"Per-task {_metric_label(table)} (%); † fewer seeds, – no run", table)
    return fig


def plot_group_means(table: Table, style: dict):
    import numpy as np
    from matplotlib.patches import Patch

    fig = _figure(BAR_SIZE)
    ax = fig.add_subplot()
    bars = [(g.capitalize(), g) for g, _ in table.layout.groups] + [("All tasks", None)]
    rows = [r for r in table.rows if r.mean_tasks.mean is not None]
    width = 0.8 / max(len(rows), 1)
    partial_any = False
    for k, row in enumerate(rows):
        color, _ = style[row.method]
        avgs = [row.group_means.get(g) if g else row.mean_tasks for _, g in bars]
        xs = np.arange(len(bars)) - 0.4 + width * (k + 0.5)
        heights = [a.mean if a and a.mean is not None else 0 for a in avgs]
        errs = [a.std if a and a.std is not None else 0 for a in avgs]
        hatches = ["//" if a and a.partial else "" for a in avgs]
        partial_any |= any(hatches)
        for x, h, e, hatch in zip(xs, heights, errs, hatches):
            ax.bar(x, h, width=width * 0.92, color=color, hatch=hatch, edgecolor="white", linewidth=0.5)
            if e:
                ax.errorbar(x, h, yerr=e, fmt="none", ecolor="black", capsize=3, lw=1)
    handles = [Patch(facecolor=style[r.method][0], label=r.method) for r in rows]
    if partial_any:
        handles.append(Patch(facecolor="0.7", hatch="//", edgecolor="white", label="mean over fewer tasks"))
    if any(r.seeds and len(r.seeds) > 1 for r in rows):
        handles.append(Patch(facecolor="none", edgecolor="none", label="error bars: std over seeds"))
    if rows:
        fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=9, frameon=False)
    else:
        _no_data(ax, "no complete runs")
    ax.set_xticks(range(len(bars)), [name for name, _ in bars])
    ax.set_ylim(0, 100)
    ax.set_xlabel("Task group")
    ax.set_ylabel(f"Mean {_metric_label(table)} (%)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    _title(fig, "Mean accuracy per task group", table)
    return fig


def table_figures(table: Table, style: dict) -> dict[str, Any]:
    names = _plot_names(table.number)
    return {names["accuracy_vs_params"]: plot_accuracy_vs_params(table, style),
            names["heatmap"]: plot_heatmap(table),
            names["accuracy_vs_throughput"]: plot_accuracy_vs_throughput(table, style),
            names["group_means"]: plot_group_means(table, style)}


# ----------------------------------------------------------------------------------------------
# writing


def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    return atomic_write(path, write, durable=False)  # a report can simply be written again


def _atomic_text(path: Path, text: str) -> Path:
    return _atomic(path, lambda tmp: tmp.write_text(text))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return list(obj)
    return str(obj)


def write_report(runs_dir: Path, out_dir: Path, reference: bool = True,
                 on_problem: Callable[[str], None] | None = None) -> list[Path]:
    """Read the records under ``runs_dir``, write the report into ``out_dir``; return the files.

    Unreadable files are skipped; each message goes to ``on_problem`` (default: log warning)
    and into summary.md / summary.json. Raises UsageError when there is no record at all.
    """
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    if not runs_dir.is_dir():
        raise UsageError(f"runs folder '{runs_dir}' does not exist")
    records, problems = load_records(runs_dir)
    for problem in problems:
        (on_problem or log.warning)(problem)
    if not records:
        extra = f" ({len(problems)} unreadable file(s) skipped)" if problems else ""
        raise UsageError(f"no peftbench records under '{runs_dir}'{extra}")
    tables = summary_tables(records, load_reference() if reference else None)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [
        _atomic_text(out_dir / "summary.md", render_markdown(tables, records, problems, runs_dir)),
        _atomic_text(out_dir / "summary.csv", summary_csv(tables)),
        _atomic_text(out_dir / "summary.json", json.dumps(finite(summary_json(tables, records, problems, runs_dir)),
                                                          indent=2, default=_json_default) + "\n"),
        _atomic(out_dir / "records.csv", lambda tmp: to_dataframe(records).to_csv(tmp, index=False)),
    ]
    style = _style(sorted({r.method for t in tables for r in [*t.rows, *t.references]}))
    for table in tables:
        for name, fig in table_figures(table, style).items():
            for fmt in ("png", "svg"):
                meta = {"Date": None} if fmt == "svg" else {"Software": None}
                written.append(_atomic(out_dir / f"{name}.{fmt}",
                                       lambda tmp, fig=fig, fmt=fmt, meta=meta: fig.savefig(
                                           tmp, format=fmt, dpi=DPI, metadata=meta)))
    return written
