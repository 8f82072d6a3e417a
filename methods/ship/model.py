"""SHIP's forward pass: prompts inserted block by block, the matching loss, and ``build_ship``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from peftbench.backbone import embed_tokens, logits_from_tokens
from peftbench.errors import UnsupportedBackbone, UsageError
from peftbench.method_api import BuildContext, FrozenBackboneModel, MethodOutput, freeze_except_head
from peftbench.registry import register_method

from .attention import attention_impl, decoupled_mask, ship_block
from .config import ShipConfig
from .preparation import prepare

ATTRIBUTE_LAYERS = 2  # attribute prompts join the last two selected blocks (official)


# ---- the forward pass ----------------------------------------------------------------------

def top_tokens(tokens: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k tokens (B, k, D) with the highest scores (B, N)."""
    idx = scores.topk(k, dim=-1).indices
    return tokens.gather(1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def prompt_matching_loss(x: torch.Tensor, n: int, cls_logits: torch.Tensor, k: int) -> torch.Tensor:
    """Per image (B,): mean over prompt tokens of 1 - max cosine similarity to the k most attended image tokens.

    Its batch mean is the official loss; per image, the training loop can leave padded samples out.
    """
    targets = F.normalize(top_tokens(x[:, :n], cls_logits, k), dim=-1)
    sim = F.normalize(x[:, n:], dim=-1) @ targets.transpose(1, 2)
    return (1 - sim.amax(dim=-1)).mean(dim=-1)


def check_backbone(vit: nn.Module) -> None:
    """SHIP runs timm's pre-norm ``Block`` piece by piece and reads the class token's attention."""
    if getattr(vit, "cls_token", None) is None:
        raise UnsupportedBackbone("ship: the backbone has no class token, whose attention SHIP reads")
    block_parts = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")
    attn_parts = ("qkv", "q_norm", "k_norm", "attn_drop", "norm", "proj", "proj_drop", "num_heads", "head_dim")
    for i, block in enumerate(vit.blocks):
        lacking = [p for p in block_parts if not hasattr(block, p)]
        lacking += [f"attn.{p}" for p in attn_parts if not hasattr(getattr(block, "attn", None), p)]
        if lacking:
            raise UnsupportedBackbone(f"ship: block {i} ({type(block).__name__}) is not a timm pre-norm ViT block "
                             f"(lacks {', '.join(lacking)})")
        if getattr(block.attn, "gate", None) is not None:
            raise UnsupportedBackbone(f"ship: block {i} uses gated attention, which SHIP does not support")
        if block.attn.num_heads * block.attn.head_dim != vit.embed_dim:
            raise UnsupportedBackbone(f"ship: block {i}: attention width differs from the embedding width")


class ShipViT(FrozenBackboneModel):
    """A frozen timm ViT run block by block with SHIP's prompts and attention."""

    def __init__(self, vit: nn.Module, cfg: ShipConfig, layers: list[int], bank: torch.Tensor | None,
                 attention: str = "split"):
        super().__init__(vit, cfg.backbone_train_mode)
        self.attention = attention  # "split" or "masked" (attention.py)
        width, like = vit.embed_dim, next(vit.parameters())
        self.slot = {block: i for i, block in enumerate(layers)}  # block index -> row of `semantic`
        self.scale, self.decoupled = cfg.scale, cfg.decoupled_attention
        self.attr_tokens, self.pattern_weight = cfg.attr_tokens, cfg.pattern_weight
        self.matching_weight, self.matching_topk = cfg.matching_weight, cfg.matching_topk
        self.matching_warmup = cfg.matching_warmup if cfg.matching_loss else None
        # the loss's weight, 0 during the warm-up: a tensor, not a Python flag, so that switching it on after
        # the warm-up changes no compiled graph (the loss is computed, at weight 0, from the first epoch)
        on = cfg.matching_loss and cfg.matching_warmup == 0
        self.register_buffer("matching_scale", torch.tensor(cfg.matching_weight if on else 0.0, device=like.device),
                             persistent=False)
        self.num_registers = vit.num_prefix_tokens - 1  # prefix = [class token, registers]

        def uniform(shape: tuple[int, ...], bound: float) -> nn.Parameter:
            return nn.Parameter(torch.empty(shape, device=like.device, dtype=like.dtype).uniform_(-bound, bound))

        # Init bounds as the official tensors' default inits give them: Xavier on (1, K, D) per block,
        # Kaiming-uniform on (shared, D) and on (2, attr, D).
        k = cfg.prompt_length
        self.semantic = uniform((len(layers), k, width), math.sqrt(6.0 / ((k + 1) * width)))
        self.shared = uniform((cfg.shared_tokens, width), math.sqrt(6.0 / width)) if cfg.shared_prompt else None
        # block 0 has no previous attention to read, so it never takes an attribute prompt
        attr_blocks = [i for i in layers if i > 0][-ATTRIBUTE_LAYERS:] if cfg.attribute_prompts else []
        self.attr_slot = {block: i for i, block in enumerate(attr_blocks)}
        self.attribute = (uniform((len(attr_blocks), cfg.attr_tokens, width),
                                  math.sqrt(6.0 / (cfg.attr_tokens * width))) if attr_blocks else None)
        self.register_buffer("prototypes", bank if attr_blocks else None)

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        on = self.matching_warmup is not None and epoch >= self.matching_warmup
        self.matching_scale.fill_(self.matching_weight if on else 0.0)

    def _candidate_logits(self, cls_logits: torch.Tensor) -> torch.Tensor:
        if self.num_registers:
            cls_logits = cls_logits.clone()
            cls_logits[:, 1:1 + self.num_registers] = float("-inf")
        return cls_logits

    def _attribute_prompt(self, tokens: torch.Tensor, cls_logits: torch.Tensor, slot: int) -> torch.Tensor:
        picked = F.normalize(top_tokens(tokens, self._candidate_logits(cls_logits), self.attr_tokens), dim=-1)
        weights = (picked @ F.normalize(self.prototypes, dim=-1).T).softmax(dim=-1)
        pattern = weights @ self.prototypes
        return self.pattern_weight * pattern + (1 - self.pattern_weight) * self.attribute[slot]

    def forward(self, images: torch.Tensor) -> torch.Tensor | MethodOutput:
        """Logits; in training, with the weighted matching loss (None before its warm-up ends or when off)."""
        vit = self.vit
        x = embed_tokens(vit, images)
        b, n = x.shape[:2]
        matching = self.training and self.matching_warmup is not None
        needed = max(self.attr_tokens if self.attr_slot else 0, self.matching_topk if matching else 0)
        if n - self.num_registers < needed:
            raise UsageError(f"ship: {n - self.num_registers} image tokens at this input size, fewer than the "
                             f"{needed} most attended ones SHIP selects (lower ship.attr_tokens / ship.matching_topk)")
        shared = None if self.shared is None else self.shared.expand(b, -1, -1)
        logits = aux = None
        last = len(vit.blocks) - 1
        masks: dict[tuple[int, bool], torch.Tensor] = {}  # one block mask per sequence length, not one per block
        for i, block in enumerate(vit.blocks):
            if i in self.slot:
                prompts = [self.semantic[self.slot[i]].expand(b, -1, -1)]
                if i in self.attr_slot:
                    prompts.append(self._attribute_prompt(x[:, :n], logits, self.attr_slot[i]).to(x.dtype))
                x = torch.cat([x[:, :n], *prompts, *([] if shared is None else [shared])], dim=1)
            elif shared is not None:  # the group's prompts go on; the shared prompt is fresh
                x = torch.cat([x[:, :-shared.shape[1]], shared], dim=1)
            want_logits = i + 1 in self.attr_slot or (i == last and matching)
            mask = None
            if self.attention == "masked" and self.decoupled:
                key = (x.shape[1], i == last)
                if key not in masks:
                    masks[key] = decoupled_mask(n, x.shape[1], i == last, x.device)
                mask = masks[key]
            x, logits = ship_block(block, x, n, self.scale, self.decoupled, i == last, want_logits, self.attention,
                                   mask)
        if matching:
            cls_logits = self._candidate_logits(logits)
            aux = self.matching_scale * prompt_matching_loss(x, n, cls_logits, self.matching_topk)
        logits = logits_from_tokens(vit, x[:, :n])
        return MethodOutput(logits, aux) if self.training else logits


@register_method("ship", config=ShipConfig,
                 description="SHIP: semantic hierarchical prompts, decoupled attention, frozen ViT")
def build_ship(backbone: nn.Module, num_classes: int, cfg: ShipConfig, ctx: BuildContext) -> nn.Module:
    check_backbone(backbone)
    layers, bank = prepare(backbone, cfg, ctx)
    freeze_except_head(backbone)
    ctx.info["attention"] = attention = attention_impl(cfg.attention, ctx.device)
    return ShipViT(backbone, cfg, layers, bank, attention)
