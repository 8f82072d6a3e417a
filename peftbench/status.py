"""Where a sweep stands: ``peftbench status RUNS_DIR`` from the records, the claims and the sweep manifests.

A sweep writes a small manifest (its planned run ids and labels; JSON, named ``*.manifest`` so that
nothing looking for records mistakes it for one) into ``<out>/.sweeps/`` before it runs anything, so
that runs nobody has started yet can be counted; several sweeps sharing a folder each leave their own.
Whether a claim is live or stale is the claims module's judgement, not ours.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .atomic import atomic_write
from .claims import Claims
from .layout import SWEEPS, RunsFolder
from .records import load_records

STATES = ("complete", "running", "stale", "failed", "diverged", "oom", "not_started")
DEFAULT_CLAIM_TIMEOUT = 600.0


def write_manifest(out: Path, runs: dict[str, str], claim_timeout: float) -> Path:
    """Record a sweep's planned runs (run id → label). Every worker of the sweep writes the same file."""
    key = hashlib.sha256("\n".join(sorted(runs)).encode()).hexdigest()[:16]
    doc = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "claim_timeout": claim_timeout,
           "runs": dict(sorted(runs.items()))}
    text = json.dumps(doc, indent=1) + "\n"
    return atomic_write(RunsFolder(out).sweeps / f"{key}.manifest", lambda tmp: tmp.write_text(text),
                        durable=False)


def read_manifests(out: Path) -> tuple[dict[str, str], list[float], list[str]]:
    """Planned runs of every sweep in ``out``, their claim timeouts, and unreadable manifests."""
    planned: dict[str, str] = {}
    timeouts, problems = [], []
    for path in sorted(RunsFolder(out).sweeps.glob("*.manifest")):
        try:
            doc = json.loads(path.read_text())
            planned.update({str(k): str(v) for k, v in doc["runs"].items()})
            timeouts.append(float(doc["claim_timeout"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            problems.append(f"{path}: not a readable sweep manifest ({type(exc).__name__})")
    return planned, timeouts, problems


def _claim_state(claims: Claims, run_id: str, now: float) -> dict[str, Any] | None:
    """A claim's holder and ages, and whether the claims module would take it over now."""
    try:
        heartbeat = now - claims.path(run_id).stat().st_mtime
    except FileNotFoundError:
        return None  # released meanwhile
    stale = not claims.live(run_id)
    info = claims.owner(run_id)
    since = info.get("time")
    state = {"worker": info.get("worker", "unknown"), "host": info.get("host"), "pid": info.get("pid"),
             "held_s": round(now - since, 1) if isinstance(since, (int, float)) else None,
             "heartbeat_s": round(heartbeat, 1), "stale": stale}
    if stale:
        state["why"] = (f"no heartbeat for {heartbeat:.0f} s" if heartbeat > claims.timeout else
                        "the claim names no owner (empty or unreadable)" if "worker" not in info else
                        f"its process {state['pid']} on this host ({socket.gethostname()}) is gone")
    return state


def sweep_status(out: Path, claim_timeout: float | None = None) -> dict[str, Any]:
    """Every known run of ``out`` in one state of ``STATES``, with the details a user acts on."""
    out = Path(out)
    planned, timeouts, problems = read_manifests(out)
    timeout = claim_timeout or max(timeouts, default=DEFAULT_CLAIM_TIMEOUT)
    records, bad = load_records(out)
    by_id = {r["run_id"]: r for r in records}
    labels = {**planned, **{r["run_id"]: f"{r['method']}/{r['task']}/seed{r['seed']}" for r in records}}
    claims = Claims(out, worker="status", timeout=timeout)
    now = time.time()
    held = {}
    for path in sorted(claims.folder.glob("*.claim")):
        state = _claim_state(claims, path.stem, now)
        if state is not None:
            held[path.stem] = state
    runs = []
    for run_id in sorted({*labels, *held}, key=lambda r: (labels.get(r, r), r)):
        rec, claim = by_id.get(run_id), held.get(run_id)
        entry: dict[str, Any] = {"run_id": run_id, "label": labels.get(run_id, f"run {run_id}")}
        if rec is not None and rec["status"] in ("complete", "diverged"):
            entry["state"] = rec["status"]
        elif claim is not None:
            entry.update(state="stale" if claim["stale"] else "running", claim=claim)
        elif rec is not None:
            entry["state"] = rec["status"]
        else:
            entry["state"] = "not_started"
        if rec is not None and rec.get("reason") and entry["state"] in ("failed", "diverged", "oom"):
            entry["reason"] = rec["reason"]
        runs.append(entry)
    counts: dict[str, int | None] = {s: sum(r["state"] == s for r in runs) for s in STATES}
    if not planned:
        counts["not_started"] = None  # unknown without a manifest
    return {"runs_dir": str(out), "manifests": len(timeouts), "claim_timeout": timeout, "counts": counts,
            "runs": runs, "problems": problems + bad}


def format_status(st: dict[str, Any]) -> list[str]:
    """The plain-text view: counts, then who runs what, stale claims and failure reasons."""
    counts = st["counts"]
    lines = [f"{st['runs_dir']}: {sum(v or 0 for v in counts.values())} run(s) known"
             + (f" ({st['manifests']} sweep manifest(s))" if st["manifests"] else "")]
    for state in STATES:
        value = counts[state]
        lines.append(f"  {state.replace('_', ' ').replace('stale', 'stale claims'):<13}"
                     f"{'?' if value is None else value}")
    if counts["not_started"] is None:
        lines.append(f"  (no sweep manifest in {st['runs_dir']}/{SWEEPS}: runs not started yet are "
                     "unknown; a sweep's workers write it once they have planned its runs)")
    by_state = lambda s: [r for r in st["runs"] if r["state"] == s]
    for state, title in (("running", "running (live claims)"),
                         ("stale", "stale claims (the next worker to reach them takes them over)")):
        if by_state(state):
            lines.append(f"{title}:")
        for r in by_state(state):
            c = r["claim"]
            held = f"held {c['held_s']:.0f} s, " if c["held_s"] is not None else ""
            lines.append(f"  {r['label']}  worker {c['worker']} (pid {c['pid']}, host {c['host']})  {held}"
                         f"last heartbeat {c['heartbeat_s']:.0f} s ago" + (f"; stale: {c['why']}" if c["stale"]
                                                                             else ""))
    for state in ("failed", "diverged", "oom"):
        for r in by_state(state):
            lines.append(f"{state}: {r['label']}: {r.get('reason') or 'no reason recorded'}")
    lines += [f"warning: {p}" for p in st["problems"]]
    return lines
