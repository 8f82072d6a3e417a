"""BitFit (Ben Zaken et al., ACL 2022; VTAB-1k numbers in NOAH / V-PETL): train every bias and the head.

Biases are found structurally: every ``bias`` parameter of a backbone module (patch embedding,
q/k/v, attention projection, MLP layers and, by default, the LayerNorms' beta). Nothing is
added, so the trained model is already a plain timm model: no merge needed.

Faithfulness. Compared with V-PETL Bench's selection (parameters whose name contains "bias"):
the same parameter set on a timm ViT (checked by name), nothing else to compare. The BitFit
authors' code is for BERT and has no VTAB-1k settings, so BitFit has no ``--recipe official``
entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from peftbench.adapt import AdaptedViT, freeze_except_head
from peftbench.method_api import BuildContext
from peftbench.registry import register_method


@dataclass
class BitFitConfig:
    norm_bias: bool = field(default=True, metadata={
        "help": "also train the LayerNorms' bias (beta), as the reference codes do", "search": [True, False]})


def trainable_biases(vit: nn.Module, norm_bias: bool) -> list[nn.Parameter]:
    out = []
    for module in vit.modules():
        bias = getattr(module, "bias", None)
        if isinstance(bias, nn.Parameter) and (norm_bias or not isinstance(module, nn.LayerNorm)):
            out.append(bias)
    return out


@register_method("bitfit", config=BitFitConfig,
                 description="BitFit: train every bias of the frozen ViT and the classifier")
def build_bitfit(backbone: nn.Module, num_classes: int, cfg: BitFitConfig, ctx: BuildContext) -> nn.Module:
    freeze_except_head(backbone)
    for bias in trainable_biases(backbone, cfg.norm_bias):
        bias.requires_grad_(True)
    return AdaptedViT(backbone)
