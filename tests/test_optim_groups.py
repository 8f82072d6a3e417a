"""The weight-decay recipe: decay on matrices and prompts, none on biases, norms and exempted names."""

from __future__ import annotations

import torch
from torch import nn

from peftbench.config import TrainConfig
from peftbench.train import make_optimizer


class Prompted(nn.Module):
    """A ViT plus a prompt (decayed) and an exempted 2-d token (named by no_weight_decay)."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit
        self.prompt = nn.Parameter(torch.zeros(4, 32))
        self.exempt = nn.Parameter(torch.zeros(1, 32))
        self.vit.blocks[1].requires_grad_(False)  # frozen parameters are in no group

    def no_weight_decay(self) -> set[str]:
        return {"exempt", "vit.pos_embed"}


def test_decay_groups_follow_the_recipe(make_tiny_vit):
    model = Prompted(make_tiny_vit())
    opt = make_optimizer(model, TrainConfig(weight_decay=0.05), torch.device("cpu"))
    names = {id(p): n for n, p in model.named_parameters()}
    by_decay = {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in opt.param_groups}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(by_decay) == {0.0, 0.05} and by_decay[0.0] | by_decay[0.05] == trainable
    assert by_decay[0.0].isdisjoint(by_decay[0.05])
    # a (1, 1, 32) token is not 1-d: decayed unless the model names it (this one does not)
    assert {"prompt", "vit.cls_token", "vit.head.weight", "vit.blocks.0.attn.qkv.weight",
            "vit.patch_embed.proj.weight"} <= by_decay[0.05]
    assert {"exempt", "vit.pos_embed", "vit.head.bias", "vit.norm.weight", "vit.blocks.0.norm1.bias"} <= by_decay[0.0]
    assert not any(n.startswith("vit.blocks.1.") for g in by_decay.values() for n in g)
