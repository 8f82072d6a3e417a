"""What a method's build function receives besides the backbone, and the hooks it may offer.

A build function (:class:`BuildFn`) returns a module mapping normalised images to logits of shape
(images, classes) (checked once after the build: a wrong shape fails the run), with
``requires_grad`` set on exactly what it trains. In training mode its forward may instead return
a :class:`MethodOutput`, the logits with an auxiliary loss that the loop adds to the
cross-entropy (SHIP's matching loss); in evaluation mode it returns the logits alone, so every
consumer of a trained model (evaluation, FLOP counting, a user's own code) gets plain logits.
This module is the method author's toolkit: read it and one example (methods/lora.py for a
method that wraps backbone modules, methods/vpt.py for one that runs the blocks itself,
methods/ship/ for data-dependent preparation). It holds:

- what ``build`` receives (:class:`BuildContext`) and returns (a module; :class:`MethodOutput`
  for an auxiliary loss);
- the freezing helpers: :func:`freeze` (no gradient anywhere in a module), :func:`train_head`
  (the classifier trains) and :func:`freeze_except_head` (both: "freeze the backbone, train the
  head", the start of every method but full fine-tuning);
- every optional hook as a runtime-checkable Protocol. The shared loop finds a hook with
  ``isinstance(model, Hook)`` and never branches on a method's name:

  - :class:`HasClassifier` ``get_classifier()`` -> the classifier module (counted as head parameters);
  - :class:`EpochAware` ``on_epoch_start(epoch, epochs)`` -> per-epoch callback (e.g. a loss warm-up);
  - :class:`ExemptsWeightDecay` ``no_weight_decay()`` -> parameter names excluded from weight decay;
  - :class:`Merges` ``merge()`` -> an ``nn.Module`` computing the same logits with the adaptation
    folded into plain backbone weights (LoRA, SSF, ...); inference GFLOPs and images/s are then
    measured on it and the record says ``metrics.merged: true``. The trained model is left untouched.
    A ``merge()`` that raises (or whose logits have the wrong shape) leaves the unmerged model
    measured, with ``metrics.merge_error`` and a notice in the record;
  - :class:`CachesFrozenFeatures` ``frozen_features(images)`` and ``classify(features)``: when the
    only trainable part acts on features that do not change during training, the loop may compute
    them once;
  - :class:`Mergeable` ``merged()`` on a wrapper inside the backbone (see :mod:`peftbench.adapt`);
  - :class:`ChecksSettings` on the *config* dataclass: ``check(self, facts: RunFacts) -> list[str]``,
    the problems that make these settings unworkable on this task and backbone (e.g. more k-means
    clusters than training images). The sweep asks every job before the first run starts, so a
    sweep never fails mid-way on settings that could have been refused up front.

An auxiliary loss is not a hook but a return type: a training forward returns :class:`MethodOutput`.
Data-dependent preparation (SHIP's layer grouping and prototypes) happens inside ``build``: it reads
``ctx.train_batches`` (None when there is no data, e.g. ``peftbench inspect``), times itself with
``ctx.phase(name)``, caches under ``ctx.cache_dir`` keyed by ``ctx.backbone_checksum`` and reports
what it chose in ``ctx.info``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn

from .backbone import Preprocess, freeze  # freeze: a method author imports every helper from here
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
    width: int = 0  # embedding width of the tokens (0: not known)
    # (path, weight shape) of every backbone module with a weight, the classifier excepted: what a method
    # that adapts modules by name (the peft family) checks its targets and their widths against
    modules: tuple[tuple[str, tuple[int, ...]], ...] = ()


class MethodError(Exception):
    """A method broke this contract (e.g. logits of the wrong shape): its run fails, the sweep goes on."""


class MethodOutput(NamedTuple):
    """A training forward's result when the method has a loss of its own besides the cross-entropy."""

    logits: torch.Tensor
    # already weighted; per image (B,) so that the loop weights it like the cross-entropy and leaves the
    # padding of a short last batch out (a scalar is added as is); None: none
    aux_loss: torch.Tensor | None = None


def split_output(out: torch.Tensor | MethodOutput) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits, auxiliary loss or None) from whatever a method's forward returned."""
    if isinstance(out, MethodOutput):
        return out.logits, out.aux_loss
    return out, None


@dataclass
class BuildContext:
    """Facts and services for a method's build step (data-dependent preparation included).

    There is no seed here: the sweep seeds torch's, numpy's and Python's generators with the
    run's seed right before ``build``, so a method's random initialisation follows the run's seed.
    """

    preprocess: Preprocess
    device: torch.device
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


class BuildFn(Protocol):
    """``build(backbone, num_classes, cfg, ctx) -> nn.Module``, registered with ``register_method``.

    ``backbone`` is a timm ViT whose classifier already has ``num_classes`` outputs (the pre-trained
    weights loaded, the head freshly initialised); ``num_classes`` is there for methods that build a
    classifier of their own. ``cfg`` is an instance of the method's config dataclass.
    """

    def __call__(self, backbone: nn.Module, num_classes: int, cfg: Any, ctx: BuildContext) -> nn.Module: ...


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


# ---- freezing helpers ----------------------------------------------------------------------

def train_head(vit: nn.Module) -> None:
    """The backbone's (freshly initialised) classifier trains, whatever was frozen before."""
    for p in vit.get_classifier().parameters():
        p.requires_grad_(True)


def freeze_except_head(vit: nn.Module) -> None:
    """Freeze the backbone; the freshly initialised classifier always trains (as in every VTAB-1k method)."""
    freeze(vit)
    train_head(vit)


# ---- hooks: optional methods of the built model (or, for ChecksSettings, of the config) -------

@runtime_checkable
class HasClassifier(Protocol):
    def get_classifier(self) -> nn.Module:
        """The classifier module: its parameters are counted as head parameters."""


@runtime_checkable
class EpochAware(Protocol):
    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Called before each training epoch (0-based) of ``epochs`` (e.g. to switch a loss on)."""


@runtime_checkable
class ExemptsWeightDecay(Protocol):
    def no_weight_decay(self) -> set[str]:
        """Parameter names (as in ``named_parameters``) that get no weight decay."""


@runtime_checkable
class Merges(Protocol):
    def merge(self) -> nn.Module:
        """A module computing the same logits with the adaptation folded into plain weights."""


@runtime_checkable
class CachesFrozenFeatures(Protocol):
    def frozen_features(self, images: torch.Tensor) -> torch.Tensor:
        """Features that do not change during training (computed once when the loop caches them)."""

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from ``frozen_features``' output: the only part that trains."""


@runtime_checkable
class Mergeable(Protocol):
    def merged(self) -> nn.Module:
        """A plain module computing the same function (weights folded in), for inference."""


@runtime_checkable
class ChecksSettings(Protocol):
    def check(self, facts: RunFacts) -> list[str]:
        """Problems that make these settings unworkable on this task and backbone (empty: none)."""
