"""Building blocks for methods that adapt a frozen timm ViT in place (LoRA, adapters, SSF, ...).

Such a method swaps some of the backbone's submodules for wrappers that hold the wrapped timm
module plus a few trainable tensors; the ViT's own forward runs unchanged. A wrapper whose
adaptation is linear can fold it back into a plain timm module (``merged()``), which lets the
whole model be *merged* after training: the harness then measures inference cost on the model a
user would deploy (``merge()`` hook, see :mod:`peftbench.method_api`).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

# Mergeable and freeze_except_head live in the toolkit (method_api); importable from here as before
from .method_api import FrozenBackboneModel, Mergeable, freeze_except_head  # noqa: F401


def like(module: nn.Module) -> dict:
    """dtype and device of a module's first parameter, for tensors created beside it."""
    p = next(module.parameters())
    return {"dtype": p.dtype, "device": p.device}


class Adaptation(nn.Module):
    """A module a method adds inside the backbone (a wrapper, an adapter).

    It follows the model's train/eval mode even though the frozen backbone around it stays in
    eval mode while training (see :class:`FrozenBackboneModel`): its dropout acts in training.
    """


class AdaptedViT(FrozenBackboneModel):
    """A timm ViT whose submodules were wrapped in place; its own forward runs unchanged."""

    def train(self, mode: bool = True) -> AdaptedViT:
        super().train(mode)
        for module in self.vit.modules():
            if isinstance(module, Adaptation):
                module.training = mode  # the flag only: the wrapped timm module keeps its mode
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vit(images)


class MergeableViT(AdaptedViT):
    """An adapted ViT whose every adaptation is linear, so it folds into plain timm weights."""

    def merge(self) -> nn.Module:
        """A copy of the backbone with every wrapper folded into plain timm modules (for inference)."""
        return merge_wrappers(self.vit)


def merge_wrappers(vit: nn.Module) -> nn.Module:
    """A deep copy of ``vit`` with each :class:`Mergeable` submodule replaced by its ``merged()`` module."""
    out = copy.deepcopy(vit)
    done: list[str] = []
    for name, module in list(out.named_modules()):
        if isinstance(module, Mergeable) and not any(name.startswith(d + ".") for d in done):
            out.set_submodule(name, module.merged())
            done.append(name)
    for p in out.parameters():
        p.requires_grad_(False)
    return out.eval()


class Bottleneck(Adaptation):
    """down-projection -> activation -> dropout -> up-projection, times ``scale``.

    The up-projection starts at zero (the adapted model starts as the pre-trained one) and the
    down-projection is initialised as a LoRA ``A`` (Kaiming-uniform, a=sqrt(5)), both as in
    AdaptFormer's ``init_option="lora"``.
    """

    def __init__(self, dim: int, hidden: int, scale: float, dropout: float, activation: str = "relu",
                 factory: dict | None = None):
        super().__init__()
        factory = factory or {}
        self.down = nn.Linear(dim, hidden, **factory)
        self.up = nn.Linear(hidden, dim, **factory)
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
        self.activation = {"relu": F.relu, "gelu": F.gelu}[activation]
        self.scale, self.dropout = scale, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(self.activation(self.down(x)), self.dropout, self.training)
        return self.up(h) * self.scale
