"""Checks before training: settings that cannot work, refused for every job before the first run starts.

Option checks need nothing; method checks need only the split lists and the backbone's geometry,
both known before any image is decoded. Each method states its own limits through the optional
``check(facts)`` of its config dataclass (see method_api), so nothing here knows a method by name.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .backbone import Backbone
from .config import TrainConfig
from .data.splits import PROTOCOL_SPLITS, TaskLists
from .data.tasks import TaskSpec
from .errors import UsageError
from .method_api import ChecksSettings, RunFacts


def check_options(claim_timeout: float, checkpoint_every: int) -> None:
    """Sweep options that would break the sweep itself (not a run): one error naming the option."""
    if not (math.isfinite(claim_timeout) and claim_timeout > 0):
        raise UsageError(f"--claim-timeout {claim_timeout:g}: must be a positive number of seconds (a claim "
                         "without a heartbeat for this long is taken over by another worker)")
    if checkpoint_every < 0:
        raise UsageError(f"--checkpoint-every {checkpoint_every}: must be 0 (off) or a positive number of epochs")


def method_problems(label: str, mcfg: Any, facts: RunFacts) -> list[str]:
    """The method's own verdict on one job, each problem prefixed with the job's label."""
    return [f"{label}: {p}" for p in mcfg.check(facts)] if isinstance(mcfg, ChecksSettings) else []


def raise_if_any(problems: Iterable[str]) -> None:
    problems = list(dict.fromkeys(problems))  # one line per problem, even if several seeds share it
    if problems:
        raise UsageError(f"{len(problems)} setting(s) cannot work on the data; nothing was run:\n  "
                         + "\n  ".join(problems))


def run_facts(task: TaskSpec, tcfg: TrainConfig, lists: TaskLists, backbone: Backbone) -> RunFacts:
    """The facts of one (task, method) job, from the split lists and the loaded backbone only."""
    train_split = PROTOCOL_SPLITS[tcfg.protocol][0]
    geometry = backbone.geometry
    return RunFacts(task=task.name, num_classes=task.num_classes, train_size=len(lists.splits[train_split]),
                    img_size=backbone.preprocess.img_size, image_tokens=geometry["image_tokens"],
                    prefix_tokens=geometry["prefix_tokens"], depth=geometry["depth"], epochs=tcfg.epochs,
                    width=geometry.get("width", 0),
                    modules=backbone_modules(backbone) + _classifier(task.num_classes, geometry.get("width", 0)))


def _classifier(num_classes: int, width: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The task's classifier (a timm ViT's ``head``, made per task, so not in the backbone's state dict)."""
    return (("head", (num_classes, width)),) if width else ()


def backbone_modules(backbone: Backbone) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(path, weight shape) of the backbone's modules with a weight, from its state dict (the classifier is
    not in it: it is made per task)."""
    return tuple((key[: -len(".weight")], tuple(value.shape)) for key, value in backbone.state_dict.items()
                 if key.endswith(".weight"))
