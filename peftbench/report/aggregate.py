"""Cells, averages, rows and tables: the aggregation of records into what the report shows.

Pure functions of the records (no files, no plots): ``summary_tables(records, reference)``
returns one ``Table`` per comparable setting (see ``setting.py``); the rules are in the
package docstring.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from statistics import fmean, stdev
from typing import Any

import pandas as pd

from .setting import Layout, Setting, metric_name, split_settings, task_layout
from .stats import average_interval, tied_in_average, tied_in_task

REFERENCE_SUITE = "vtab1k"
RECIPE_NOTE = ("Recipe '{recipe}': a reproduction of the authors' published per-task settings. The authors chose "
               "these settings by maximum test accuracy (test-set selection), so these rows are not comparable to "
               "shared-recipe or tuned rows and are never averaged with them. The authors' codes also report the "
               "best of their periodic test evaluations; these runs evaluate the test split once, after the last "
               "epoch.")
REFERENCE_BACKBONE = "vit_base_patch16_224.orig_in21k"  # the published rows' backbone and weights: ViT-B/16 in21k
SYNTHETIC_FLAG = "SYNTHETIC DATA — timing only"
STATUS_TEXT = {"diverged": "diverged", "oom": "OOM", "failed": "failed"}
_CAVEAT_MARKERS = ("best test", "test-set selection")  # reference protocols that selected on test

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
    ci: tuple[float, float] | None = None  # 95% stratified-bootstrap interval (stats.average_interval)

    @property
    def partial(self) -> bool:
        return self.n < self.total


def _average(cells: list[Cell], total: int) -> Average:
    used = [c for c in cells if c.by_seed]
    return _combine([c.mean for c in used], [c.by_seed for c in used], len(used), total)


def _mean_of_averages(avgs: list[Average], total: int) -> Average:
    used = [a for a in avgs if a.mean is not None]
    return _combine([a.mean for a in used], [a.per_seed for a in used], sum(a.n for a in used), total)


def _combine(means: list[float], by_seed: list[dict[int, float]], n: int, total: int) -> Average:
    """The mean of the parts' means; the spread over seeds from the per-seed means of the seeds
    every part has (a seed missing somewhere would bias the std). ``fmean``/``stdev`` (exactly
    rounded) rather than pandas' own mean: the exported numbers stay bit-for-bit stable."""
    if not means:
        return Average(None, None, 0, total, {})
    common = pd.DataFrame(by_seed).dropna(axis="columns")  # parts × seeds, seeds every part has
    per_seed = {seed: fmean(common[seed]) for seed in sorted(common.columns)}
    std = stdev(per_seed.values()) if len(per_seed) >= 2 else None
    return Average(fmean(means), std, n, total, per_seed)


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
    if source == "peftbench":
        _add_intervals(cells, layout, group_means, mean_tasks, mean_groups)
    return Row(method, source, cells, group_means, mean_tasks, mean_groups, seeds=seeds)


def _add_intervals(cells: dict[str, Cell], layout: Layout, group_means: dict[str, Average], mean_tasks: Average,
                   mean_groups: Average | None) -> None:
    """The 95% intervals of a row's averages, over the cells that are in each average."""
    used = {t: cells[t].by_seed for t in layout.tasks if t in cells and cells[t].by_seed}
    for group, tasks in layout.groups:
        group_means[group].ci = average_interval([used[t] for t in tasks if t in used])
    mean_tasks.ci = average_interval(list(used.values()))
    if mean_groups is not None:
        order = list(used)
        groups = [[order.index(t) for t in tasks if t in used] for _, tasks in layout.groups]
        mean_groups.ci = average_interval(list(used.values()), [g for g in groups if g])


COST_KEYS = ("params_m", "params_excl_head_m", "stored_m", "gflops", "train_img_per_s", "infer_img_per_s")
RATE_KEYS = ("train_img_per_s", "infer_img_per_s")


def _cost_frame(records: list[dict]) -> pd.DataFrame:
    """One row per record: its task and its costs in the report's units (NaN where not measured)."""
    rows = []
    for rec in records:
        m = rec.get("metrics") or {}
        trainable, head, mem = m.get("trainable_params"), m.get("head_params"), m.get("peak_mem_bytes")
        rows.append({
            "task": rec["task"],
            "params_m": None if trainable is None else trainable / 1e6,
            "params_excl_head_m": None if trainable is None or head is None else max(trainable - head, 0) / 1e6,
            # trainable + what else the method keeps per task (absent from records before it was measured)
            "stored_m": None if m.get("stored_per_task_params") is None else m["stored_per_task_params"] / 1e6,
            **{key: m.get(key) for key in ("gflops", "train_img_per_s", "infer_img_per_s")},
            "peak_mem_gib": None if mem is None else mem / 2**30,
            "peak_mem_kind": None if mem is None else (m.get("peak_mem_kind") or "unknown"),
            "device": (rec.get("provenance") or {}).get("device") or None,
        })
    frame = pd.DataFrame(rows, columns=["task", *COST_KEYS, "peak_mem_gib", "peak_mem_kind", "device"])
    return frame.astype({key: float for key in (*COST_KEYS, "peak_mem_gib")})


def _costs(records: list[dict]) -> dict[str, Any]:
    """Per-task means of the complete runs, then the mean over tasks (a task with more seeds
    does not weigh more); peak memory: the maximum over the runs."""
    frame = _cost_frame(records)
    over_tasks = frame.groupby("task")[list(COST_KEYS)].mean().mean()  # NaN-skipping at both levels
    out: dict[str, Any] = {key: _number(over_tasks.get(key)) for key in COST_KEYS}
    for key in RATE_KEYS:  # the spread of a speed over the method's runs: what differences it can resolve
        out[f"{key}_std"] = _number(frame[key].std()) if frame[key].count() >= 2 else None
    out["peak_mem_gib"] = _number(frame["peak_mem_gib"].max())
    out["peak_mem_kind"] = sorted(frame["peak_mem_kind"].dropna().unique())
    out["devices"] = sorted(frame["device"].dropna().unique())
    return out


def speed_ties(rows: list[Row], key: str = "infer_img_per_s") -> list[list[str]]:
    """Groups of two or more methods whose speeds lie within one another's spread (mean ± std over runs
    overlap, chained): their speed differences are measurement noise, not a ranking."""
    spans = []
    for row in rows:
        if row.costs.get(key) is not None:
            spread = row.costs.get(f"{key}_std") or 0.0
            spans.append((row.costs[key] - spread, row.costs[key] + spread, row.method))
    groups: list[list[str]] = []
    reach = float("-inf")  # the right end of the current group's merged intervals
    for low, high, method in sorted(spans):
        if groups and low <= reach:
            groups[-1].append(method)
            reach = max(reach, high)
        else:
            groups.append([method])
            reach = high
    return [sorted(g) for g in groups if len(g) >= 2]


def _number(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


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
    ties: dict[str, set[str]] = field(default_factory=dict)  # column id → our methods tied with its best

    @property
    def one_seed(self) -> bool:
        """No cell of ours has two or more seeds: no interval, no test within a task."""
        return not any(len(c.by_seed) >= 2 for r in self.rows for c in r.cells.values())

    @property
    def random_init(self) -> bool:
        return "none" in self.weights_names

    @property
    def metric(self) -> str:
        return metric_name(self.setting.protocol)

    def title(self) -> str:
        s = self.setting
        size = "×".join(str(v) for v in s.img_size) or "?"
        # one name per file name: the same checkpoint from two install paths (the checksum is the table's key)
        names = dict.fromkeys(w if w in ("none", "pretrained") else Path(w).name for w in self.weights_names)
        weights = ", ".join(names)
        checksum = f", checksum {s.weights[:12]}" if s.weights and s.weights not in self.weights_names else ""
        metric = "val200 top-1" if self.metric == "val_top1" else "test top-1"
        flag = "⚠ RANDOM-INIT BACKBONE (weights: none) — " if self.random_init else ""
        recipe = f" · recipe {s.recipe} (authors' settings, chosen on test)" if s.recipe != "shared" else ""
        flag = f"⚠ {SYNTHETIC_FLAG} — {flag}" if s.synthetic else flag
        return (f"{flag}{s.backbone} (weights {weights}{checksum}) · {size} px · suite {s.suite} · "
                f"protocol {s.protocol} ({metric}, %) · {s.epochs} epochs · {s.precision or 'precision unresolved'}"
                f"{recipe} · data {s.data_source}")

    def short_title(self) -> str:
        s = self.setting
        size = "×".join(str(v) for v in s.img_size)
        flag = " · RANDOM INIT" if self.random_init else ""
        flag += f" · {SYNTHETIC_FLAG}" if s.synthetic else ""
        precision = s.precision or "precision unresolved"
        return (f"Table {self.number}: {s.backbone} · {s.protocol} · {s.epochs} ep · {size} · {precision} · "
                f"data {s.data_source}{flag}")


def _config_key(record: dict) -> str:
    return json.dumps(record.get("config"), sort_keys=True, default=str)


def _latest(records: list[dict]) -> tuple[pd.DataFrame, int]:
    """One run per (method, task, seed), all of one configuration per (method, task): the newest
    record's. Runs of another configuration (lr 0.1 next to lr 0.5) are superseded, never averaged
    into the same cell. Returns the chosen runs (one row each, ``record`` holding the record, in the
    order the records first name their cell and seed) and the count of superseded ones."""
    frame = pd.DataFrame([(r["method"], r["task"], r["seed"], _config_key(r), str(r.get("created") or ""),
                           r.get("_path", ""), r) for r in records],
                         columns=["method", "task", "seed", "config", "created", "path", "record"],
                         dtype=object)  # keeps each seed the record's own value (no int→float for a None)
    frame["order"] = frame.index
    cell, run = ["method", "task"], ["method", "task", "seed"]
    # newest first (by creation time, then file path); of two equally new records the earlier one wins
    newest = frame.sort_values(["created", "path", "order"], ascending=[False, False, True])
    newest = newest[newest["config"] == newest.groupby(cell, dropna=False)["config"].transform("first")]
    chosen = newest.drop_duplicates(run).assign(
        cell_first=lambda f: frame.groupby(cell, dropna=False)["order"].transform("min")[f.index],
        run_first=lambda f: newest.groupby(run, dropna=False)["order"].transform("min")[f.index])
    return chosen.sort_values(["cell_first", "run_first"]), len(records) - len(chosen)


def _method_cells(chosen: pd.DataFrame, metric: str) -> dict[str, Cell]:
    """One method's chosen runs → a Cell per task: the accuracies of its complete seeds and why
    the others are not in it."""
    cells = {}
    for task, runs in chosen.groupby("task", sort=False, dropna=False):
        cell = cells[task] = Cell()
        for seed, rec in zip(runs["seed"], runs["record"]):
            acc = (rec.get("metrics") or {}).get(metric)
            if rec["status"] == "complete" and acc is not None:
                cell.by_seed[seed] = float(acc)
            elif rec["status"] == "complete":
                cell.failed[seed] = ("failed", f"no {metric} in the record")
            else:
                cell.failed[seed] = (rec["status"], one_line(rec.get("reason") or ""))
    return cells


REFERENCE_FILE = "resources/published_vtab1k_all.csv"


def load_reference(path: Path | None = None) -> list[dict]:
    """Published per-task accuracies (method, task, top1, protocol, source[, variant, params_m,
    published_means, also_in]): one line per task of each published row, methods named as the harness
    names them."""
    if path is None:
        text = resources.files("peftbench").joinpath(REFERENCE_FILE).read_text()
    else:
        text = Path(path).read_text()
    return list(csv.DictReader(io.StringIO(text)))


def _reference_rows(reference: list[dict], layout: Layout, methods: set[str]) -> tuple[list[Row], list[str]]:
    """Published rows of the table's methods, one per (method, variant, source); both means are
    recomputed from the per-task numbers like ours (the published mean is quoted in a note)."""
    by_row: dict[tuple[str, str, str], list[dict]] = {}
    for line in reference:
        if line["method"] in methods:
            by_row.setdefault((line["method"], line.get("variant") or "", line["source"]), []).append(line)
    sources: dict[tuple[str, str], int] = {}
    rows, printed = [], []
    for (method, variant, _), lines in by_row.items():
        cells = {ln["task"]: Cell({0: float(ln["top1"])}) for ln in lines if ln["task"] in layout.tasks}
        if not cells:
            continue
        row = make_row(f"{method} {variant}" if variant else method, "published", cells, layout)
        note_key = (lines[0]["source"], lines[0]["protocol"])
        row.footnote = sources.setdefault(note_key, len(sources) + 1)
        protocol = lines[0]["protocol"]
        if any(marker in protocol.lower() for marker in _CAVEAT_MARKERS):
            row.caveat = protocol
        params = [float(ln["params_m"]) for ln in lines if ln.get("params_m")]
        row.costs = {"params_m": fmean(params) if params else None}
        rows.append(row)
        if lines[0].get("published_means"):
            printed.append(f"{row.method} [{row.footnote}] {lines[0]['published_means']}")
        if lines[0].get("also_in"):
            printed.append(f"{row.method} [{row.footnote}]: the same per-task numbers in {lines[0]['also_in']}")
    notes = [f"[{n}] {source}. Protocol: {protocol}." for (source, protocol), n in sources.items()]
    if rows:
        notes.append("Published rows: both means recomputed from the per-task numbers (mean of the 19 tasks, and "
                     "the mean of the three group means, which NOAH, FacT, SSF, RepAdapter and SHIP print); "
                     + ("means as the sources print them: " + "; ".join(printed) + "." if printed
                        else "the sources print no means for these rows."))
    return rows, notes


def summary_tables(records: list[dict], reference: list[dict] | None = None) -> list[Table]:
    """Records → one Table per comparable setting (pure; no files)."""
    tables: list[Table] = []
    for number, (setting, recs) in enumerate(split_settings(records).items(), start=1):
        chosen, superseded = _latest(recs)
        metric = metric_name(setting.protocol)
        layout = task_layout(setting.suite, set(chosen["task"]))
        rows = []
        for method, runs in chosen.groupby("method"):
            row = make_row(method, "peftbench", _method_cells(runs, metric), layout)
            row.costs = _costs([r for r in runs["record"] if r["status"] == "complete"])
            rows.append(row)
        notes = _cell_notes(rows, layout) + _merge_notes(chosen)
        ties = column_ties(rows, layout)
        if setting.recipe != "shared":
            notes.insert(0, RECIPE_NOTE.format(recipe=setting.recipe))
        if superseded:
            notes.append(f"{superseded} older run(s) of the same method and task (the same seed, or another "
                         "configuration than the newest run's) were superseded by newer "
                         "records and ignored.")
        weights_names = sorted({str((r.get("backbone") or {}).get("weights")) for r in recs})
        refs, ref_notes = [], []
        if reference is not None:
            if setting.synthetic:
                ref_notes = ["No published reference rows: this table's data are synthetic (random content from "
                             "`make-synthetic`), so its accuracies mean nothing; timing only."]
            elif setting.suite != REFERENCE_SUITE:
                ref_notes = ["No published reference rows: they are VTAB-1k numbers and this table is for "
                             + f"suite '{setting.suite}'."]
            elif setting.backbone != REFERENCE_BACKBONE:
                ref_notes = [f"No published reference rows: they were obtained with ViT-B/16 ImageNet-21k "
                             f"({REFERENCE_BACKBONE}) and this table's backbone is {setting.backbone}."]
            elif "none" in weights_names:
                ref_notes = ["No published reference rows: they come from a pre-trained backbone and this table's "
                             + "backbone is randomly initialised."]
            elif setting.protocol == "val":
                ref_notes = ["No published reference rows: they are test accuracies and this table reports "
                             + "val200 accuracy."]
            else:
                refs, ref_notes = _reference_rows(reference, layout, {row.method for row in rows})
        mem_kinds = {(r.get("metrics") or {}).get("peak_mem_kind") for r in recs if r["status"] == "complete"}
        tables.append(Table(
            number=number, setting=setting, layout=layout, rows=rows, references=refs,
            weights_names=weights_names,
            devices=sorted({d for row in rows for d in row.costs["devices"]}),
            mem_kinds=sorted(k for k in mem_kinds if k),
            notes=notes, reference_notes=ref_notes,
            differs_from_first=setting.differences(tables[0].setting) if tables else [], ties=ties))
    return tables


def column_ties(rows: list[Row], layout: Layout) -> dict[str, set[str]]:
    """Per column (ids as in the markdown table), the methods tied with the column's best
    (``stats.tied_in_task`` / ``stats.tied_in_average``); published rows are not compared."""
    ties: dict[str, set[str]] = {}
    for task in layout.tasks:
        ties[f"task:{task}"] = tied_in_task({r.method: r.cells[task].by_seed for r in rows if task in r.cells})

    def task_means(row: Row, tasks: list[str]) -> dict[str, float]:
        return {t: row.cells[t].mean for t in tasks if t in row.cells and row.cells[t].by_seed}

    averages: list[tuple[str, list[str], Callable[[Row], Average | None]]] = [
        (f"group:{g}", list(tasks), lambda r, g=g: r.group_means.get(g)) for g, tasks in layout.groups]
    averages += [("mean_tasks", list(layout.tasks), lambda r: r.mean_tasks),
                 ("mean_groups", list(layout.tasks), lambda r: r.mean_groups)]
    for column, tasks, average in averages:
        values = {r.method: a.mean for r in rows if (a := average(r)) is not None and a.mean is not None}
        ties[column] = tied_in_average(values, {r.method: task_means(r, tasks) for r in rows})
    return ties


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


def _merge_notes(chosen: pd.DataFrame) -> list[str]:
    """Methods whose ``merge()`` failed in some runs: their inference costs are of the unmerged model."""
    failed: dict[str, list[str]] = {}
    for record in chosen["record"]:
        error = (record.get("metrics") or {}).get("merge_error") if record["status"] == "complete" else None
        if error:
            failed.setdefault(record["method"], []).append(str(error))
    return [f"{method}: merge() failed in {len(errors)} run(s) ({one_line(errors[0], 120)}); its GFLOPs and "
            "inference img/s are of the unmerged model." for method, errors in sorted(failed.items())]


def _failures(cell: Cell) -> str:
    parts = []
    for seed, (status, reason) in sorted(cell.failed.items()):
        parts.append(f"seed {seed} {status}" + (f": {reason}" if reason else ""))
    return ", ".join(parts)


def one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def status_counts(records: list[dict]) -> dict[str, int]:
    counts = Counter(r["status"] for r in records)
    return {s: counts.get(s, 0) for s in ("complete", "diverged", "oom", "failed")} | {
        s: n for s, n in counts.items() if s not in ("complete", "diverged", "oom", "failed")}
