"""What the plan hands to each run: the job (one resolved run) and the context all runs of a sweep share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..backbone import Backbone
from ..config import TrainConfig
from ..data.images import SplitData
from ..data.splits import TaskLists
from ..data.tasks import TaskSpec
from ..layout import RunsFolder
from ..registry import MethodSpec
from .request import Point, Reporter


@dataclass
class TaskData:
    lists: TaskLists
    splits: dict[str, SplitData]
    decode_s: float


@dataclass
class Job:
    """One run of the sweep, resolved: everything its run id and record need.

    ``tcfg`` is settled for the sweep's device (``TrainConfig.settled``): its ``precision`` is bf16 or
    fp32 and its ``compile`` true or false, so nothing downstream resolves "auto" again."""

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

    @property
    def precision(self) -> str:
        return self.tcfg.precision

    @property
    def compiled(self) -> bool:
        return self.tcfg.compile == "true"


@dataclass(frozen=True)
class RunContext:
    """Resolved once per sweep by the plan and passed to every run: where it runs, on what, what it writes.

    ``threads`` is the intra-op thread count actually pinned (``repro.pin_threads``)."""

    device: torch.device
    threads: int
    backbone: Backbone
    cache_dir: Path
    runs: RunsFolder
    suite: str  # the suite actually used (--suite, else implied by the tasks or --data-root)
    checkpoint_every: int
    claim_timeout: float
    reporter: Reporter

    @property
    def out(self) -> Path:
        return self.runs.root
