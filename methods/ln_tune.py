"""LN-tune (as in the V-PETL benchmark): train the affine parameters of every LayerNorm and the head.

The LayerNorms are found structurally (``nn.LayerNorm`` modules: each block's two and the final
one); nothing is added, so the trained model is already a plain timm model: no merge needed.

Faithfulness. Compared with V-PETL Bench's LN-tune: the same trainable parameter set on a timm
ViT, nothing else to compare. No per-task VTAB-1k settings are published for it, so it has no
``--recipe official`` entry.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from peftbench.adapt import AdaptedViT, freeze_except_head
from peftbench.method_api import BuildContext
from peftbench.registry import register_method


@dataclass
class LNTuneConfig:
    """LN-tune has no knobs of its own; the recipe (lr, epochs, ...) is the shared one."""


@register_method("ln_tune", config=LNTuneConfig,
                 description="LN-tune: train the LayerNorms' scale and shift of the frozen ViT and the classifier")
def build_ln_tune(backbone: nn.Module, num_classes: int, cfg: LNTuneConfig, ctx: BuildContext) -> nn.Module:
    freeze_except_head(backbone)
    for module in backbone.modules():
        if isinstance(module, nn.LayerNorm):
            for p in module.parameters():
                p.requires_grad_(True)
    return AdaptedViT(backbone)
