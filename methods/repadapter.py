"""RepAdapter (Luo et al., 2023, arXiv 2302.08106): linear adapters that fold into the next projection.

As the official ``repblock`` code (luogen1996/RepAdapter): in every block, after ``norm1`` (i.e.
on the qkv projection's input) and after ``norm2`` (on fc1's input),
``x -> x + s * B(dropout(A(x)))`` with ``A`` a dense D->r map (Xavier-uniform weight, zero bias),
``B`` a *grouped* r->D map (2 groups, zero weight and bias), dropout 0.1, r=8. The official
``s`` is chosen per task from {0.1, 0.5, 1, 5, 10} (their ``scripts/search_repblock.sh``; their
``configs/repblock`` pick 0.5 for clevr_count and oxford_flowers102); default 1 here, the same
five values searched by ``tune``. There is no non-linearity, so after training the adapter folds
into the following projection exactly (official ``set_RepWeight``; here ``merge``).

What the main branch of the authors' repository trains: cross-entropy only (``train.py``), the
backbone in train mode with drop-path 0.1, AdamW lr 1e-3, weight decay 1e-4, batch 64, 100
epochs, warm-up 10 epochs from 1e-6 and cosine to 1e-5 stepped per epoch, reporting the best
test accuracy over evaluations every 10 epochs. A sparsity penalty
``lambda * (||W_B||_2 + ||b_B||_2)`` per adapter (``--sparse_lambda``) exists only on a side
branch of the repository (named ``1285c27``, "Update LossRep"), whose scripts run it with
``sparse_lambda=0``; here ``sparse_lambda`` adds the same penalty as the auxiliary loss of the
training forward, 0 by default (with lambda 1, the side branch's parser default, the penalty's
unit-norm gradient outweighs the task's: in the mini example sweep RepAdapter then reproduced
the linear probe's accuracy to the last digit on all five tasks).

Faithfulness. Compared with the official ``RepAdapter`` module and ``set_RepWeight`` on
identical weights in float64: outputs and the merged weights match to 6e-15. Known differences
from the authors' code: the official block skips layer scale (ViT-B has none: same function);
their backbone trains with drop-path 0.1 in train mode, here the frozen backbone runs in eval mode
unless ``backbone_train_mode`` (set, with ``drop_path=0.1``, by ``--recipe official``); their
AdamW decays every trainable tensor, here biases are not decayed; their loader drops the last
incomplete batch (here it is padded and weighted); their scheduler is stepped with the finished
epoch's index (each epoch's learning rate lags one epoch behind the one used here); they
evaluate on test every 10 epochs and keep the best, here the test split is evaluated once after
the last epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from peftbench.adapt import Adaptation, MergeableViT, freeze_except_head, like
from peftbench.errors import UsageError
from peftbench.method_api import BuildContext, MethodOutput, RunFacts
from peftbench.registry import register_method


@dataclass
class RepAdapterConfig:
    bottleneck: int = field(default=8, metadata={"help": "hidden width r of each adapter", "search": [4, 8, 16, 32]})
    groups: int = field(default=2, metadata={"help": "groups of the up-projection B (divides r and the width)",
                                          "search": [1, 2, 4]})
    scale: float = field(default=1.0, metadata={"help": "factor s on the adapter branch",
                                                "search": [0.1, 0.5, 1.0, 5.0, 10.0]})
    dropout: float = field(default=0.1, metadata={"help": "dropout between A and B", "search": [0.0, 0.1]})
    sparse_lambda: float = field(default=0.0, metadata={
        "help": "weight of the sparsity penalty on B (sum of L2 norms of its weight and bias) of the authors' "
                "side branch; 0 as in that branch's experiment scripts (the main branch has no penalty)",
        "search": [0.0, 0.1, 1.0]})
    backbone_train_mode: bool = field(default=False, metadata={
        "help": "let the frozen backbone's drop-path act while training (the authors' code does)",
        "recorded_if_set": True})

    def __post_init__(self) -> None:
        if self.bottleneck < 1 or self.groups < 1 or self.bottleneck % self.groups:
            raise UsageError(f"repadapter: bottleneck={self.bottleneck} must be a positive multiple of "
                             f"groups={self.groups}")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"repadapter.dropout={self.dropout}: must be in [0, 1)")
        if self.sparse_lambda < 0:
            raise UsageError(f"repadapter.sparse_lambda={self.sparse_lambda}: must be non-negative")

    def check(self, facts: RunFacts) -> list[str]:
        if facts.width and facts.width % self.groups:  # the adapted inputs (qkv's, fc1's) have the token width
            return [f"repadapter.groups={self.groups} must divide the width {facts.width}"]
        return []


class RepAdapterLinear(Adaptation):
    """``linear(x + s * B(dropout(A(x))))``, ``B`` grouped; folds into one Linear."""

    def __init__(self, linear: nn.Linear, cfg: RepAdapterConfig):
        super().__init__()
        dim, factory = linear.in_features, like(linear)
        if dim % cfg.groups:
            raise UsageError(f"repadapter.groups={cfg.groups} must divide the width {dim}")
        self.base, self.groups, self.scale, self.dropout = linear, cfg.groups, cfg.scale, cfg.dropout
        self.down = nn.Linear(dim, cfg.bottleneck, **factory)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        # grouped up-projection: group g maps hidden[g] (r/groups) to output channels [g] (D/groups)
        self.up_weight = nn.Parameter(torch.zeros(cfg.groups, dim // cfg.groups, cfg.bottleneck // cfg.groups,
                                                  **factory))
        self.up_bias = nn.Parameter(torch.zeros(dim, **factory))

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(self.down(x), self.dropout, self.training)
        h = h.unflatten(-1, (self.groups, -1))
        up = torch.einsum("...gi,goi->...go", h, self.up_weight).flatten(-2) + self.up_bias
        return x + self.scale * up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(self.adapt(x))

    def dense_up(self) -> torch.Tensor:
        return torch.block_diag(*self.up_weight)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The adapter is the affine map M x + c; the linear layer after it becomes W M, W c + b."""
        eye = torch.eye(self.base.in_features, **like(self.base))
        m = eye + self.scale * self.dense_up() @ self.down.weight
        c = self.scale * (self.dense_up() @ self.down.bias + self.up_bias)
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=True, **like(self.base))
        out.weight.copy_(self.base.weight @ m)
        bias = self.base.bias if self.base.bias is not None else torch.zeros_like(out.bias)
        out.bias.copy_(self.base.weight @ c + bias)
        return out


class RepAdapterViT(MergeableViT):
    def __init__(self, vit: nn.Module, sparse_lambda: float, backbone_train_mode: bool = False):
        super().__init__(vit, backbone_train_mode)
        self.sparse_lambda = sparse_lambda

    def forward(self, images: torch.Tensor) -> torch.Tensor | MethodOutput:
        logits = self.vit(images)
        if not self.training or self.sparse_lambda == 0:
            return logits
        return MethodOutput(logits, self.sparsity_loss())

    def sparsity_loss(self) -> torch.Tensor:
        """The side branch's penalty: lambda times the L2 norms of every up-projection's weight and bias."""
        norms = [torch.linalg.vector_norm(t) for m in self.vit.modules() if isinstance(m, RepAdapterLinear)
                 for t in (m.up_weight, m.up_bias)]
        return self.sparse_lambda * torch.stack(norms).sum()


@register_method("repadapter", config=RepAdapterConfig,
                 description="RepAdapter: linear adapters before attention and MLP that fold into them (mergeable)")
def build_repadapter(backbone: nn.Module, num_classes: int, cfg: RepAdapterConfig, ctx: BuildContext
                     ) -> nn.Module:
    freeze_except_head(backbone)
    for i, block in enumerate(backbone.blocks):
        backbone.set_submodule(f"blocks.{i}.attn.qkv", RepAdapterLinear(block.attn.qkv, cfg))
        backbone.set_submodule(f"blocks.{i}.mlp.fc1", RepAdapterLinear(block.mlp.fc1, cfg))
    return RepAdapterViT(backbone, cfg.sparse_lambda, cfg.backbone_train_mode)
