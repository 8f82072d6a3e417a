"""Sweeps: methods × tasks × seeds → one record each; completed runs are skipped (resume for free)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .backbone import DEFAULT_BACKBONE, Backbone, load_backbone
from .checkpoint import Checkpointer
from .claims import Claims
from .config import Suite, TrainConfig, load_suite_file, parse_sets, resolve
from .data.images import Batches, SplitData, default_cache_dir, load_split
from .data.splits import PROTOCOL_SPLITS, TaskLists, read_task_lists
from .data.tasks import TaskSpec, resolve_tasks
from .errors import DataError, PeftbenchError, UsageError
from .measure import count_params, inference_gflops, measure_throughput, peak_memory
from .method_api import BuildContext
from .records import FINAL_STATUSES, SCHEMA_VERSION, RecordError, find_record, record_path, write_record
from .registry import MethodSpec, get_method
from .train import (
    Diverged,
    autocast_factory,
    effective_precision,
    evaluate,
    make_optimizer,
    make_step,
    seed_everything,
    train,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class SweepRequest:
    methods: list[str]
    tasks: str = "all"
    seeds: list[int] = field(default_factory=lambda: [0])
    suite: str = "mini"
    suite_file: Path | None = None
    data_root: Path | None = None  # None: the suite's built-in data (mini), else required
    out: Path = Path("runs")
    backbone: str | None = None  # None: the suite's backbone, else DEFAULT_BACKBONE
    weights: str | None = None  # None: the suite's weights, else "pretrained"
    img_size: int | None = None
    sets: list[str] = field(default_factory=list)
    cache_dir: Path | None = None
    device: str = "auto"
    trust_checkpoint: bool = False
    checkpoint_every: int = 0  # epochs between training checkpoints (0 = none); not part of the run id
    claim_timeout: float = 600.0  # seconds without heartbeat after which another worker takes a run over
    worker_id: str | None = None  # default host:pid


@dataclass
class SweepResult:
    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    left_to_others: list[str] = field(default_factory=list)  # claimed by other live workers
    statuses: dict[str, int] = field(default_factory=dict)


class Reporter:
    """Where the runner says what it does; the CLI plugs rich progress bars in, tests stay quiet."""

    def message(self, text: str) -> None:  # a line worth keeping in the log
        pass

    def sweep(self, total: int) -> None:
        pass

    def run_started(self, label: str, total_steps: int) -> None:
        pass

    def run_progress(self, done: int, total: int | None = None, description: str | None = None) -> None:
        pass

    def run_finished(self, label: str, summary: str) -> None:
        pass

    def decode(self, label: str, total: int) -> Callable[[int], None]:
        return lambda n: None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"--device {name}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    return dev


def builtin_data_root(suite: str) -> Path | None:
    """The data of a suite that peftbench generates itself (created on first use), else None."""
    if suite == "mini":
        from .data.mini import ensure_mini_suite

        return ensure_mini_suite()
    return None


def resolve_weights(weights: str) -> str:
    """'package:FILE' names a checkpoint shipped inside peftbench (resources/FILE)."""
    if weights.startswith("package:"):
        return str(Path(__file__).resolve().parent / "resources" / weights.split(":", 1)[1])
    return weights


def default_suite_file(suite: str) -> Path | None:
    """The recipe shipped for a built-in suite (package data, so non-editable installs have it too)."""
    path = Path(__file__).resolve().parent / "suites" / f"{suite}.yaml"
    return path if path.is_file() else None


def load_suite(name: str, path: Path | None) -> Suite:
    path = path or default_suite_file(name)
    return load_suite_file(path) if path else Suite(name=name)


def _git_state() -> tuple[str | None, bool | None]:
    try:
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5)
        if commit.returncode != 0:
            return None, None
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return commit.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def provenance(device: torch.device) -> dict[str, Any]:
    import numpy
    import timm

    commit, dirty = _git_state()
    if device.type == "cuda":
        dev = f"cuda:{torch.cuda.get_device_name(device)}"
    else:
        cpu = platform.processor() or platform.machine()
        dev = f"cpu:{cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    return {"versions": {"peftbench": __version__, "torch": torch.__version__, "timm": timm.__version__,
                         "numpy": numpy.__version__, "python": platform.python_version()},
            "git_commit": commit, "git_dirty": dirty, "device": dev, "hostname": socket.gethostname(),
            "argv": sys.argv[1:]}


def run_id_of(method: str, task: str, suite: str, seed: int, resolved: dict, backbone: Backbone, data_checksum: str
              ) -> str:
    key = {"method": method, "task": task, "suite": suite, "seed": seed, "config": resolved,
           "backbone": {"name": backbone.name, "checksum": backbone.checksum, "img_size": backbone.preprocess.img_size},
           "data": data_checksum}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class TaskData:
    lists: TaskLists
    splits: dict[str, SplitData]
    decode_s: float


def _needed_splits(protocols: set[str]) -> list[str]:
    return sorted({s for p in protocols for s in PROTOCOL_SPLITS[p]})


def execute_run(spec: MethodSpec, task: TaskSpec, seed: int, tcfg: TrainConfig, mcfg: Any, backbone: Backbone,
                data: TaskData, device: torch.device, cache_dir: Path, reporter: Reporter,
                checkpoint: Checkpointer | None = None) -> dict[str, Any]:
    """Build, train, evaluate once, measure. Returns status + metrics (+ method info) for the record."""
    train_split, eval_split = PROTOCOL_SPLITS[tcfg.protocol]
    pre = backbone.preprocess
    make_batches = lambda split: Batches(data.splits[split], pre.img_size, pre.mean, pre.std,
                                         pre.interpolation, device)
    train_batches, eval_batches = make_batches(train_split), make_batches(eval_split)
    precision = effective_precision(tcfg, device)
    wall: dict[str, float] = {"data": data.decode_s}
    seed_everything(seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    vit = backbone.instantiate(task.num_classes, drop_path=tcfg.drop_path).to(device)
    ctx = BuildContext(preprocess=pre, device=device, seed=seed, task=task, backbone_checksum=backbone.checksum,
                       cache_dir=cache_dir, train_batches=train_batches,
                       status=lambda s: reporter.run_progress(0, description=s))
    model = spec.build(vit, task.num_classes, mcfg, ctx).to(device)
    wall["prepare"] = time.perf_counter() - t0
    metrics: dict[str, Any] = {**count_params(model), "precision": precision}
    metrics["gflops"] = inference_gflops(model, pre.img_size, device)
    steps_per_epoch = -(-len(train_batches.data) // tcfg.batch_size)
    total_steps = tcfg.epochs * steps_per_epoch
    eval_steps = -(-len(eval_batches.data) // tcfg.eval_batch_size)
    reporter.run_progress(0, total_steps + eval_steps, description="train")
    status, reason, phase, resumed_from = "complete", None, "train", 0
    t0 = time.perf_counter()
    try:
        result = train(model, train_batches, tcfg, device, seed, on_step=lambda d, t: reporter.run_progress(d),
                       checkpoint=checkpoint)
        resumed_from = result.resumed_from
        metrics["final_train_loss"] = result.losses[-1]
        metrics["first_step_s"] = result.first_step_s
        metrics["epochs_done"] = result.epochs_done
        wall["train"] = time.perf_counter() - t0
        phase = "evaluation"
        reporter.run_progress(total_steps, description=f"evaluate {eval_split}")
        t0 = time.perf_counter()
        evaluated = [total_steps]

        def on_eval_batch(_: int) -> None:
            evaluated[0] += 1
            reporter.run_progress(evaluated[0])

        top1 = evaluate(model, eval_batches, tcfg.eval_batch_size, precision, device, on_batch=on_eval_batch)
        wall["eval"] = time.perf_counter() - t0
        metrics["test_top1" if eval_split == "test" else "val_top1"] = top1
        metrics["eval_split"] = eval_split
        phase = "measurement"
        t0 = time.perf_counter()
        mem, kind = peak_memory(device)
        metrics["peak_mem_bytes"], metrics["peak_mem_kind"] = mem, kind
        autocast = autocast_factory(precision, device)
        metrics.update(measure_throughput(
            model, lambda m: make_step(m, make_optimizer(m, tcfg, device), tcfg, autocast), pre.img_size,
            task.num_classes, device, tcfg.bench_batch, tcfg.bench_steps, tcfg.bench_warmup, autocast))
        wall["measure"] = time.perf_counter() - t0
    except Diverged as exc:
        status, reason = "diverged", str(exc)
    except torch.cuda.OutOfMemoryError as exc:  # recorded as such: never retried with a smaller batch
        status, reason = "oom", _oom_reason(exc, phase, tcfg)
    if status != "complete":
        wall[phase] = time.perf_counter() - t0
    metrics["wall_s"] = wall
    return {"status": status, "reason": reason, "metrics": metrics, "method_info": ctx.info,
            "notices": ctx.notices, "phase_s": ctx.phase_times, "resumed_from_epoch": resumed_from}


def _oom_reason(exc: BaseException, phase: str, tcfg: TrainConfig) -> str:
    first = (str(exc).splitlines() or [""])[0]
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # let the next run start from a clean slate
    return f"CUDA out of memory during {phase} at batch {tcfg.batch_size} (grad_accum {tcfg.grad_accum}): {first}"


@dataclass
class Job:
    """One run of the sweep, resolved: everything its run id and record need."""

    task: TaskSpec
    spec: MethodSpec
    seed: int
    tcfg: TrainConfig
    mcfg: Any
    resolved: dict
    data_checksum: str
    run_id: str

    @property
    def label(self) -> str:
        return f"{self.spec.name}/{self.task.name}/seed{self.seed}"


def run_sweep(req: SweepRequest, reporter: Reporter | None = None) -> SweepResult:
    reporter = reporter or Reporter()
    specs = [get_method(m) for m in req.methods]
    if not specs:
        raise UsageError("--methods: no method given")
    tasks = resolve_tasks(req.tasks, req.suite)
    suite = load_suite(req.suite, req.suite_file)
    sets = parse_sets(req.sets)
    configs = {(t.name, s.name): resolve(s, t.name, suite, sets) for t in tasks for s in specs}
    data_root = Path(req.data_root) if req.data_root is not None else builtin_data_root(req.suite)
    if data_root is None:
        raise UsageError(f"--data-root is required for suite '{req.suite}' (a folder in the VTAB-1k layout)")
    if not data_root.is_dir():
        raise UsageError(f"--data-root {data_root}: no such folder")
    device = resolve_device(req.device)
    cache_dir = Path(req.cache_dir) if req.cache_dir else default_cache_dir()

    # pre-flight: every list of every task, all problems at once, before anything heavy
    lists: dict[str, TaskLists] = {}
    problems: list[str] = []
    for task in tasks:
        try:
            lists[task.name] = read_task_lists(data_root, task)
        except DataError as exc:
            problems.append(str(exc))
    if problems:
        raise DataError("pre-flight check failed:\n" + "\n".join(problems))
    for tl in lists.values():
        for w in tl.warnings:
            reporter.message(f"warning: {w}")

    backbone = load_backbone(req.backbone or suite.backbone or DEFAULT_BACKBONE,
                             resolve_weights(req.weights or suite.weights or "pretrained"), req.img_size,
                             req.trust_checkpoint)
    pre = backbone.preprocess

    # decode every needed split once (cached on disk) before any training
    data: dict[str, TaskData] = {}
    for task in tasks:
        protocols = {configs[(task.name, s.name)][0].protocol for s in specs}
        t0 = time.perf_counter()
        splits = {}
        for split in _needed_splits(protocols):
            entries = lists[task.name].splits[split]
            where = str(lists[task.name].folder / f"{split}.txt")
            advance = reporter.decode(f"{task.name}/{split}", len(entries))
            splits[split] = load_split(entries, pre.img_size, pre.interpolation, where, cache_dir, advance)
        data[task.name] = TaskData(lists[task.name], splits, time.perf_counter() - t0)

    out = Path(req.out)
    jobs = []
    for task in tasks:
        td = data[task.name]
        for spec in specs:
            tcfg, mcfg, resolved = configs[(task.name, spec.name)]
            train_split, eval_split = PROTOCOL_SPLITS[tcfg.protocol]
            data_checksum = hashlib.sha256(
                (td.splits[train_split].checksum + td.splits[eval_split].checksum).encode()).hexdigest()
            jobs += [Job(task, spec, seed, tcfg, mcfg, resolved, data_checksum,
                         run_id_of(spec.name, task.name, req.suite, seed, resolved, backbone, data_checksum))
                     for seed in req.seeds]
    claims = Claims(out, req.worker_id, req.claim_timeout)
    prov = {**provenance(device), "worker": claims.worker}
    result = SweepResult()
    reporter.sweep(len(jobs))

    def done_already(job: Job) -> bool:
        existing = find_record(out, job.run_id)
        if existing is None or existing["status"] not in FINAL_STATUSES:
            return False
        (out / ".checkpoints" / f"{job.run_id}.pt").unlink(missing_ok=True)  # left if killed after the write
        result.skipped.append(job.label)
        reporter.run_finished(job.label, f"already done ({existing['status']}), skipped")
        return True

    def attempt(job: Job) -> bool:
        """Run or skip a job; False if another live worker holds it."""
        if done_already(job):
            return True
        claim = claims.acquire(job.run_id)
        if claim is None:
            return False
        try:
            if not done_already(job):  # another worker may have finished it between our look and our claim
                _run_job(job, req, backbone, data[job.task.name], device, cache_dir, prov, result, reporter)
                if claim.lost:
                    reporter.message(f"warning: {job.label}: another worker took our claim over (no heartbeat "
                                     f"for {req.claim_timeout:g} s); it may write this record again")
        finally:
            claim.release()
        return True

    pending = jobs
    while pending:  # later passes pick up runs whose owners finished, gave up or went stale meanwhile
        left = [job for job in pending if not attempt(job)]
        if len(left) == len(pending):
            break
        pending = left
    for job in pending:
        result.left_to_others.append(job.label)
        holder = claims.owner(job.run_id).get("worker", "another worker")
        reporter.run_finished(job.label, f"claimed by {holder}, left to it")
    return result


def _run_job(job: Job, req: SweepRequest, backbone: Backbone, td: TaskData, device: torch.device, cache_dir: Path,
             prov: dict, result: SweepResult, reporter: Reporter) -> None:
    """Execute one claimed run and write its record; its checkpoint goes once the record is safe."""
    spec, task, seed = job.spec, job.task, job.seed
    out = Path(req.out)
    checkpoint = Checkpointer(out / ".checkpoints" / f"{job.run_id}.pt", req.checkpoint_every,
                              lambda text: reporter.message(f"{job.label}: {text}"))
    reporter.run_started(job.label, job.tcfg.epochs)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        outcome = execute_run(spec, task, seed, job.tcfg, job.mcfg, backbone, td, device, cache_dir, reporter,
                              checkpoint)
    except (PeftbenchError, KeyboardInterrupt):
        raise
    except torch.cuda.OutOfMemoryError as exc:  # while building the method
        outcome = {"status": "oom", "reason": _oom_reason(exc, "build", job.tcfg)}
    except Exception as exc:  # a broken plugin or run: recorded as failed, the sweep goes on
        outcome = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    train_split, eval_split = PROTOCOL_SPLITS[job.tcfg.protocol]
    record = {
        "schema": SCHEMA_VERSION, "run_id": job.run_id, "status": outcome["status"], "reason": outcome["reason"],
        "method": spec.name, "task": task.name, "suite": req.suite, "seed": seed,
        "created": started, "config": job.resolved,
        "backbone": backbone.describe(),
        "data": {"root": str(td.lists.folder.resolve().parent), "folder": str(td.lists.folder.resolve()),
                 "checksum": job.data_checksum, "splits": {k: len(v) for k, v in td.lists.splits.items()},
                 "train_split": train_split, "eval_split": eval_split},
        "metrics": outcome.get("metrics", {}), "method_info": outcome.get("method_info", {}),
        "notices": outcome.get("notices", []), "prepare_phases_s": outcome.get("phase_s", {}),
        "provenance": {**prov, "resumed_from_epoch": outcome.get("resumed_from_epoch", 0)},
    }
    path = record_path(out, record)
    try:
        write_record(path, record)
    except OSError as exc:
        raise RecordError(f"cannot write the record of {job.label} to {path}: {exc}; nothing was kept for this "
                          "run (its checkpoint, if any, remains); free space and run the same command again"
                          ) from exc
    checkpoint.discard()
    result.written.append(path)
    result.statuses[outcome["status"]] = result.statuses.get(outcome["status"], 0) + 1
    m = outcome.get("metrics", {})
    top1 = m.get("test_top1", m.get("val_top1"))
    summary = (f"top-1 {top1:.2f}%  trainable {m['trainable_params']:,}  {m['gflops']:.2f} GFLOPs"
               if outcome["status"] == "complete" else f"{outcome['status']}: {outcome['reason']}")
    reporter.run_finished(job.label, summary)


def inspect_method(method: str, backbone: str = DEFAULT_BACKBONE, weights: str = "none", num_classes: int = 100,
                   img_size: int | None = None, sets: list[str] | None = None, suite: str = "vtab1k",
                   task: str | None = None, trust_checkpoint: bool = False) -> dict[str, Any]:
    """Parameters and inference GFLOPs of a method on a backbone, without data or training."""
    spec = get_method(method)
    tcfg, mcfg, resolved = resolve(spec, task, load_suite(suite, None), parse_sets(sets or []))
    bb = load_backbone(backbone, weights, img_size, trust_checkpoint)
    vit = bb.instantiate(num_classes, drop_path=tcfg.drop_path)
    ctx = BuildContext(preprocess=bb.preprocess, device=torch.device("cpu"), backbone_checksum=bb.checksum,
                       cache_dir=default_cache_dir())
    model = spec.build(vit, num_classes, mcfg, ctx)
    out = {"method": method, "backbone": backbone, "weights": bb.weights, "num_classes": num_classes,
           "img_size": list(bb.preprocess.img_size), **count_params(model),
           "gflops": inference_gflops(model, bb.preprocess.img_size), "config": resolved["method"],
           "method_info": ctx.info, "notices": ctx.notices}
    return out


def method_table() -> list[dict[str, Any]]:
    from .registry import available_methods

    return [{"name": n, "description": get_method(n).description, "knobs": get_method(n).knobs()}
            for n in available_methods()]


def train_keys() -> list[dict[str, Any]]:
    return [{"name": f.name, "default": f.default, "help": f.metadata.get("help", "")}
            for f in dataclasses.fields(TrainConfig)]
