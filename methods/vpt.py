"""Visual Prompt Tuning (Jia et al., ECCV 2022): learnable tokens prepended to a frozen ViT.

``vpt_shallow`` inserts P prompt tokens once, right after the prefix tokens (class and register
tokens), before block 0; they travel through every block. ``vpt_deep`` gives every block (or
the blocks in ``deep_layers``) fresh prompts that replace the previous block's prompt outputs.
Both are the same model: shallow is deep with ``deep_layers=(0,)``. The prompts never reach the
pooled feature: they are dropped before the backbone's own norm, pooling and classifier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from timm.layers import to_2tuple
from torch import nn

from peftbench.backbone import embed_tokens, logits_from_tokens
from peftbench.errors import UsageError
from peftbench.method_api import BuildContext, FrozenBackboneModel, RunFacts, freeze_except_head
from peftbench.registry import register_method


@dataclass
class VPTShallowConfig:
    """Knobs of VPT-shallow; VPT-deep adds ``deep_layers``. Init and recipe follow the official code."""

    prompt_length: int = field(default=50, metadata={"help": "prompt tokens P per prompted block (0 = none)",
                                                     "search": [1, 5, 10, 50, 100, 200]})  # the paper's set
    dropout: float = field(default=0.1, metadata={"help": "dropout on the prompt embeddings"})
    backbone_train_mode: bool = field(
        default=False, metadata={"help": "let the frozen backbone's dropout/drop-path act while training "
                                         "(the official code keeps it in eval mode)"})

    def __post_init__(self) -> None:
        if self.prompt_length < 0:
            raise UsageError(f"prompt_length={self.prompt_length}: must be at least 0")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"dropout={self.dropout}: must be in [0, 1)")


@dataclass
class VPTDeepConfig(VPTShallowConfig):
    """``deep_layers=(0,)`` is VPT-shallow; the default (all blocks) is the paper's VPT-deep."""

    deep_layers: tuple[int, ...] | None = field(
        default=None, metadata={"help": "blocks that get fresh prompts, e.g. 0,2,4 (default: all); other blocks "
                                        "pass the previous block's prompt outputs on, and before the first "
                                        "listed block there are no prompts"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.deep_layers is None:
            return
        if not self.deep_layers:
            raise UsageError("deep_layers=(): list at least one block (or use the linear method)")
        if min(self.deep_layers) < 0 or len(set(self.deep_layers)) != len(self.deep_layers):
            raise UsageError(f"deep_layers={self.deep_layers}: block indices must be distinct and count from 0")

    def check(self, facts: RunFacts) -> list[str]:
        if self.deep_layers and max(self.deep_layers) >= facts.depth:
            return [f"vpt_deep.deep_layers={self.deep_layers}: block indices must be below {facts.depth}, the depth "
                    f"of this backbone (valid: 0..{facts.depth - 1})"]
        return []


class PromptedViT(FrozenBackboneModel):
    """A frozen timm ViT run block by block, with fresh prompt tokens before each block in ``layers``."""

    def __init__(self, vit: nn.Module, prompt_length: int, layers: list[int], dropout: float,
                 backbone_train_mode: bool = False):
        super().__init__(vit, backbone_train_mode)
        self.slot = {block: i for i, block in enumerate(sorted(layers))}  # block index -> row of `prompts`
        # Xavier-uniform bound as in the official code: fan_in = 3·patch_h·patch_w, fan_out = D
        bound = math.sqrt(6.0 / (3 * math.prod(to_2tuple(vit.patch_embed.patch_size)) + vit.embed_dim))
        like = next(vit.parameters())
        prompts = torch.empty(len(layers), prompt_length, vit.embed_dim, device=like.device, dtype=like.dtype)
        self.prompts = nn.Parameter(prompts.uniform_(-bound, bound))
        # functional dropout, not nn.Dropout: torch's FlopCounterMode (inference_gflops) fails when a
        # view of a parameter made under no_grad enters a submodule
        self.dropout = dropout

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        vit, n = self.vit, self.vit.num_prefix_tokens
        x = embed_tokens(vit, images)
        carried = 0  # prompt tokens in the sequence: none until the first prompted block
        for i, block in enumerate(vit.blocks):
            if i in self.slot:
                prompts = self.prompts[self.slot[i]].expand(x.shape[0], -1, -1)
                prompts = F.dropout(prompts, self.dropout, self.training)
                x = torch.cat([x[:, :n], prompts.to(x.dtype), x[:, n + carried:]], dim=1)
                carried = self.prompts.shape[1]
            x = block(x)
        return logits_from_tokens(vit, torch.cat([x[:, :n], x[:, n + carried:]], dim=1))


def _build(backbone: nn.Module, cfg: VPTShallowConfig, layers: list[int]) -> PromptedViT:
    freeze_except_head(backbone)
    return PromptedViT(backbone, cfg.prompt_length, layers, cfg.dropout, cfg.backbone_train_mode)


@register_method("vpt_shallow", config=VPTShallowConfig, family="vpt",
                 description="VPT-shallow: learnable prompt tokens before the first block, frozen ViT")
def build_vpt_shallow(backbone: nn.Module, num_classes: int, cfg: VPTShallowConfig, ctx: BuildContext) -> nn.Module:
    return _build(backbone, cfg, [0])


@register_method("vpt_deep", config=VPTDeepConfig, family="vpt",
                 description="VPT-deep: fresh learnable prompt tokens before every block, frozen ViT")
def build_vpt_deep(backbone: nn.Module, num_classes: int, cfg: VPTDeepConfig, ctx: BuildContext) -> nn.Module:
    depth = len(backbone.blocks)
    layers = list(range(depth)) if cfg.deep_layers is None else list(cfg.deep_layers)
    if any(block >= depth for block in layers):
        raise UsageError(f"vpt_deep.deep_layers={cfg.deep_layers}: block indices must be below "
                         f"{depth}, the depth of this backbone (valid: 0..{depth - 1})")
    return _build(backbone, cfg, layers)
