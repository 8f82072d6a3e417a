"""summary.csv and summary.json: the tables as numbers (not formatted text) for other tools."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .aggregate import Average, Row, Table, status_counts


def _avg_dict(avg: Average | None) -> dict | None:
    if avg is None:
        return None
    return {"mean": avg.mean, "std": avg.std, "ci95": list(avg.ci) if avg.ci else None, "n_tasks": avg.n,
            "of_tasks": avg.total}


def table_rows_flat(table: Table) -> list[dict]:
    """One flat row per table row (ours and published) with numbers, not formatted text."""
    out = []
    setting = asdict(table.setting) | {"img_size": "x".join(str(v) for v in table.setting.img_size)}
    for row in [*table.rows, *table.references]:
        flat: dict[str, Any] = {"table": table.number, "source": row.source, "method": row.method,
                                "label": row.label, "seeds": row.seed_text, **setting}
        mine = row.source == "peftbench"
        for task in table.layout.tasks:
            cell = row.cells.get(task)
            flat[task] = cell.mean if cell else None
            flat[f"{task}_std"] = cell.std if cell else None
            flat[f"{task}_n_seeds"] = len(cell.by_seed) if cell else 0
            flat[f"{task}_tied_best"] = row.method in table.ties.get(f"task:{task}", ()) if mine else None
        averages = [(f"mean_{g}", f"group:{g}", avg) for g, avg in row.group_means.items()]
        averages += [("mean_tasks", "mean_tasks", row.mean_tasks), ("mean_group_means", "mean_groups", row.mean_groups)]
        for name, column, avg in averages:
            if avg is not None:
                flat[name], flat[f"{name}_std"] = avg.mean, avg.std
                flat[f"{name}_ci95_low"], flat[f"{name}_ci95_high"] = avg.ci or (None, None)
                flat[f"{name}_n_tasks"], flat[f"{name}_of_tasks"] = avg.n, avg.total
                flat[f"{name}_tied_best"] = row.method in table.ties.get(column, ()) if mine else None
        for key in ("params_m", "params_excl_head_m", "stored_m", "gflops", "train_img_per_s", "infer_img_per_s",
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
                    "tied_with_best": {col: sorted(methods) for col, methods in t.ties.items()},
                    "notes": t.notes + t.reference_notes} for t in tables],
    }
