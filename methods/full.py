"""Full fine-tuning: every backbone weight and the classifier train."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from peftbench.method_api import BuildContext
from peftbench.registry import register_method


@dataclass
class FullConfig:
    """Full fine-tuning has no knobs of its own; the recipe (lr, drop_path, ...) is the shared one."""


@register_method("full", config=FullConfig, description="Full fine-tuning: all backbone weights and the classifier")
def build_full(backbone: nn.Module, num_classes: int, cfg: FullConfig, ctx: BuildContext) -> nn.Module:
    for p in backbone.parameters():
        p.requires_grad_(True)
    return backbone
