"""SSF (Lian et al., NeurIPS 2022): a learnable per-channel scale and shift after linear layers and norms.

As in the official code (dongzelian/SSF, ``tuning_mode="ssf"``): after the patch embedding's
convolution, after every block's qkv, attention projection, fc1 and fc2, after both block norms
and after the final norm; scales start at N(1, 0.02) and shifts at N(0, 0.02). The layers are
found structurally here: every ``nn.Linear``, ``nn.LayerNorm`` and ``nn.Conv2d`` of the backbone
except the classifier, which is the same set on a timm ViT. Each scale-and-shift follows a linear
map, so it folds into that layer's weight and bias after training (``merge``), which is SSF's
point: zero extra inference cost.

Faithfulness. Compared with the official SSF ViT on identical weights in float64: outputs match
to 6e-15, and the merge is exact. The authors publish per-task VTAB-1k settings
(``train_scripts/vit/vtab/*/train_ssf.sh``: lr, weight decay and drop-path per task; AdamW, 2 GPUs
x batch 32, 100 epochs, warm-up 10 epochs from 1e-7, cosine to 1e-8, no augmentation), which
``--recipe official`` reproduces. Known differences from their code: their frozen backbone trains
in train mode with the task's drop-path (here eval mode unless ``backbone_train_mode``, which the
official recipe sets); their timm script adds 10 cool-down epochs at lr 1e-8 after the 100 (not
run here: at 1e-8 they change nothing measurable), trains with fp16 autocast (here bf16 on CUDA),
and keeps the checkpoint with the best test accuracy over per-epoch evaluations (here the test
split is evaluated once after the last epoch).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from peftbench.adapt import Adaptation, MergeableViT, freeze_except_head, like
from peftbench.errors import UsageError
from peftbench.method_api import BuildContext
from peftbench.registry import register_method

WRAPPED = (nn.Linear, nn.LayerNorm, nn.Conv2d)


@dataclass
class SSFConfig:
    init_std: float = field(default=0.02, metadata={
        "help": "std of the N(1, std) scales and N(0, std) shifts at the start", "search": [0.0, 0.02]})
    backbone_train_mode: bool = field(default=False, metadata={
        "help": "let the frozen backbone's drop-path act while training (the authors' code does)",
        "recorded_if_set": True})

    def __post_init__(self) -> None:
        if self.init_std < 0:
            raise UsageError(f"ssf.init_std={self.init_std}: must be non-negative")


def out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    return module.normalized_shape[-1]


class ScaleShift(Adaptation):
    """``module(x) * scale + shift`` per output channel (dimension 1 for a convolution, else the last)."""

    def __init__(self, module: nn.Module, init_std: float):
        super().__init__()
        self.base = module
        n, factory = out_channels(module), like(module)
        self.scale = nn.Parameter(torch.empty(n, **factory).normal_(1.0, init_std))
        self.shift = nn.Parameter(torch.empty(n, **factory).normal_(0.0, init_std))
        self.view = (-1, 1, 1) if isinstance(module, nn.Conv2d) else (-1,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) * self.scale.view(self.view) + self.shift.view(self.view)

    @torch.no_grad()
    def merged(self) -> nn.Module:
        out = copy.deepcopy(self.base)
        if out.weight is None:  # a LayerNorm without affine parameters: SSF gives it some
            out.weight = nn.Parameter(torch.ones_like(self.scale))
        out.weight.mul_(self.scale.view(-1, *[1] * (out.weight.dim() - 1)))
        bias = out.bias if out.bias is not None else torch.zeros_like(self.shift)
        out.bias = nn.Parameter(bias * self.scale + self.shift)
        return out


@register_method("ssf", config=SSFConfig,
                 description="SSF: per-channel scale and shift after every linear layer and norm (mergeable)")
def build_ssf(backbone: nn.Module, num_classes: int, cfg: SSFConfig, ctx: BuildContext) -> nn.Module:
    freeze_except_head(backbone)
    head = backbone.get_classifier()
    targets = [name for name, m in backbone.named_modules() if isinstance(m, WRAPPED) and m is not head]
    for name in targets:
        backbone.set_submodule(name, ScaleShift(backbone.get_submodule(name), cfg.init_std))
    return MergeableViT(backbone, cfg.backbone_train_mode)
