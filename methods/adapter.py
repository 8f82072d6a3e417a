"""Bottleneck adapters (Houlsby et al., ICML 2019; Pfeiffer et al., EACL 2021) in a frozen ViT.

A sequential adapter ``h -> h + s * up(act(down(h)))`` follows a sub-layer's output, before the
block's residual addition. ``placement="houlsby"`` puts one after the attention output projection
and one after the MLP (the default); ``"pfeiffer"`` keeps only the one after the MLP. Bottleneck
8 by default: on ViT-B/16 that adds 2 * L * (2 * D * r + r + D) = 313,536 parameters (Houlsby)
or 156,768 (Pfeiffer), plus the head. The up-projection starts at zero, so training starts from
the pre-trained model (Houlsby's near-identity initialisation); the down-projection's init, the
ReLU and scale 1 follow AdaptFormer's adapter module (``init_option="lora"``). Not compared line
by line with the NOAH or V-PETL code (not read for this plugin). The non-linearity makes the
adapter unmergeable.
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
    placement: str = field(default="houlsby", metadata={
        "help": "houlsby: after attention and after the MLP; pfeiffer: after the MLP only",
        "search": ["houlsby", "pfeiffer"]})
    scale: float = field(default=1.0, metadata={"help": "factor s on the adapter's output",
                                                "search": [0.1, 1.0, 10.0]})
    dropout: float = field(default=0.0, metadata={"help": "dropout inside the adapter", "search": [0.0, 0.1]})
    activation: str = field(default="relu", metadata={"help": "relu or gelu", "search": ["relu", "gelu"]})

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


@register_method("adapter", config=AdapterConfig,
                 description="Adapter: sequential bottleneck adapters after attention and MLP of a frozen ViT")
def build_adapter(backbone: nn.Module, num_classes: int, cfg: AdapterConfig, ctx: BuildContext) -> nn.Module:
    freeze_except_head(backbone)
    dim = backbone.embed_dim
    for i, block in enumerate(backbone.blocks):
        for name in PLACEMENTS[cfg.placement]:
            adapter = Bottleneck(dim, cfg.bottleneck, cfg.scale, cfg.dropout, cfg.activation, like(block))
            backbone.set_submodule(f"blocks.{i}.{name}", SequentialAdapter(getattr(block, name), adapter))
    return AdaptedViT(backbone)
