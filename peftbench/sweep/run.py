"""A sweep in one process: plan, then run or skip each job under a claim, write its record, summarise.

Several processes may run the same sweep over one runs folder (``launch``): each run is claimed
exclusively, so every run executes once; finished runs are skipped, so the same command resumes.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from typing import Any

import torch

from ..atomic import write_problem
from ..checkpoint import Checkpointer
from ..claims import Claims
from ..data.splits import PROTOCOL_SPLITS
from ..data.synthetic import is_synthetic
from ..errors import PeftbenchError
from ..method_api import MethodError
from ..provenance import provenance
from ..records import FINAL_STATUSES, SCHEMA_VERSION, TOOL, RecordError, find_record, record_path, write_record
from ..status import write_manifest
from .context import Job, RunContext
from .execute import execute_run, oom_reason
from .plan import Plan, plan_sweep
from .request import JobOutcome, Reporter, SweepRequest, SweepResult


def run_sweep(req: SweepRequest, reporter: Reporter | None = None) -> SweepResult:
    reporter = reporter or Reporter()
    plan = plan_sweep(req, reporter)
    ctx = plan.ctx
    _manifest(plan)
    claims = Claims(ctx.out, req.worker_id, ctx.claim_timeout)
    prov = {**provenance(ctx.device), "worker": claims.worker}
    reporter.sweep(len(plan.jobs))
    outcomes: list[JobOutcome] = []
    pending = plan.jobs
    for _ in range(2):  # a second round for claims whose owners died (or released them) while we ran the rest
        while pending:  # later passes pick up runs whose owners finished, gave up or went stale meanwhile
            left = []
            for job in pending:
                outcome = _attempt(job, plan, claims, prov)
                if outcome is None:
                    left.append(job)
                else:
                    outcomes.append(outcome)
            if len(left) == len(pending):
                break
            pending = left
        if all(claims.live(job.run_id) for job in pending):
            break
    result = _summarise(outcomes, pending, claims, reporter)
    if req.points is not None:
        result.run_ids = {(job.point, job.seed): job.run_id for job in plan.jobs}
    return result


def _manifest(plan: Plan) -> None:
    """The planned run ids, for `peftbench status` to count runs not started; a sweep runs without it."""
    ctx = plan.ctx
    try:
        write_manifest(ctx.out, {job.run_id: job.label for job in plan.jobs}, ctx.claim_timeout)
    except OSError as exc:
        ctx.reporter.message(f"warning: cannot write the sweep manifest in {ctx.out}: {exc}; `peftbench status` "
                             "will not count the runs not started yet")


def _summarise(outcomes: list[JobOutcome], left: list[Job], claims: Claims, reporter: Reporter) -> SweepResult:
    """Runs left undone are either held by a live worker (its business) or by nobody alive (ours: rerun)."""
    live = {job.run_id: claims.live(job.run_id) for job in left}
    for job in left:
        holder = claims.owner(job.run_id).get("worker", "another worker")
        reporter.run_finished(job.label, f"claimed by {holder}, " + ("left to it" if live[job.run_id]
                                                                      else "which is not alive; not run"))
    return SweepResult(written=[o.path for o in outcomes if o.path is not None],
                       skipped=[o.label for o in outcomes if o.path is None],
                       left_to_others=[job.label for job in left if live[job.run_id]],
                       orphaned=[job.label for job in left if not live[job.run_id]],
                       statuses=dict(Counter(o.status for o in outcomes if o.path is not None)))


def _attempt(job: Job, plan: Plan, claims: Claims, prov: dict) -> JobOutcome | None:
    """Run or skip a job; None if another live worker holds it."""
    ctx = plan.ctx
    done = _done_already(job, ctx)
    if done is not None:
        return done
    claim = claims.acquire(job.run_id)
    if claim is None:
        return None
    try:
        outcome = _done_already(job, ctx)  # another worker may have finished it meanwhile
        if outcome is None:
            outcome = _run_job(job, plan, prov)
            if claim.lost:
                ctx.reporter.message(f"warning: {job.label}: another worker took our claim over (no heartbeat "
                                     f"for {ctx.claim_timeout:g} s); it may write this record again")
    finally:
        claim.release()
    return outcome


def _done_already(job: Job, ctx: RunContext) -> JobOutcome | None:
    existing = find_record(ctx.out, job.run_id)
    if existing is None or existing["status"] not in FINAL_STATUSES:
        return None
    ctx.runs.checkpoint(job.run_id).unlink(missing_ok=True)  # left if killed after the write
    ctx.reporter.run_finished(job.label, f"already done ({existing['status']}), skipped")
    return JobOutcome(job.label)


def _run_job(job: Job, plan: Plan, prov: dict) -> JobOutcome:
    """Execute one claimed run and write its record; its checkpoint goes once the record is safe."""
    ctx = plan.ctx
    checkpoint = Checkpointer(ctx.runs.checkpoint(job.run_id), ctx.checkpoint_every,
                              lambda text: ctx.reporter.message(f"{job.label}: {text}"))
    ctx.reporter.run_started(job.label, job.tcfg.epochs)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    outcome = _outcome(job, plan, checkpoint)
    record = _record(job, plan, outcome, started, prov)
    path = record_path(ctx.out, record)
    try:
        write_record(path, record)
    except OSError as exc:
        raise RecordError(f"cannot write the record of {job.label} to {path}: {write_problem(exc)}; nothing was "
                          "kept for this run (its checkpoint, if any, remains); then run the same command again"
                          ) from exc
    checkpoint.discard()
    ctx.reporter.run_finished(job.label, _summary_line(outcome))
    return JobOutcome(job.label, path, outcome["status"])


def _outcome(job: Job, plan: Plan, checkpoint: Checkpointer) -> dict[str, Any]:
    """execute_run's result, or the failure that ended the run: a broken run is recorded, the sweep goes on."""
    try:
        return execute_run(job, plan.data[job.task.name], plan.ctx, checkpoint)
    except (PeftbenchError, KeyboardInterrupt):
        raise
    except torch.cuda.OutOfMemoryError as exc:  # while building the method
        return {"status": "oom", "reason": oom_reason(exc, "build", job.tcfg)}
    except Exception as exc:  # a broken plugin or run (a plugin's own code is named)
        where = "" if isinstance(exc, MethodError) else job.spec.blame(exc)  # a MethodError names the method
        return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}{where}"}


def _record(job: Job, plan: Plan, outcome: dict[str, Any], started: str, prov: dict) -> dict[str, Any]:
    td = plan.data[job.task.name]
    train_split, eval_split = PROTOCOL_SPLITS[job.tcfg.protocol]
    return {
        "tool": TOOL, "schema": SCHEMA_VERSION, "run_id": job.run_id, "status": outcome["status"],
        "reason": outcome["reason"],
        "method": job.spec.name, "method_version": job.spec.version, "task": job.task.name, "suite": plan.ctx.suite,
        "seed": job.seed,
        "created": started, "config": job.resolved,
        "backbone": plan.ctx.backbone.describe(),
        "data": {"root": str(td.lists.folder.resolve().parent), "folder": str(td.lists.folder.resolve()),
                 "checksum": job.data_checksum, "splits": {k: len(v) for k, v in td.lists.splits.items()},
                 "train_split": train_split, "eval_split": eval_split,
                 "synthetic": is_synthetic(td.lists.folder.resolve().parent),
                 "source": "unverified", "manifest_sha256": None,
                 **td.lists.provenance},  # from the data root's MANIFEST.json (data/manifest.py)
        "metrics": outcome.get("metrics", {}), "method_info": outcome.get("method_info", {}),
        "notices": outcome.get("notices", []), "prepare_phases_s": outcome.get("phase_s", {}),
        "provenance": {**prov, "resumed_from_epoch": outcome.get("resumed_from_epoch", 0)},
        **_tune_part(job),
    }


def _tune_part(job: Job) -> dict[str, Any]:
    """A tune's trial or final says so in its record (role, searched values); plain runs have no "tune"."""
    if job.point is None or job.point.role is None:
        return {}
    return {"tune": {"role": job.point.role, **{k: v for k, v in job.point.extra.items() if k != "label"}}}


def _summary_line(outcome: dict[str, Any]) -> str:
    if outcome["status"] != "complete":
        return f"{outcome['status']}: {outcome['reason']}"
    m = outcome["metrics"]
    top1 = m.get("test_top1", m.get("val_top1"))
    return f"top-1 {top1:.2f}%  trainable {m['trainable_params']:,}  {m['gflops']:.2f} GFLOPs"
