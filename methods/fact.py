"""FacT (Jie & Deng, AAAI 2023): the weight updates of all blocks as one factorised tensor.

Every adapted projection of every block gets an update ``s * V K U`` where ``U`` (r x D) and
``V`` (D x r) are shared by the whole network and ``K`` is a small r x r core of its own. The
projections are the q, k, v slices of qkv, the attention projection, and fc1 / fc2 split into
``hidden / D`` chunks of width D (4 per MLP in ViT-B): 12 cores per ViT-B block. ``variant``:

- ``tt`` (FacT-TT): each core is a free r x r matrix (official ``*_FacTs`` Linear layers);
- ``tk`` (FacT-TK): core j is a mix of one shared r x r x r tensor ``C`` with a learned
  r-vector ``p_j`` (official ``FacTc @ FacTp``).

Two method names: ``fact`` (variant tt by default, r=8, s=1: the authors' TT config for CIFAR-100)
and ``fact_tk`` (variant tk, r=32, s=0.1: their TK config for CIFAR-100), so that each has its
own per-task table under ``--recipe official``. Dropout 0.1 on the r-dimensional code before
``V``; ``V`` starts at zero, ``U`` and the TT cores get PyTorch's Linear init (Kaiming-uniform,
a=sqrt(5)), ``C`` and the ``p``'s Xavier-uniform; the update is added to the projection's output
(fc1 before the activation). Widths and depth are read from the model; the whole update is
linear, so it folds into the projections' weights after training (``merge``).

MLP layout of TK (``official_layout``). The authors' TK code builds fc1's and fc2's cores by
reshaping ``(C @ P[:, j:j+4])`` of shape r x r x 4 into r x 4r, which interleaves rank and chunk
indices (chunk c, rank m of fc1 reads column ``c*r + m`` = ``(b, n)`` with ``b*4 + n``) and
uses fc2's in transposed orientation. By default (``official_layout=false``) chunk j uses its own
core ``C p_j`` (the paper's formulation): same parameter count, a different function on identical
factors (a test shows it). ``official_layout=true`` reproduces the authors'
indexing exactly and is what ``--recipe official`` uses for ``fact_tk``.

Faithfulness. Compared with the official code (JieShibo/PETL-ViT, ``FacT/fact_tt.py``,
``fact_tk.py``): FacT-TT matched the official module on identical weights in float64 to 6e-15;
TK's attention matches the authors' equations (a test), TK's MLP only with ``official_layout``
(a test checks it against the authors' indexing written out, to 1e-12 in float64). Known
differences from the authors' code: their backbone trains with drop-path 0.1 in train mode (here
the frozen backbone is in eval mode unless ``backbone_train_mode``, which the official recipe
sets together with ``drop_path=0.1``); their AdamW also decays the head's bias; their loader
drops the last incomplete batch (32 of 800 images per epoch), here it is padded and weighted;
their scheduler is stepped with the finished epoch's index, so each epoch's learning rate lags
one epoch behind the one used here; they report the best test accuracy over evaluations every 10
epochs, here the test split is evaluated once after the last epoch. ``--recipe official`` takes
rank and scale per task from their ``configs/tt`` and ``configs/tk`` files and their training
recipe (lr 1e-3, weight decay 1e-4, batch 64, 100 epochs, warm-up 10 epochs from 1e-6, cosine
to 1e-5 stepped per epoch, fp32).
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


@dataclass
class FacTConfig:
    """FacT-TT by default (``variant=tk`` for TK, or the method ``fact_tk``)."""

    variant: str = field(default="tt", metadata={"help": "tt (tensor-train) or tk (Tucker) factorisation",
                                                 "search": ["tt", "tk"]})
    rank: int = field(default=8, metadata={"help": "rank r of the shared factors", "search": [2, 4, 8, 16, 32]})
    scale: float = field(default=1.0, metadata={"help": "factor s on every update",
                                                "search": [0.01, 0.1, 1.0, 10.0, 100.0]})
    dropout: float = field(default=0.1, metadata={"help": "dropout on the rank-r code", "search": [0.0, 0.1]})
    official_layout: bool = field(default=False, metadata={
        "help": "tk only: fc1/fc2 cores indexed as the authors' code reshapes them (rank and chunk interleaved)",
        "recorded_if_set": True})
    backbone_train_mode: bool = field(default=False, metadata={
        "help": "let the frozen backbone's drop-path act while training (the authors' code does)",
        "recorded_if_set": True})

    def __post_init__(self) -> None:
        if self.variant not in ("tt", "tk"):
            raise UsageError(f"fact.variant={self.variant!r}: expected tt or tk")
        if self.official_layout and self.variant != "tk":
            raise UsageError("fact.official_layout=true: only FacT-TK's official code reshapes its MLP cores; "
                             "FacT-TT's official layout is the default one (set variant=tk or drop the knob)")
        if self.rank < 1:
            raise UsageError(f"fact.rank={self.rank}: must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"fact.dropout={self.dropout}: must be in [0, 1)")


class FacTFactors(Adaptation):
    """The shared factors U, V and the per-position cores (free, or from a Tucker core)."""

    def __init__(self, dim: int, rank: int, positions: list[int], variant: str, factory: dict):
        super().__init__()
        self.variant, self.rank = variant, rank
        self.u = nn.Parameter(torch.empty(rank, dim, **factory))
        nn.init.kaiming_uniform_(self.u, a=math.sqrt(5))
        self.v = nn.Parameter(torch.zeros(dim, rank, **factory))
        if variant == "tt":  # positions[j] = input chunks feeding core j (its Linear's fan-in / r)
            cores = torch.empty(len(positions), rank, rank, **factory)
            for core, fan in zip(cores, positions):
                bound = 1.0 / math.sqrt(rank * fan)
                core.uniform_(-bound, bound)
            self.cores = nn.Parameter(cores)
        else:
            self.core = nn.Parameter(nn.init.xavier_uniform_(torch.empty(rank, rank, rank, **factory)))
            self.coef = nn.Parameter(nn.init.xavier_uniform_(torch.empty(rank, len(positions), **factory)))

    def cores_at(self, start: int, count: int) -> torch.Tensor:
        """(count, r_out, r_in) core matrices of positions start..start+count-1."""
        if self.variant == "tt":
            return self.cores[start:start + count]
        # official: code @ (C @ p_j), i.e. out[b] = sum_a code[a] * sum_k C[a, b, k] p_j[k]
        return torch.einsum("abk,kn->nba", self.core, self.coef[:, start:start + count])


class FacTLinear(Adaptation):
    """A projection plus ``s * V K U`` per (output chunk, input chunk) pair of width D."""

    def __init__(self, linear: nn.Linear, factors: FacTFactors, start: int, n_out: int, n_in: int,
                 scale: float, dropout: float, official_layout: bool = False):
        super().__init__()
        self.base = linear
        self._factors = (factors,)  # shared, registered once on the model, not per layer
        self.start, self.n_out, self.n_in = start, n_out, n_in
        self.scale, self.dropout = scale, dropout
        # the authors' TK reshape only matters where a projection has several chunks (fc1, fc2)
        self.official_layout = official_layout and factors.variant == "tk" and n_out * n_in > 1

    def cores(self) -> torch.Tensor:
        """(n_out, n_in, r_out, r_in): the core mapping input chunk i's code to output chunk o's."""
        f = self._factors[0]
        n, r = self.n_out * self.n_in, f.rank
        if not self.official_layout:
            return f.cores_at(self.start, n).view(self.n_out, self.n_in, r, r)
        # the authors' r x r x n tensor T[a, b, j] = sum_k C[a, b, k] p_j[k], reshaped to r x (n r)
        flat = torch.einsum("abk,kn->abn", f.core, f.coef[:, self.start:self.start + n]).reshape(r, n, r)
        if self.n_in == 1:  # fc1: chunk c, output rank m reads flat[a, c, m] from input rank a
            return flat.permute(1, 2, 0).unsqueeze(1)
        return flat.permute(1, 0, 2).unsqueeze(0)  # fc2 (transposed there): chunk c, input rank a -> flat[m, c, a]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self._factors[0]
        code = x.unflatten(-1, (self.n_in, -1)) @ f.u.t()  # (..., n_in, r)
        h = torch.einsum("...ij,oikj->...ok", code, self.cores())
        delta = F.dropout(h, self.dropout, self.training) @ f.v.t()  # (..., n_out, D)
        return self.base(x) + self.scale * delta.flatten(-2)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        f = self._factors[0]
        delta = torch.einsum("dk,oikj,je->odie", f.v, self.cores(), f.u).flatten(2).flatten(0, 1)
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                        **like(self.base))
        out.weight.copy_(self.base.weight + self.scale * delta)
        if self.base.bias is not None:
            out.bias.copy_(self.base.bias)
        return out


def _chunks(width: int, dim: int, where: str) -> int:
    if width % dim:
        raise UsageError(f"fact: {where} has width {width}, not a multiple of the embedding width {dim}")
    return width // dim


class FacTViT(MergeableViT):
    def __init__(self, vit: nn.Module, factors: FacTFactors, backbone_train_mode: bool = False):
        super().__init__(vit, backbone_train_mode)
        self.fact = factors


@dataclass
class FacTTKConfig(FacTConfig):
    """FacT-TK: the authors' TK config for CIFAR-100 (r=32, s=0.1) by default."""

    variant: str = field(default="tk", metadata={"help": "tk (use the method fact for tt)"})
    rank: int = field(default=32, metadata={"help": "rank r of the shared factors and of the core tensor",
                                            "search": [8, 16, 32]})
    scale: float = field(default=0.1, metadata={"help": "factor s on every update",
                                                "search": [0.01, 0.1, 1.0, 10.0, 100.0]})

    def __post_init__(self) -> None:
        if self.variant != "tk":
            raise UsageError(f"fact_tk.variant={self.variant!r}: fact_tk is FacT-TK; use the method fact for tt")
        super().__post_init__()


@register_method("fact_tk", config=FacTTKConfig,
                 description="FacT-TK: FacT with a Tucker core (the method fact with variant=tk, r=32, s=0.1)")
@register_method("fact", config=FacTConfig,
                 description="FacT: all blocks' weight updates as one factorised tensor, TT or TK (mergeable)")
def build_fact(backbone: nn.Module, num_classes: int, cfg: FacTConfig, ctx: BuildContext) -> nn.Module:
    freeze_except_head(backbone)
    dim = backbone.embed_dim
    layout = []  # (module name, n_out, n_in) in position order
    for i, block in enumerate(backbone.blocks):
        hidden = _chunks(block.mlp.fc1.out_features, dim, f"blocks.{i}.mlp.fc1")
        layout += [(f"blocks.{i}.attn.qkv", _chunks(block.attn.qkv.out_features, dim, f"blocks.{i}.attn.qkv"), 1),
                   (f"blocks.{i}.attn.proj", 1, 1), (f"blocks.{i}.mlp.fc1", hidden, 1),
                   (f"blocks.{i}.mlp.fc2", 1, hidden)]
    fans = [n_in for _, n_out, n_in in layout for _ in range(n_out * n_in)]
    factors = FacTFactors(dim, cfg.rank, fans, cfg.variant, like(backbone))
    start = 0
    for name, n_out, n_in in layout:
        linear = backbone.get_submodule(name)
        backbone.set_submodule(name, FacTLinear(linear, factors, start, n_out, n_in, cfg.scale, cfg.dropout,
                                                cfg.official_layout))
        start += n_out * n_in
    return FacTViT(backbone, factors, cfg.backbone_train_mode)
