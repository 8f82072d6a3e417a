"""What a caller asks a sweep for and what comes back; torch-free (the CLI builds these before torch loads)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.limits import DEFAULT_MAX_IMAGE_PIXELS

if TYPE_CHECKING:
    from ..train import EpochEnd


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


@dataclass
class JobOutcome:
    """What happened to one job: a record written (with its status) or skipped as already done."""

    label: str
    path: Path | None = None  # the record written; None: skipped
    status: str | None = None


class Reporter:
    """Where the sweep says what it does; the CLI plugs rich progress bars in, tests stay quiet."""

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
