"""The sweep's vocabulary: the request, the result, the reporter, one resolved job and its run id.

Also how names in a request resolve (device, built-in data, packaged weights, suite recipes).
Kept apart from runner.py, which plans and executes, so both stay small.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .backbone import Backbone
from .config import Suite, TrainConfig, load_suite_file
from .data.images import SplitData
from .data.limits import DEFAULT_MAX_IMAGE_PIXELS
from .data.splits import PROTOCOL_SPLITS, TaskLists
from .data.tasks import TaskSpec, infer_suite
from .errors import UsageError
from .registry import ALL_METHODS, MethodSpec, expand_methods
from .train import EpochEnd, effective_precision, warmup_epochs


@dataclass(frozen=True)
class Point:
    """One configuration of one method on one task, with extra settings and a role (tune trials, finals).

    ``sets`` are parsed settings ``(method or None, key, value)`` with typed values, applied on top of
    the request's ``--set`` items; ``role`` (e.g. "trial") goes into the run id, so a tune's records
    never stand in for a plain run's; ``extra`` goes into the record only.
    """

    method: str
    task: str
    sets: tuple[tuple[str | None, str, Any], ...] = ()
    seeds: tuple[int, ...] = (0,)
    role: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # stored under the record's "tune"


@dataclass
class SweepRequest:
    methods: list[str] | None = None  # method or family names, "all"; None: the suite's default_methods
    tasks: str = "all"
    seeds: list[int] = field(default_factory=lambda: [0])
    suite: str | None = None  # None: vtab1k when --data-root is given, else mini
    recipe: str = "shared"  # "shared" (one recipe for every task) or a named recipe of the suite (official)
    points: list[Point] | None = None  # None: every method x task x seed; else exactly these (peftbench tune)
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
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # larger images are refused as decompression bombs
    threads: int | None = None  # intra-op threads; None: 1 on a CPU (same result on every machine), torch's on CUDA


@dataclass
class SweepResult:
    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    left_to_others: list[str] = field(default_factory=list)  # claimed by other live workers
    orphaned: list[str] = field(default_factory=list)  # claimed, but by no live worker: left undone
    statuses: dict[str, int] = field(default_factory=dict)
    run_ids: dict[tuple[Point, int], str] = field(default_factory=dict)  # (point, seed) -> run id (points only)


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

    def epoch_finished(self, end: EpochEnd) -> None:  # of the run last started
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


def suite_source(suite: Suite) -> str:
    """Where a suite's recipe comes from, short: the shipped file by its package path."""
    source = suite.source
    if source != "built-in defaults" and Path(source).resolve().parent == Path(__file__).resolve().parent / "suites":
        return f"recipe peftbench/suites/{Path(source).name}"
    return source if source == "built-in defaults" else f"recipe {source}"


def load_suite(name: str, path: Path | None) -> Suite:
    path = path or default_suite_file(name)
    return load_suite_file(path) if path else Suite(name=name)


def sweep_methods(req: SweepRequest) -> list[str]:
    """The request's methods, expanded; without any, the suite's ``default_methods`` (else every method)."""
    if req.methods is not None:
        return expand_methods(req.methods)
    suite = load_suite(suite_of(req), req.suite_file)
    if suite.default_methods is None:
        return expand_methods([ALL_METHODS])
    try:
        return expand_methods(suite.default_methods)
    except UsageError as exc:
        raise UsageError(f"{suite.source}: default_methods: {exc}") from None


def suite_of(req: SweepRequest) -> str:
    """--suite; else the one suite that holds the named --tasks; else vtab1k when a --data-root is given
    (the user's own VTAB-1k copy), else mini."""
    if req.suite is not None:
        return req.suite
    return infer_suite(req.tasks, "vtab1k" if req.data_root is not None else "mini")


def run_id_of(spec: MethodSpec, task: str, suite: str, seed: int, resolved: dict, backbone: Backbone,
              data_checksum: str, precision: str, device: torch.device, role: str | None = None) -> str:
    """Everything that changes a run's numbers: a CPU fp32 record never stands in for a GPU bf16 run,
    and a method whose ``version`` was bumped never reuses its old records."""
    key = {"method": spec.name, "task": task, "suite": suite, "seed": seed, "config": resolved,
           "backbone": {"name": backbone.name, "checksum": backbone.checksum, "img_size": backbone.preprocess.img_size},
           "data": data_checksum, "precision": precision, "device_type": device.type, "method_version": spec.version}
    if role is not None:
        key["role"] = role
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class TaskData:
    lists: TaskLists
    splits: dict[str, SplitData]
    decode_s: float


def needed_splits(protocols: set[str]) -> list[str]:
    return sorted({s for p in protocols for s in PROTOCOL_SPLITS[p]})


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
    point: Point | None = None

    @property
    def label(self) -> str:
        tag = f"/{self.point.extra['label']}" if self.point and "label" in self.point.extra else ""
        return f"{self.spec.name}/{self.task.name}{tag}/seed{self.seed}"


@dataclass
class JobOutcome:
    """What happened to one job: a record written (with its status) or skipped as already done."""

    label: str
    path: Path | None = None  # the record written; None: skipped
    status: str | None = None


def warmup_warnings(configs: Iterable[tuple[TrainConfig, Any, dict]]) -> list[str]:
    """One warning per distinct warm-up that would have lasted the whole run (see train.warmup_epochs)."""
    scaled = sorted({(c.warmup_epochs, c.epochs) for c, _, _ in configs if warmup_epochs(c) != c.warmup_epochs})
    return [f"warning: warmup_epochs={w} >= epochs={e}: the learning rate would never reach its peak; warm-up "
            f"scaled to {e // 10} epoch(s) (10% of epochs), recorded as metrics.warmup_scaled"
            for w, e in scaled]


def sweep_header(suite: Suite, backbone: Backbone, device: torch.device, jobs: list[Job],
                 shape: tuple[int, int, int], done: int) -> str:
    """The one line that says what a sweep is about to do, before it does anything long."""
    weights = backbone.weights if backbone.weights in ("pretrained", "none") else Path(backbone.weights).name
    precisions = sorted({effective_precision(job.tcfg, device) for job in jobs})
    epochs = sorted({job.tcfg.epochs for job in jobs})
    dev = f"{device} ({torch.get_num_threads()} threads)" if device.type == "cpu" else str(device)
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
