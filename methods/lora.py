"""LoRA (Hu et al., ICLR 2022) on the query and value projections of every block.

timm fuses q, k and v into one ``qkv`` Linear (output rows ``[q; k; v]``); the wrapper adds a
rank-r update ``(alpha/r) * B A`` to the q and v row-slices only (``targets`` picks the slices),
so k stays exactly pre-trained. ``A`` is Kaiming-uniform (a=sqrt(5)) and ``B`` zero, as in the
LoRA reference code (microsoft/LoRA ``loralib``), so training starts from the pre-trained model.
Defaults r=8, alpha=8 (scale 1), no dropout. After training the update folds into the qkv weight
(``merge``), so inference costs exactly the backbone's. On ViT-B/16 the update adds 2 * 2 * r * D
per block, 294,912 parameters (0.29 M) plus the head.

Faithfulness. Compared with loralib's ``MergedLinear`` (``enable_lora=[True, False, True]``) on
identical weights in float64: outputs match to 6e-15 and the merge is exact. Known differences
from the code behind the published VTAB-1k "LoRA" rows, as facts about those rows: NOAH's LoRA
(ZhangYuanhan-AI/NOAH) is ONE rank-8 update over the whole fused qkv, with a single ``A`` shared by
q, k and v (``peft_lora``'s structure here, not this one's); V-PETL Bench's q/v LoRA initialises
``B`` of q Kaiming-uniform (its model does not start at the pre-trained function) and both v
factors at zero (their gradients are zero, so v never trains). Neither the LoRA authors nor
NOAH publish per-task VTAB-1k settings (NOAH trains every task with lr 1e-3, wd 1e-4, batch 64,
100 epochs), so LoRA has no ``--recipe official`` entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from peftbench.adapt import Adaptation, MergeableViT, freeze_except_head, like
from peftbench.errors import UsageError
from peftbench.method_api import BuildContext
from peftbench.registry import register_method

SLICES = ("q", "k", "v")


@dataclass
class LoRAConfig:
    rank: int = field(default=8, metadata={"help": "rank r of each update", "search": [1, 2, 4, 8, 16, 32]})
    alpha: float = field(default=8.0, metadata={
        "help": "the update is scaled by alpha / rank", "search": [1.0, 4.0, 8.0, 16.0, 32.0]})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA branch's input",
                                                  "search": [0.0, 0.1]})
    targets: tuple[str, ...] = field(default=("q", "v"), metadata={
        "help": "slices of timm's fused qkv projection that get an update (any of q, k, v)",
        "search": [("q", "v"), ("q", "k", "v")]})

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise UsageError(f"lora.rank={self.rank}: must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"lora.dropout={self.dropout}: must be in [0, 1)")
        bad = [t for t in self.targets if t not in SLICES]
        if bad or not self.targets or len(set(self.targets)) != len(self.targets):
            raise UsageError(f"lora.targets={','.join(self.targets)}: give distinct slices among q, k, v")


class LoRAQKV(Adaptation):
    """timm's fused qkv Linear plus low-rank updates on some of its q/k/v row-slices."""

    def __init__(self, qkv: nn.Linear, targets: tuple[str, ...], rank: int, alpha: float, dropout: float):
        super().__init__()
        self.base = qkv
        self.dim = qkv.in_features
        if qkv.out_features != 3 * self.dim:
            raise UsageError(f"lora: qkv projection maps {qkv.in_features} -> {qkv.out_features}, "
                             "expected 3x its input width (a fused q, k, v projection)")
        self.slots = [SLICES.index(t) for t in SLICES if t in targets]  # in q, k, v order
        factory = like(qkv)
        self.lora_a = nn.Parameter(torch.empty(len(self.slots), rank, self.dim, **factory))
        self.lora_b = nn.Parameter(torch.zeros(len(self.slots), self.dim, rank, **factory))
        for a in self.lora_a:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.scaling, self.dropout = alpha / rank, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = list(self.base(x).split(self.dim, dim=-1))
        h = F.dropout(x, self.dropout, self.training)
        for i, slot in enumerate(self.slots):
            parts[slot] = parts[slot] + (h @ self.lora_a[i].t()) @ self.lora_b[i].t() * self.scaling
        return torch.cat(parts, dim=-1)

    def delta_weight(self) -> torch.Tensor:
        delta = torch.zeros_like(self.base.weight)
        for i, slot in enumerate(self.slots):
            delta[slot * self.dim:(slot + 1) * self.dim] = self.lora_b[i] @ self.lora_a[i] * self.scaling
        return delta

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        out = nn.Linear(self.dim, 3 * self.dim, bias=self.base.bias is not None, **like(self.base))
        out.weight.copy_(self.base.weight + self.delta_weight())
        if self.base.bias is not None:
            out.bias.copy_(self.base.bias)
        return out


@register_method("lora", config=LoRAConfig,
                 description="LoRA: rank-8 updates on the query and value projections of a frozen ViT (mergeable)")
def build_lora(backbone: nn.Module, num_classes: int, cfg: LoRAConfig, ctx: BuildContext) -> nn.Module:
    freeze_except_head(backbone)
    for i, block in enumerate(backbone.blocks):
        backbone.set_submodule(f"blocks.{i}.attn.qkv",
                LoRAQKV(block.attn.qkv, cfg.targets, cfg.rank, cfg.alpha, cfg.dropout))
    return MergeableViT(backbone)
