"""Issue 15's table from the JSON lines that ``benchmarks/gpu_targets.sh`` left in its output folder.

Reads ``throughput_eager.log``, ``throughput_compiled.log``, ``infer1024.log``, ``memory.log`` and
``end_to_end.log``; prints one JSON line per figure (plain timm loop eager / compiled, peftbench
eager / compiled, the target) and a plain-text table. A step that did not run or was cut off shows
as null: nothing is filled in that was not measured.

    python benchmarks/gpu_summary.py gpu_out
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TARGETS = {"full": 3300, "vpt_deep": 4000, "ship": 3300, "ship_masked": 3300}


def lines(path: Path) -> list[dict]:
    """The JSON objects among a log's lines (other output is skipped)."""
    if not path.is_file():
        return []
    out = []
    for text in path.read_text(errors="replace").splitlines():
        if text.startswith("{"):
            try:
                out.append(json.loads(text))
            except json.JSONDecodeError:
                continue
    return out


def by_method(rows: list[dict], key: str) -> dict[str, float]:
    return {r["method"]: r[key] for r in rows if "method" in r and key in r}


def table(out: Path) -> list[dict]:
    eager = by_method(lines(out / "throughput_eager.log"), "train_img_per_s")
    comp = by_method(lines(out / "throughput_compiled.log"), "train_img_per_s")
    rows = []
    for method, target in TARGETS.items():
        rows.append({"figure": f"{method} train img/s", "timm_eager": eager.get("timm_baseline"),
                     "timm_compiled": comp.get("timm_baseline"), "peftbench_eager": eager.get(method),
                     "peftbench_compiled": comp.get(method), "target": target})
    infer = [r for r in lines(out / "infer1024.log") if "infer_img_per_s" in r]
    pick = {(r["method"], r.get("compiled", False)): r["infer_img_per_s"] for r in infer}
    rows.append({"figure": "inference img/s, batch 1024", "timm_eager": pick.get(("timm_baseline", False)),
                 "timm_compiled": pick.get(("timm_baseline", True)), "peftbench_eager": pick.get(("linear", False)),
                 "peftbench_compiled": pick.get(("linear", True)), "target": 12000})
    mem = {r["method"]: r["peak_mem_gib"] for r in lines(out / "memory.log") if "peak_mem_gib" in r}
    rows.append({"figure": "ship peak training memory GiB (eager)", "timm_eager": mem.get("timm_baseline"),
                 "peftbench_eager": mem.get("ship"), "target": 5.0})
    e2e = [r for r in lines(out / "end_to_end.log") if "extrapolated_19_tasks_s" in r]
    if e2e:
        last = e2e[-1]
        compiled = any(r.get("compiled") for r in e2e)
        rows.append({"figure": "vpt_deep 19 tasks x 100 epochs, s (extrapolated)",
                     "peftbench_compiled" if compiled else "peftbench_eager": last["extrapolated_19_tasks_s"],
                     "from_tasks": last["extrapolated_from_tasks"], "target": 900,
                     "with_decoded_cache_s": last.get("extrapolated_19_tasks_cached_data_s")})
    for row in rows:
        for key in ("peftbench_eager", "peftbench_compiled"):
            if row.get(key) and row.get("timm_compiled"):
                row[f"{key}_vs_timm_compiled"] = round(row[key] / row["timm_compiled"], 2)
            if row.get(key) and row.get("timm_eager"):
                row[f"{key}_vs_timm_eager"] = round(row[key] / row["timm_eager"], 2)
    return rows


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "gpu_out")
    rows = table(out)
    for row in rows:
        print(json.dumps(row))
    cols = ("timm_eager", "timm_compiled", "peftbench_eager", "peftbench_compiled", "target")
    print(f"{'figure':<48}" + "".join(f"{c:>20}" for c in cols))
    for row in rows:
        print(f"{row['figure']:<48}" + "".join(f"{'-' if row.get(c) is None else row[c]!s:>20}" for c in cols))


if __name__ == "__main__":
    main()
