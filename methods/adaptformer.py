"""AdaptFormer (Chen et al., NeurIPS 2022): a scaled bottleneck in parallel with each block's MLP.

Per block: ``x + mlp(norm2(x)) + s * up(dropout(relu(down(x))))``: like the official code
(ShoufaChen/AdaptFormer, ``ffn_option="parallel"``, ``ffn_adapter_layernorm_option="none"``,
``init_option="lora"``) the adapter reads the block's pre-norm input ``x``, the down-projection is
Kaiming-uniform (a=sqrt(5)) with zero bias, the up-projection and its bias start at zero, dropout
0.1 sits after the ReLU, and s=0.1. Bottleneck 8 (156,768 parameters on ViT-B/16 plus the
head), the size commonly used in VTAB-1k comparisons; the official code's image default is 64.

Faithfulness. Compared with the official ``Block`` on identical weights in float64: outputs
match to 6e-15. Known differences: the official block has no layer scale (ViT-B has none, so the
same function here) and applies drop-path to the MLP branch only, while here the backbone stays
in eval mode (no drop-path), as for every frozen-backbone method. The authors' repository has no
VTAB-1k code or per-task VTAB-1k settings, so
AdaptFormer has no ``--recipe official`` entry; its VTAB-1k rows come from other papers' runs.

The wrapper replaces the block's ``mlp`` and moves ``norm2`` inside it (``norm2`` becomes an
identity), so timm's own block forward computes the parallel sum.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from peftbench.adapt import Adaptation, AdaptedViT, Bottleneck, freeze_except_head, like
from peftbench.errors import UsageError
from peftbench.method_api import BuildContext
from peftbench.registry import register_method


@dataclass
class AdaptFormerConfig:
    bottleneck: int = field(default=8, metadata={"help": "hidden width of each adapter",
                                                 "search": [4, 8, 16, 32, 64]})
    scale: float = field(default=0.1, metadata={"help": "factor s on the adapter's output",
                                                "search": [0.01, 0.1, 1.0, 10.0]})
    dropout: float = field(default=0.1, metadata={"help": "dropout after the adapter's ReLU",
                                                  "search": [0.0, 0.1]})

    def __post_init__(self) -> None:
        if self.bottleneck < 1:
            raise UsageError(f"adaptformer.bottleneck={self.bottleneck}: must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"adaptformer.dropout={self.dropout}: must be in [0, 1)")


class ParallelAdapterMLP(Adaptation):
    """``mlp(norm(x)) + adapter(x)``: the block's MLP branch with an adapter beside it."""

    def __init__(self, norm: nn.Module, mlp: nn.Module, adapter: Bottleneck):
        super().__init__()
        self.norm, self.mlp, self.adapter = norm, mlp, adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(x)) + self.adapter(x)


@register_method("adaptformer", config=AdaptFormerConfig,
                 description="AdaptFormer: scaled bottleneck in parallel with each MLP of a frozen ViT")
def build_adaptformer(backbone: nn.Module, num_classes: int, cfg: AdaptFormerConfig, ctx: BuildContext
                      ) -> nn.Module:
    freeze_except_head(backbone)
    for i, block in enumerate(backbone.blocks):
        adapter = Bottleneck(backbone.embed_dim, cfg.bottleneck, cfg.scale, cfg.dropout, "relu", like(block))
        backbone.set_submodule(f"blocks.{i}.mlp", ParallelAdapterMLP(block.norm2, block.mlp, adapter))
        backbone.set_submodule(f"blocks.{i}.norm2", nn.Identity())
    return AdaptedViT(backbone)
