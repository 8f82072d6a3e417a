"""What a method's build function receives besides the backbone, and the hooks it may offer.

A build function ``build(backbone, num_classes, cfg, ctx) -> nn.Module`` returns a module
mapping normalised images to logits, with ``requires_grad`` set on exactly what it trains.
The returned module may define these optional hooks (the shared loop calls them if present
and never branches on a method's name):

- ``get_classifier()`` -> the classifier module (counted separately as head parameters);
- ``aux_loss()`` -> a scalar tensor or None, read exactly once after each training forward
  (the module should drop its reference then: a model holding an autograd graph cannot be copied);
- ``on_epoch_start(epoch, epochs)`` -> per-epoch callback (e.g. a loss warm-up);
- ``no_weight_decay()`` -> set of parameter names excluded from weight decay;
- ``frozen_features(images)`` and ``classify(features)``: when the only trainable part acts
  on features that do not change during training, the loop may compute them once.

The config dataclass may define ``check(self, facts: RunFacts) -> list[str]``: the problems that
make these settings unworkable on this task and backbone (e.g. more k-means clusters than
training images). The runner asks every job before the first run starts, so a sweep never
fails mid-way on settings that could have been refused up front.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .backbone import Preprocess
from .data.images import Batches
from .data.tasks import TaskSpec


@dataclass(frozen=True)
class RunFacts:
    """What a method's ``check`` can rely on before any image is decoded or any model built."""

    task: str
    num_classes: int
    train_size: int  # images in the training split of the run's protocol
    img_size: tuple[int, int]
    image_tokens: int  # patch tokens at img_size
    prefix_tokens: int  # class token and registers
    depth: int  # transformer blocks
    epochs: int


@dataclass
class BuildContext:
    """Facts and services for a method's build step (data-dependent preparation included)."""

    preprocess: Preprocess
    device: torch.device
    seed: int = 0
    task: TaskSpec | None = None
    backbone_checksum: str = ""
    cache_dir: Path | None = None
    # the training split with the evaluation transform, in file order (None: no data, e.g. `inspect`)
    train_batches: Batches | None = None
    # facts the method wants in the run record (selected layers, thresholds, ...)
    info: dict = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    phase_times: dict[str, float] = field(default_factory=dict)
    status: Callable[[str], None] = lambda msg: None

    @property
    def has_data(self) -> bool:
        return self.train_batches is not None

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a named preparation phase (shown in the progress output, recorded in the run)."""
        self.status(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phase_times[name] = self.phase_times.get(name, 0.0) + time.perf_counter() - start


class FrozenBackboneModel(nn.Module):
    """Base for methods that keep the pre-trained ViT frozen and in eval mode while training.

    Keeping the backbone in eval mode (no dropout, no drop-path in frozen blocks) is what the
    official VPT code does; ``backbone_train_mode=True`` lets them act (the official SHIP code
    trains with drop-path on, so SHIP sets it).
    """

    def __init__(self, vit: nn.Module, backbone_train_mode: bool = False):
        super().__init__()
        self.vit = vit
        self.backbone_train_mode = backbone_train_mode

    def train(self, mode: bool = True) -> FrozenBackboneModel:
        super().train(mode)
        if mode and not self.backbone_train_mode:
            self.vit.eval()
        return self

    def get_classifier(self) -> nn.Module:
        return self.vit.get_classifier()
