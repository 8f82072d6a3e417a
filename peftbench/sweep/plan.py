"""Plan a sweep in one pass: request -> suite, tasks, methods, configurations -> checked, decoded data -> jobs.

Everything is resolved and checked before the first run, so bad input fails fast and whole: every
split list of every task is read (all problems at once), every method's settings are checked against
the data and the backbone, and every split the runs need is decoded (cached on disk by content).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..backbone import Backbone, load_backbone
from ..backbones_meta import DEFAULT_BACKBONE
from ..checks import check_options, method_problems, raise_if_any, run_facts
from ..config import Suite, TrainConfig, parse_sets, resolve
from ..data.content import task_content_warnings
from ..data.images import default_cache_dir, load_split
from ..data.manifest import attach_provenance
from ..data.splits import PROTOCOL_SPLITS, TaskLists, read_task_lists
from ..data.synthetic import is_synthetic
from ..data.tasks import TaskSpec, resolve_tasks
from ..errors import DataError, UsageError
from ..layout import RunsFolder
from ..records import FINAL_STATUSES, NEWER, find_record
from ..registry import MethodSpec, get_method
from ..repro import pin_threads
from ..train import warmup_epochs
from .context import Job, RunContext, TaskData
from .request import Point, Reporter, SweepRequest
from .resolve import (
    builtin_data_root,
    load_suite,
    resolve_device,
    resolve_weights,
    suite_of,
    suite_source,
    sweep_methods,
)

Config = tuple[TrainConfig, Any, dict]  # config.resolve's (training recipe, method knobs, resolved dict)


@dataclass
class Plan:
    """A sweep ready to run: its jobs in order, their data by task, and what every run shares."""

    req: SweepRequest
    jobs: list[Job]
    data: dict[str, TaskData]  # by task name
    ctx: RunContext


@dataclass(frozen=True)
class RunKey:
    """What changes a run's numbers, besides the backbone and the device type (see ``run_id_of``)."""

    spec: MethodSpec
    task: str
    suite: str
    seed: int
    resolved: dict
    data_checksum: str
    precision: str  # bf16 or fp32, as the run trains
    role: str | None = None  # tune's "trial" / "final"


def run_id_of(key: RunKey, backbone: Backbone, device: torch.device) -> str:
    """Everything that changes a run's numbers: a CPU fp32 record never stands in for a GPU bf16 run,
    and a method whose ``version`` was bumped never reuses its old records."""
    doc = {"method": key.spec.name, "task": key.task, "suite": key.suite, "seed": key.seed, "config": key.resolved,
           "backbone": {"name": backbone.name, "checksum": backbone.checksum, "img_size": backbone.preprocess.img_size},
           "data": key.data_checksum, "precision": key.precision, "device_type": device.type,
           "method_version": key.spec.version}
    if key.role is not None:
        doc["role"] = key.role
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def needed_splits(protocols: set[str]) -> list[str]:
    return sorted({s for p in protocols for s in PROTOCOL_SPLITS[p]})


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
    configs = {p: resolve(get_method(p.method), p.task, suite, sets + list(p.sets), req.recipe) for p in points}
    data_root = _data_root(req, suite_name)
    for note in warmup_warnings(configs.values()):
        reporter.message(note)
    device = resolve_device(req.device)
    threads = pin_threads(device, req.threads)
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
    ctx = RunContext(device=device, threads=threads, backbone=backbone,
                     cache_dir=Path(req.cache_dir) if req.cache_dir else default_cache_dir(),
                     runs=RunsFolder(req.out), suite=suite_name, checkpoint_every=req.checkpoint_every,
                     claim_timeout=req.claim_timeout, reporter=reporter)
    protocols = {t.name: {configs[p][0].protocol for p in points if p.task == t.name} for t in tasks}
    data = {t.name: _decode(lists[t.name], protocols[t.name], ctx, req.max_image_pixels)
            for t in tasks if protocols[t.name]}
    jobs = [_job(p, seed, configs[p], data[p.task], ctx, by_name[p.task]) for p in points for seed in p.seeds]
    done = _existing(jobs, ctx.out, reporter)
    shape = (len({p.method for p in points}), len(tasks), len({s for p in points for s in p.seeds}))
    reporter.message(sweep_header(suite, ctx, jobs, shape, done))
    return Plan(req, jobs, data, ctx)


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


def _decode(lists: TaskLists, protocols: set[str], ctx: RunContext, max_pixels: int) -> TaskData:
    """Decode the splits the task's protocols need, once (cached on disk), before any training."""
    pre = ctx.backbone.preprocess
    t0 = time.perf_counter()
    splits = {}
    for split in needed_splits(protocols):
        entries = lists.splits[split]
        advance = ctx.reporter.decode(f"{lists.task.name}/{split}", len(entries))
        splits[split] = load_split(entries, pre.img_size, pre.interpolation, lists.where(split),
                                   ctx.cache_dir, advance, max_pixels=max_pixels)
    for warning in task_content_warnings(lists, splits, protocols):
        ctx.reporter.message(f"warning: task '{lists.task.name}': {warning}")
    return TaskData(lists, splits, time.perf_counter() - t0)


def _job(point: Point, seed: int, config: Config, td: TaskData, ctx: RunContext, task: TaskSpec) -> Job:
    tcfg, mcfg, resolved = config
    tcfg = tcfg.settled(ctx.device.type)  # precision and compile decided here, once
    spec = get_method(point.method)
    train_split, eval_split = PROTOCOL_SPLITS[tcfg.protocol]
    data_checksum = hashlib.sha256((td.splits[train_split].checksum + td.splits[eval_split].checksum).encode()
                                   ).hexdigest()
    key = RunKey(spec, task.name, ctx.suite, seed, resolved, data_checksum, tcfg.precision, point.role)
    return Job(task, spec, seed, tcfg, mcfg, resolved, data_checksum, run_id_of(key, ctx.backbone, ctx.device), point)


def warmup_warnings(configs: Iterable[Config]) -> list[str]:
    """One warning per distinct warm-up that would have lasted the whole run (see train.warmup_epochs)."""
    scaled = sorted({(c.warmup_epochs, c.epochs) for c, _, _ in configs if warmup_epochs(c) != c.warmup_epochs})
    return [f"warning: warmup_epochs={w} >= epochs={e}: the learning rate would never reach its peak; warm-up "
            f"scaled to {e // 10} epoch(s) (10% of epochs), recorded as metrics.warmup_scaled"
            for w, e in scaled]


def sweep_header(suite: Suite, ctx: RunContext, jobs: list[Job], shape: tuple[int, int, int], done: int) -> str:
    """The one line that says what a sweep is about to do, before it does anything long."""
    backbone, device = ctx.backbone, ctx.device
    weights = backbone.weights if backbone.weights in ("pretrained", "none") else Path(backbone.weights).name
    precisions = sorted({job.precision for job in jobs})
    epochs = sorted({job.tcfg.epochs for job in jobs})
    dev = f"{device} ({ctx.threads} threads)" if device.type == "cpu" else str(device)
    m, t, s = shape
    configs = len({(job.spec.name, job.task.name, json.dumps(job.resolved, sort_keys=True, default=str))
                   for job in jobs})
    if configs != m * t:  # tune: several configurations of each method and task
        s = f"{s} seed(s), {configs} configuration(s)"
    else:
        s = f"{s} seed(s)"
    return (f"suite {suite.name} ({suite_source(suite)}) | backbone {backbone.name}, weights {weights} "
            f"[{backbone.checksum[:8]}] | device {dev} | precision {'/'.join(precisions)} | "
            f"epochs {'/'.join(map(str, epochs))} | {m} method(s) x {t} task(s) x {s} = {len(jobs)} runs, "
            f"{done} already done")
