"""Bottleneck adapters (Houlsby et al., ICML 2019; Pfeiffer et al., EACL 2021) in a frozen ViT.

A sequential adapter ``h -> h + s * up(act(down(h)))`` follows a sub-layer's output, before the
block's residual addition. The default is the configuration of the published VTAB-1k rows labelled
"Adapter 0.16M" (NOAH, V-PETL Bench): one bottleneck-8 adapter after each block's MLP
(``placement="pfeiffer"``) with a GELU: L * (2 * D * r + r + D) = 156,768 parameters on ViT-B/16,
plus the head. ``placement="houlsby"`` adds a second adapter after the attention output
projection (Houlsby's placement, 313,536; the default of version 1 of this method). The
up-projection starts at zero, so training starts from the pre-trained model (Houlsby's
near-identity initialisation); the down-projection is Kaiming-uniform (a=sqrt(5)) with a zero bias
(AdaptFormer's ``init_option="lora"``); scale 1, no dropout. The non-linearity makes the adapter
unmergeable.

Faithfulness. Compared with: the trainable count of the published rows (156,768 on ViT-B/16
without the head, checked by a test on the meta device) and, by reading, NOAH's ``AdapterSuper``
(ZhangYuanhan-AI/NOAH), whose placement (after the MLP, on its output, residual inside the
adapter) this default has; V-PETL Bench's adapter block has the same structure. Known differences
from NOAH's code, which produced the "Adapter" VTAB-1k rows: NOAH uses QuickGELU
(``x * sigmoid(1.702 x)``) instead of the exact GELU, initialises *both* projections
Xavier-uniform with N(0, 1e-6) biases (so its adapted model does not start at the pre-trained
function; here the up-projection starts at zero), and applies the block's drop-path to the MLP
output before the adapter (here the frozen backbone runs in eval mode). NOAH trains every task
with one setting (lr 1e-3, weight decay 1e-4, batch 64, 100 epochs: its ``configs/Adapter/VTAB``
script), i.e. there are no per-task published settings and no ``--recipe official`` entry for
this method; Houlsby's and Pfeiffer's own code has no VTAB-1k experiments.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from peftbench.adapt import Adaptation, AdaptedViT, Bottleneck, freeze_except_head, like
from peftbench.errors import UsageError
from peftbench.method_api import BuildContext
from peftbench.registry import register_method

PLACEMENTS = {"houlsby": ("attn", "mlp"), "pfeiffer": ("mlp",)}


@dataclass
class AdapterConfig:
    bottleneck: int = field(default=8, metadata={"help": "hidden width of each adapter",
                                                 "search": [4, 8, 16, 32, 64]})
    placement: str = field(default="pfeiffer", metadata={
        "help": "houlsby: after attention and after the MLP; pfeiffer: after the MLP only",
        "search": ["houlsby", "pfeiffer"]})
    scale: float = field(default=1.0, metadata={"help": "factor s on the adapter's output",
                                                "search": [0.1, 1.0, 10.0]})
    dropout: float = field(default=0.0, metadata={"help": "dropout inside the adapter", "search": [0.0, 0.1]})
    activation: str = field(default="gelu", metadata={"help": "gelu or relu", "search": ["relu", "gelu"]})

    def __post_init__(self) -> None:
        if self.bottleneck < 1:
            raise UsageError(f"adapter.bottleneck={self.bottleneck}: must be at least 1")
        if self.placement not in PLACEMENTS:
            raise UsageError(f"adapter.placement={self.placement!r}: expected one of {', '.join(PLACEMENTS)}")
        if self.activation not in ("relu", "gelu"):
            raise UsageError(f"adapter.activation={self.activation!r}: expected relu or gelu")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"adapter.dropout={self.dropout}: must be in [0, 1)")


class SequentialAdapter(Adaptation):
    """A sub-layer (attention or MLP) followed by a residual bottleneck adapter on its output."""

    def __init__(self, sublayer: nn.Module, adapter: Bottleneck):
        super().__init__()
        self.sublayer, self.adapter = sublayer, adapter

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        h = self.sublayer(x, *args, **kwargs)  # attention takes attn_mask / is_causal keywords
        return h + self.adapter(h)


@register_method("adapter", config=AdapterConfig, version=2,  # 2: default = the published rows' placement
                 description="Adapter: a sequential bottleneck adapter after each MLP of a frozen ViT "
                             "(placement=houlsby: also after attention)")
def build_adapter(backbone: nn.Module, num_classes: int, cfg: AdapterConfig, ctx: BuildContext) -> nn.Module:
    freeze_except_head(backbone)
    dim = backbone.embed_dim
    for i, block in enumerate(backbone.blocks):
        for name in PLACEMENTS[cfg.placement]:
            adapter = Bottleneck(dim, cfg.bottleneck, cfg.scale, cfg.dropout, cfg.activation, like(block))
            backbone.set_submodule(f"blocks.{i}.{name}", SequentialAdapter(getattr(block, name), adapter))
    return AdaptedViT(backbone)
