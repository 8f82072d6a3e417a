"""Linear probing: only the classifier trains, on the frozen backbone's features."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from peftbench.method_api import BuildContext, FrozenBackboneModel, freeze_except_head
from peftbench.registry import register_method


@dataclass
class LinearConfig:
    """Linear probing has no knobs of its own; the recipe (lr, epochs, ...) is the shared one."""


class LinearProbe(FrozenBackboneModel):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(self.frozen_features(images))

    def frozen_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pre-logit features; they never change while training, so the loop may cache them."""
        return self.vit.forward_head(self.vit.forward_features(images), pre_logits=True)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.vit.get_classifier()(features)


@register_method("linear", config=LinearConfig,
                 description="Linear probe: train the classifier on frozen pre-trained features")
def build_linear(backbone: nn.Module, num_classes: int, cfg: LinearConfig, ctx: BuildContext) -> nn.Module:
    freeze_except_head(backbone)
    return LinearProbe(backbone)
