"""One run: build the method, train, evaluate once, measure its cost. ``catalog`` reuses the build and cost steps."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..backbone import Backbone
from ..checkpoint import Checkpointer
from ..config import TrainConfig
from ..data.images import Batches, SplitData
from ..data.splits import PROTOCOL_SPLITS
from ..measure import (
    BenchShape,
    RunMemory,
    count_params,
    inference_gflops,
    inference_model,
    logits_problem,
    measure_throughput,
    stored_per_task,
    tensor_ids,
)
from ..method_api import BuildContext, MethodError
from ..registry import MethodSpec
from ..train import (
    Diverged,
    autocast_factory,
    evaluate,
    make_optimizer,
    make_step,
    seed_everything,
    train,
    warmup_epochs,
)
from .context import Job, RunContext, TaskData
from .request import Reporter


@dataclass
class Built:
    """A method built on a fresh copy of the backbone, with what its build step reported."""

    model: torch.nn.Module
    ctx: BuildContext
    stored: int  # values the method keeps per task (see ``measure.stored_per_task``)


def build_model(spec: MethodSpec, mcfg: Any, tcfg: TrainConfig, backbone: Backbone, ctx: BuildContext,
                num_classes: int) -> Built:
    """The method on a fresh backbone with ``num_classes`` outputs, on ``ctx.device``."""
    vit = backbone.instantiate(num_classes, drop_path=tcfg.drop_path).to(ctx.device)
    shared = tensor_ids(vit)
    model = spec.build_on(backbone.name, vit, num_classes, mcfg, ctx).to(ctx.device)
    return Built(model, ctx, stored_per_task(model, shared))


def static_cost(spec: MethodSpec, built: Built, num_classes: int, backbone: Backbone
                ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Check the logits' shape (a wrong one raises ``MethodError`` naming the method), then the model
    inference is measured on (its merge, else itself) and what needs no training: parameter counts,
    values stored per task, inference GFLOPs; ``merge_error`` says why a merge that raised was not used."""
    model, device, img_size = built.model, built.ctx.device, backbone.preprocess.img_size
    problem = logits_problem(model, num_classes, img_size, device)
    if problem:
        raise MethodError(f"method '{spec.name}'{spec.origin}: {problem}")
    merged_model, merged, merge_error = model, False, None
    inference = inference_model(model)
    if inference.merge_error is not None:
        exc = inference.merge_error
        merge_error = f"{type(exc).__name__}: {exc}{spec.blame(exc)}"
    elif inference.merged:
        problem = logits_problem(inference.model, num_classes, img_size, device)
        if problem:
            merge_error = f"the merged model: {problem}"
        else:
            merged_model, merged = inference.model, True
    cost = {**count_params(model), "stored_per_task_params": built.stored, "merged": merged,
            **({"merge_error": merge_error} if merge_error else {}),
            "gflops": inference_gflops(merged_model, img_size, device)}
    return merged_model, cost


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


@dataclass
class _Run:
    """One run in progress: its job, the batches it trains and evaluates on, what it has measured so far."""

    job: Job
    train: Batches
    eval: Batches
    eval_split: str
    metrics: dict[str, Any]
    clock: _Clock


def batches_of(split: SplitData, backbone: Backbone, device: torch.device) -> Batches:
    pre = backbone.preprocess
    return Batches(split, pre.img_size, pre.mean, pre.std, pre.interpolation, device)


def execute_run(job: Job, data: TaskData, ctx: RunContext, checkpoint: Checkpointer | None = None) -> dict[str, Any]:
    """Build, train, evaluate once, measure. Returns status + metrics (+ method info) for the record.

    Divergence and CUDA OOM end the run with that status (never retried with a smaller batch)."""
    tcfg, task, device = job.tcfg, job.task, ctx.device
    train_split, eval_split = PROTOCOL_SPLITS[tcfg.protocol]
    train_b, eval_b = (batches_of(data.splits[s], ctx.backbone, device) for s in (train_split, eval_split))
    wall: dict[str, float] = {"data": data.decode_s}
    seed_everything(job.seed)
    memory = RunMemory(device)
    memory.start()
    t0 = time.perf_counter()
    build_ctx = BuildContext(preprocess=ctx.backbone.preprocess, device=device, task=task,
                             backbone_checksum=ctx.backbone.checksum, cache_dir=ctx.cache_dir, train_batches=train_b,
                             status=lambda s: ctx.reporter.run_progress(0, description=s))
    built = build_model(job.spec, job.mcfg, tcfg, ctx.backbone, build_ctx, task.num_classes)
    wall["prepare"] = time.perf_counter() - t0
    _, cost = static_cost(job.spec, built, task.num_classes, ctx.backbone)
    if "merge_error" in cost:
        build_ctx.notices.append(f"{job.spec.name}: merge() failed ({cost['merge_error']}); inference GFLOPs and "
                                 "images/s are of the unmerged model")
    metrics: dict[str, Any] = {**cost, "precision": job.precision, "compiled": job.compiled,
                               "warmup_epochs": warmup_epochs(tcfg),
                               "warmup_scaled": warmup_epochs(tcfg) != tcfg.warmup_epochs}
    run = _Run(job, train_b, eval_b, eval_split, metrics, _Clock(wall))
    status, reason, resumed_from = "complete", None, 0
    try:
        resumed_from = _train_and_evaluate(built.model, run, ctx.reporter, device, checkpoint)
        _measure(built.model, run, ctx, memory)
    except Diverged as exc:
        status, reason = "diverged", str(exc)
    except torch.cuda.OutOfMemoryError as exc:
        status, reason = "oom", oom_reason(exc, run.clock.phase, tcfg)
    if status != "complete":
        run.clock.stop()
    metrics["wall_s"] = wall
    return {"status": status, "reason": reason, "metrics": metrics, "method_info": build_ctx.info,
            "notices": build_ctx.notices, "phase_s": build_ctx.phase_times, "resumed_from_epoch": resumed_from}


def _train_and_evaluate(model: torch.nn.Module, run: _Run, reporter: Reporter, device: torch.device,
                        checkpoint: Checkpointer | None) -> int:
    """Train, then evaluate once on the run's evaluation split; fills its metrics, returns the epoch resumed from."""
    tcfg, metrics = run.job.tcfg, run.metrics
    total_steps = tcfg.epochs * -(-len(run.train.data) // tcfg.batch_size)
    eval_steps = -(-len(run.eval.data) // tcfg.eval_batch_size)
    reporter.run_progress(0, total_steps + eval_steps, description="train")
    run.clock.start("train")
    result = train(model, run.train, tcfg, device, run.job.seed, on_step=lambda d, t: reporter.run_progress(d),
                   checkpoint=checkpoint, val_batches=run.eval if run.eval_split != "test" else None,
                   on_epoch=reporter.epoch_finished)  # per-epoch validation under protocol=val only
    metrics.update(final_train_loss=result.losses[-1], first_step_s=result.first_step_s,
                   epochs_done=result.epochs_done, history=result.history())
    run.clock.stop("train")
    reporter.run_progress(total_steps, description=f"evaluate {run.eval_split}")
    run.clock.start("evaluation")
    ticks = itertools.count(total_steps + 1)
    top1 = evaluate(model, run.eval, tcfg.eval_batch_size, run.job.precision, device,
                    on_batch=lambda _: reporter.run_progress(next(ticks)), compile=run.job.compiled)
    run.clock.stop("eval")
    metrics["test_top1" if run.eval_split == "test" else "val_top1"] = top1
    metrics["eval_split"] = run.eval_split
    return result.resumed_from


def _measure(model: torch.nn.Module, run: _Run, ctx: RunContext, memory: RunMemory) -> None:
    """Peak memory of the run, then training and inference throughput on synthetic batches (inference on
    the trained model's merge when the method merges)."""
    tcfg, metrics = run.job.tcfg, run.metrics
    run.clock.start("measurement")
    metrics["peak_mem_bytes"], metrics["peak_mem_kind"] = memory.peak()
    autocast = autocast_factory(run.job.precision, ctx.device)
    shape = BenchShape(ctx.backbone.preprocess.img_size, run.job.task.num_classes, tcfg.bench_batch,
                       tcfg.bench_steps, tcfg.bench_warmup)
    metrics.update(measure_throughput(
        model, lambda m: make_step(m, make_optimizer(m, tcfg, ctx.device), tcfg, autocast, run.job.compiled),
        shape, ctx.device, autocast, inference=inference_model(model)[0] if metrics["merged"] else None))
    run.clock.stop("measure")


def oom_reason(exc: BaseException, phase: str, tcfg: TrainConfig) -> str:
    first = (str(exc).splitlines() or [""])[0]
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # let the next run start from a clean slate
    return f"CUDA out of memory during {phase} at batch {tcfg.batch_size} (grad_accum {tcfg.grad_accum}): {first}"
