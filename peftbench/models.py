"""A small pre-trained ViT that ships with peftbench, for the built-in ``mini`` suite.

``vit_mini_patch8_32`` is a timm ``VisionTransformer`` (32×32 input, 8×8 patches, width 96,
depth 6, 3 heads, class token) registered with timm on import of this module. Its weights,
``resources/mini_vit.safetensors``, come from ``benchmarks/pretrain_mini_vit.py`` (a
procedurally generated upstream task distinct from the suite's tasks) and hold the backbone
only, without a classifier. The pretrained config points timm at that file, so both
``timm.create_model("vit_mini_patch8_32", pretrained=True)`` and
``load_backbone("vit_mini_patch8_32", weights=str(mini_weights_path()))`` load it offline.
"""

from __future__ import annotations

from pathlib import Path

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

MINI_VIT = "vit_mini_patch8_32"
MINI_VIT_ARGS = dict(img_size=32, patch_size=8, embed_dim=96, depth=6, num_heads=3, mlp_ratio=4.0,
                     class_token=True, global_pool="token")
MINI_MEAN = (0.5, 0.5, 0.5)
MINI_STD = (0.25, 0.25, 0.25)


def mini_weights_path() -> Path:
    """The shipped backbone weights (package data, next to this module)."""
    return Path(__file__).resolve().parent / "resources" / "mini_vit.safetensors"


default_cfgs = generate_default_cfgs({
    MINI_VIT: dict(
        file=str(mini_weights_path()), num_classes=0, input_size=(3, 32, 32), pool_size=None,
        fixed_input_size=True, crop_pct=1.0, interpolation="bicubic", mean=MINI_MEAN, std=MINI_STD,
        first_conv="patch_embed.proj", classifier="head", license="apache-2.0",
    ),
})


@register_model
def vit_mini_patch8_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Mini/8 at 32×32 (0.69 M parameters), pre-trained on generated shapes."""
    kwargs.setdefault("num_classes", 0)
    return build_model_with_cfg(VisionTransformer, MINI_VIT, pretrained,
                                pretrained_filter_fn=checkpoint_filter_fn, **{**MINI_VIT_ARGS, **kwargs})
