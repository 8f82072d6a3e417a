"""Sweeps: methods × tasks × seeds → one record each; completed runs are skipped (resume for free)."""

from __future__ import annotations

import hashlib
import itertools
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .atomic import write_problem
from .backbone import DEFAULT_BACKBONE, Backbone, load_backbone
from .checkpoint import Checkpointer
from .checks import check_options, method_problems, raise_if_any, run_facts
from .claims import Claims
from .config import TrainConfig, parse_sets, resolve
from .data.content import task_content_warnings
from .data.images import Batches, SplitData, default_cache_dir, load_split
from .data.manifest import attach_provenance
from .data.splits import PROTOCOL_SPLITS, TaskLists, read_task_lists
from .data.synthetic import is_synthetic
from .data.tasks import TaskSpec, resolve_tasks
from .errors import DataError, PeftbenchError, UsageError
from .jobs import (  # noqa: F401  (re-exported: the CLI, tests and benchmarks import them from here)
    Job,
    JobOutcome,
    Point,
    Reporter,
    SweepRequest,
    SweepResult,
    TaskData,
    builtin_data_root,
    default_suite_file,
    load_suite,
    needed_splits,
    resolve_device,
    resolve_weights,
    run_id_of,
    suite_of,
    suite_source,
    sweep_header,
    sweep_methods,
    warmup_warnings,
)
from .measure import (
    RunMemory,
    count_params,
    inference_gflops,
    inference_model,
    logits_problem,
    measure_throughput,
    stored_per_task,
    tensor_ids,
)
from .method_api import BuildContext, MethodError
from .provenance import provenance
from .records import FINAL_STATUSES, NEWER, SCHEMA_VERSION, TOOL, RecordError, find_record, record_path, write_record
from .registry import MethodSpec, get_method
from .repro import pin_threads
from .status import write_manifest
from .train import (
    Diverged,
    autocast_factory,
    effective_compile,
    effective_precision,
    evaluate,
    make_optimizer,
    make_step,
    seed_everything,
    train,
    warmup_epochs,
)

# ----------------------------------------------------------------------------------------------
# executing one run: build, train, evaluate once, measure


class _Clock:
    """The phase a run is in and since when: a run that stops early records where and after how long."""

    def __init__(self, wall: dict[str, float]) -> None:
        self.wall = wall
        self.start("train")

    def start(self, phase: str) -> None:
        self.phase, self.t0 = phase, time.perf_counter()

    def stop(self, key: str | None = None) -> None:
        """Store the phase's time under ``key`` (a finished phase) or under the phase's name (a stopped one)."""
        self.wall[key or self.phase] = time.perf_counter() - self.t0


def _batches(split: SplitData, backbone: Backbone, device: torch.device) -> Batches:
    pre = backbone.preprocess
    return Batches(split, pre.img_size, pre.mean, pre.std, pre.interpolation, device)


def _build(spec: MethodSpec, task: TaskSpec, tcfg: TrainConfig, mcfg: Any, backbone: Backbone,
           device: torch.device, cache_dir: Path, train_batches: Batches, reporter: Reporter
           ) -> tuple[torch.nn.Module, BuildContext, int]:
    """The method's model, its build context and the values it stores per task (see ``stored_per_task``)."""
    vit = backbone.instantiate(task.num_classes, drop_path=tcfg.drop_path).to(device)
    shared = tensor_ids(vit)
    ctx = BuildContext(preprocess=backbone.preprocess, device=device, task=task,
                       backbone_checksum=backbone.checksum, cache_dir=cache_dir, train_batches=train_batches,
                       status=lambda s: reporter.run_progress(0, description=s))
    model = spec.build_on(backbone.name, vit, task.num_classes, mcfg, ctx).to(device)
    return model, ctx, stored_per_task(model, shared)


def _train_and_evaluate(model: torch.nn.Module, batches: tuple[Batches, Batches], eval_split: str, seed: int,
                        tcfg: TrainConfig, precision: str, device: torch.device, reporter: Reporter,
                        checkpoint: Checkpointer | None, metrics: dict[str, Any], clock: _Clock) -> int:
    """Train, then evaluate once on ``eval_split``; fills ``metrics``, returns the epoch resumed from."""
    train_batches, eval_batches = batches
    total_steps = tcfg.epochs * -(-len(train_batches.data) // tcfg.batch_size)
    eval_steps = -(-len(eval_batches.data) // tcfg.eval_batch_size)
    reporter.run_progress(0, total_steps + eval_steps, description="train")
    clock.start("train")
    result = train(model, train_batches, tcfg, device, seed, on_step=lambda d, t: reporter.run_progress(d),
                   checkpoint=checkpoint, val_batches=eval_batches if eval_split != "test" else None,
                   on_epoch=reporter.epoch_finished)  # per-epoch validation under protocol=val only
    metrics.update(final_train_loss=result.losses[-1], first_step_s=result.first_step_s,
                   epochs_done=result.epochs_done, history=result.history())
    clock.stop("train")
    reporter.run_progress(total_steps, description=f"evaluate {eval_split}")
    clock.start("evaluation")
    ticks = itertools.count(total_steps + 1)
    top1 = evaluate(model, eval_batches, tcfg.eval_batch_size, precision, device,
                    on_batch=lambda _: reporter.run_progress(next(ticks)), compile=effective_compile(tcfg, device))
    clock.stop("eval")
    metrics["test_top1" if eval_split == "test" else "val_top1"] = top1
    metrics["eval_split"] = eval_split
    return result.resumed_from


def _measure(model: torch.nn.Module, task: TaskSpec, tcfg: TrainConfig, precision: str, backbone: Backbone,
             device: torch.device, memory: RunMemory, metrics: dict[str, Any], clock: _Clock) -> None:
    """Peak memory of the run, then training and inference throughput on synthetic batches."""
    clock.start("measurement")
    metrics["peak_mem_bytes"], metrics["peak_mem_kind"] = memory.peak()
    autocast, compiled = autocast_factory(precision, device), effective_compile(tcfg, device)
    metrics.update(measure_throughput(
        model, lambda m: make_step(m, make_optimizer(m, tcfg, device), tcfg, autocast, compiled),
        backbone.preprocess.img_size,
        task.num_classes, device, tcfg.bench_batch, tcfg.bench_steps, tcfg.bench_warmup, autocast,
        inference=inference_model(model)[0] if metrics["merged"] else None))
    clock.stop("measure")


def execute_run(spec: MethodSpec, task: TaskSpec, seed: int, tcfg: TrainConfig, mcfg: Any, backbone: Backbone,
                data: TaskData, device: torch.device, cache_dir: Path, reporter: Reporter,
                checkpoint: Checkpointer | None = None) -> dict[str, Any]:
    """Build, train, evaluate once, measure. Returns status + metrics (+ method info) for the record.

    Divergence and CUDA OOM end the run with that status (never retried with a smaller batch)."""
    train_split, eval_split = PROTOCOL_SPLITS[tcfg.protocol]
    batches = (_batches(data.splits[train_split], backbone, device), _batches(data.splits[eval_split], backbone,
                                                                              device))
    precision = effective_precision(tcfg, device)
    wall: dict[str, float] = {"data": data.decode_s}
    seed_everything(seed)
    memory = RunMemory(device)
    memory.start()
    t0 = time.perf_counter()
    model, ctx, stored = _build(spec, task, tcfg, mcfg, backbone, device, cache_dir, batches[0], reporter)
    wall["prepare"] = time.perf_counter() - t0
    merged_model, merged, merge_error = _inference(spec, model, task.num_classes, backbone, device)
    metrics: dict[str, Any] = {**count_params(model), "stored_per_task_params": stored, "precision": precision,
                               "compiled": effective_compile(tcfg, device),
                               "merged": merged, **({"merge_error": merge_error} if merge_error else {}),
                               "gflops": inference_gflops(merged_model, backbone.preprocess.img_size, device),
                               "warmup_epochs": warmup_epochs(tcfg),
                               "warmup_scaled": warmup_epochs(tcfg) != tcfg.warmup_epochs}
    if merge_error:
        ctx.notices.append(f"{spec.name}: merge() failed ({merge_error}); inference GFLOPs and images/s are of the "
                           "unmerged model")
    status, reason, resumed_from, clock = "complete", None, 0, _Clock(wall)
    try:
        resumed_from = _train_and_evaluate(model, batches, eval_split, seed, tcfg, precision, device, reporter,
                                           checkpoint, metrics, clock)
        _measure(model, task, tcfg, precision, backbone, device, memory, metrics, clock)
    except Diverged as exc:
        status, reason = "diverged", str(exc)
    except torch.cuda.OutOfMemoryError as exc:
        status, reason = "oom", _oom_reason(exc, clock.phase, tcfg)
    if status != "complete":
        clock.stop()
    metrics["wall_s"] = wall
    return {"status": status, "reason": reason, "metrics": metrics, "method_info": ctx.info,
            "notices": ctx.notices, "phase_s": ctx.phase_times, "resumed_from_epoch": resumed_from}


def _inference(spec: MethodSpec, model: torch.nn.Module, num_classes: int, backbone: Backbone,
               device: torch.device) -> tuple[torch.nn.Module, bool, str | None]:
    """Check the method's logits (a wrong shape fails the run, naming the method), then the model inference is
    measured on: its merge, or the model itself when it has none or its merge failed (and why, for the record)."""
    img_size = backbone.preprocess.img_size
    problem = logits_problem(model, num_classes, img_size, device)
    if problem:
        raise MethodError(f"method '{spec.name}'{spec.origin}: {problem}")
    inference = inference_model(model)
    if inference.merge_error is not None:
        exc = inference.merge_error
        return model, False, f"{type(exc).__name__}: {exc}{spec.blame(exc)}"
    if inference.merged:
        problem = logits_problem(inference.model, num_classes, img_size, device)
        if problem:
            return model, False, f"the merged model: {problem}"
    return inference.model, inference.merged, None


def _oom_reason(exc: BaseException, phase: str, tcfg: TrainConfig) -> str:
    first = (str(exc).splitlines() or [""])[0]
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # let the next run start from a clean slate
    return f"CUDA out of memory during {phase} at batch {tcfg.batch_size} (grad_accum {tcfg.grad_accum}): {first}"


# ----------------------------------------------------------------------------------------------
# planning: requests → resolved jobs, with every list checked and every split decoded first


@dataclass
class Plan:
    """A sweep ready to run: its jobs in order and what they share."""

    req: SweepRequest
    jobs: list[Job]
    backbone: Backbone
    data: dict[str, TaskData]  # by task name
    device: torch.device
    cache_dir: Path
    suite: str  # the suite actually used (--suite, else implied by --data-root)

    @property
    def out(self) -> Path:
        return Path(self.req.out)


def plan_sweep(req: SweepRequest, reporter: Reporter) -> Plan:
    """Resolve, check and decode everything before the first run, so bad input fails fast and whole."""
    check_options(req.claim_timeout, req.checkpoint_every)
    specs = [get_method(m) for m in sweep_methods(req)]
    if not specs:
        raise UsageError("--methods: no method given")
    suite_name = suite_of(req)
    tasks = resolve_tasks(req.tasks, suite_name)
    suite = load_suite(suite_name, req.suite_file)
    points = _points(req, specs, tasks)
    sets = parse_sets(req.sets)
    configs = {p: resolve(get_method(p.method), p.task, suite, sets + list(p.sets), req.recipe)
               for p in points}
    data_root = _data_root(req, suite_name)
    for note in warmup_warnings(configs.values()):
        reporter.message(note)
    device = resolve_device(req.device)
    pin_threads(device, req.threads)
    cache_dir = Path(req.cache_dir) if req.cache_dir else default_cache_dir()
    lists = _preflight(data_root, tasks, reporter)
    for warning in attach_provenance(data_root, lists, builtin=req.data_root is None or is_synthetic(data_root)):
        reporter.message(f"warning: {warning}")
    backbone = load_backbone(req.backbone or suite.backbone or DEFAULT_BACKBONE,
                             resolve_weights(req.weights or suite.weights or "pretrained"), req.img_size,
                             req.trust_checkpoint)
    by_name = {t.name: t for t in tasks}
    # settings that cannot work on this data: refused for every job before anything is decoded or trained
    raise_if_any(problem for p in points
                 for problem in method_problems(f"{p.method}/{p.task}", configs[p][1],
                                                run_facts(by_name[p.task], configs[p][0], lists[p.task], backbone)))
    protocols = {t.name: {configs[p][0].protocol for p in points if p.task == t.name} for t in tasks}
    data = {t.name: _decode(lists[t.name], protocols[t.name], backbone, cache_dir, reporter, req.max_image_pixels)
            for t in tasks if protocols[t.name]}
    jobs = [_job(by_name[p.task], get_method(p.method), seed, configs[p], data[p.task], suite_name, backbone,
                 device, p) for p in points for seed in p.seeds]
    done = _existing(jobs, Path(req.out), reporter)
    shape = (len({p.method for p in points}), len(tasks), len({s for p in points for s in p.seeds}))
    reporter.message(sweep_header(suite, backbone, device, jobs, shape, done))
    return Plan(req, jobs, backbone, data, device, cache_dir, suite_name)


def _existing(jobs: list[Job], out: Path, reporter: Reporter) -> int:
    """How many jobs already have a final record. A damaged file in a job's place is named and its run
    runs again; a record of a newer schema is refused (this version would overwrite what it cannot read)."""
    problems: list[tuple[Path, str]] = []
    done = sum(1 for job in jobs if (find_record(out, job.run_id, problems) or {}).get("status") in FINAL_STATUSES)
    newer = [f"{path}: {why}" for path, why in problems if why.startswith(NEWER)]
    if newer:
        raise UsageError(newer[0] + (f" (and {len(newer) - 1} more such record(s))" if len(newer) > 1 else ""))
    for path, why in problems:
        reporter.message(f"warning: {path}: not a peftbench record ({why}); its run runs again")
    return done


def _points(req: SweepRequest, specs: list[MethodSpec], tasks: list[TaskSpec]) -> list[Point]:
    """The request's points: given (tune), or every method on every task with the request's seeds."""
    if req.points is not None:
        return list(req.points)
    return [Point(s.name, t.name, seeds=tuple(req.seeds)) for t in tasks for s in specs]


def _data_root(req: SweepRequest, suite: str) -> Path:
    data_root = Path(req.data_root) if req.data_root is not None else builtin_data_root(suite)
    if data_root is None:
        raise UsageError(f"--data-root is required for suite '{suite}' (a folder in the VTAB-1k layout)")
    if not data_root.is_dir():
        raise UsageError(f"--data-root {data_root}: no such folder")
    return data_root


def _preflight(data_root: Path, tasks: list[TaskSpec], reporter: Reporter) -> dict[str, TaskLists]:
    """Every list of every task, all problems at once, before anything heavy."""
    lists: dict[str, TaskLists] = {}
    problems: list[str] = []
    for task in tasks:
        try:
            lists[task.name] = read_task_lists(data_root, task)
        except DataError as exc:
            problems.append(str(exc))
    if problems:
        raise DataError("pre-flight check failed:\n" + "\n".join(problems))
    for warning in (w for tl in lists.values() for w in tl.warnings):
        reporter.message(f"warning: {warning}")
    return lists


def _decode(lists: TaskLists, protocols: set[str], backbone: Backbone, cache_dir: Path, reporter: Reporter,
            max_pixels: int) -> TaskData:
    """Decode the splits the task's protocols need, once (cached on disk), before any training."""
    pre = backbone.preprocess
    t0 = time.perf_counter()
    splits = {}
    for split in needed_splits(protocols):
        entries = lists.splits[split]
        advance = reporter.decode(f"{lists.task.name}/{split}", len(entries))
        splits[split] = load_split(entries, pre.img_size, pre.interpolation, lists.where(split),
                                   cache_dir, advance, max_pixels=max_pixels)
    for warning in task_content_warnings(lists, splits, protocols):
        reporter.message(f"warning: task '{lists.task.name}': {warning}")
    return TaskData(lists, splits, time.perf_counter() - t0)


def _job(task: TaskSpec, spec: MethodSpec, seed: int, config: tuple[TrainConfig, Any, dict], td: TaskData,
         suite: str, backbone: Backbone, device: torch.device, point: Point) -> Job:
    tcfg, mcfg, resolved = config
    train_split, eval_split = PROTOCOL_SPLITS[tcfg.protocol]
    data_checksum = hashlib.sha256((td.splits[train_split].checksum + td.splits[eval_split].checksum).encode()
                                   ).hexdigest()
    run_id = run_id_of(spec, task.name, suite, seed, resolved, backbone, data_checksum,
                       effective_precision(tcfg, device), device, point.role)
    return Job(task, spec, seed, tcfg, mcfg, resolved, data_checksum, run_id, point)


# ----------------------------------------------------------------------------------------------
# the sweep: plan, run or skip each job under a claim, summarise


def run_sweep(req: SweepRequest, reporter: Reporter | None = None) -> SweepResult:
    reporter = reporter or Reporter()
    plan = plan_sweep(req, reporter)
    _manifest(plan, req.claim_timeout, reporter)
    claims = Claims(plan.out, req.worker_id, req.claim_timeout)
    prov = {**provenance(plan.device), "worker": claims.worker}
    reporter.sweep(len(plan.jobs))
    outcomes: list[JobOutcome] = []
    pending = plan.jobs
    for _ in range(2):  # a second round for claims whose owners died (or released them) while we ran the rest
        while pending:  # later passes pick up runs whose owners finished, gave up or went stale meanwhile
            left = []
            for job in pending:
                outcome = _attempt(job, plan, claims, prov, reporter)
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


def _manifest(plan: Plan, claim_timeout: float, reporter: Reporter) -> None:
    """The planned run ids, for `peftbench status` to count runs not started; a sweep runs without it."""
    try:
        write_manifest(plan.out, {job.run_id: job.label for job in plan.jobs}, claim_timeout)
    except OSError as exc:
        reporter.message(f"warning: cannot write the sweep manifest in {plan.out}: {exc}; `peftbench status` will "
                         "not count the runs not started yet")


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


def _attempt(job: Job, plan: Plan, claims: Claims, prov: dict, reporter: Reporter) -> JobOutcome | None:
    """Run or skip a job; None if another live worker holds it."""
    done = _done_already(job, plan.out, reporter)
    if done is not None:
        return done
    claim = claims.acquire(job.run_id)
    if claim is None:
        return None
    try:
        outcome = _done_already(job, plan.out, reporter)  # another worker may have finished it meanwhile
        if outcome is None:
            outcome = _run_job(job, plan, prov, reporter)
            if claim.lost:
                reporter.message(f"warning: {job.label}: another worker took our claim over (no heartbeat "
                                 f"for {plan.req.claim_timeout:g} s); it may write this record again")
    finally:
        claim.release()
    return outcome


def _done_already(job: Job, out: Path, reporter: Reporter) -> JobOutcome | None:
    existing = find_record(out, job.run_id)
    if existing is None or existing["status"] not in FINAL_STATUSES:
        return None
    (out / ".checkpoints" / f"{job.run_id}.pt").unlink(missing_ok=True)  # left if killed after the write
    reporter.run_finished(job.label, f"already done ({existing['status']}), skipped")
    return JobOutcome(job.label)


def _run_job(job: Job, plan: Plan, prov: dict, reporter: Reporter) -> JobOutcome:
    """Execute one claimed run and write its record; its checkpoint goes once the record is safe."""
    checkpoint = Checkpointer(plan.out / ".checkpoints" / f"{job.run_id}.pt", plan.req.checkpoint_every,
                              lambda text: reporter.message(f"{job.label}: {text}"))
    reporter.run_started(job.label, job.tcfg.epochs)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    outcome = _outcome(job, plan, reporter, checkpoint)
    record = _record(job, plan, outcome, started, prov)
    path = record_path(plan.out, record)
    try:
        write_record(path, record)
    except OSError as exc:
        raise RecordError(f"cannot write the record of {job.label} to {path}: {write_problem(exc)}; nothing was "
                          "kept for this run (its checkpoint, if any, remains); then run the same command again"
                          ) from exc
    checkpoint.discard()
    reporter.run_finished(job.label, _summary_line(outcome))
    return JobOutcome(job.label, path, outcome["status"])


def _outcome(job: Job, plan: Plan, reporter: Reporter, checkpoint: Checkpointer) -> dict[str, Any]:
    """execute_run's result, or the failure that ended the run: a broken run is recorded, the sweep goes on."""
    try:
        return execute_run(job.spec, job.task, job.seed, job.tcfg, job.mcfg, plan.backbone, plan.data[job.task.name],
                           plan.device, plan.cache_dir, reporter, checkpoint)
    except (PeftbenchError, KeyboardInterrupt):
        raise
    except torch.cuda.OutOfMemoryError as exc:  # while building the method
        return {"status": "oom", "reason": _oom_reason(exc, "build", job.tcfg)}
    except Exception as exc:  # a broken plugin or run (a plugin's own code is named)
        where = "" if isinstance(exc, MethodError) else job.spec.blame(exc)  # a MethodError names the method
        return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}{where}"}


def _record(job: Job, plan: Plan, outcome: dict[str, Any], started: str, prov: dict) -> dict[str, Any]:
    td = plan.data[job.task.name]
    train_split, eval_split = PROTOCOL_SPLITS[job.tcfg.protocol]
    return {
        "tool": TOOL, "schema": SCHEMA_VERSION, "run_id": job.run_id, "status": outcome["status"],
        "reason": outcome["reason"],
        "method": job.spec.name, "method_version": job.spec.version, "task": job.task.name, "suite": plan.suite,
        "seed": job.seed,
        "created": started, "config": job.resolved,
        "backbone": plan.backbone.describe(),
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
