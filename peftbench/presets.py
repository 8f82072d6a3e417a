"""Backbone presets the PEFT literature uses, and how a ``--backbone`` name resolves in timm.

Every preset is a timm name with its pretrained tag; its input size and normalisation come from
timm's ``pretrained_cfg`` (never from a table here), and its prefix tokens and pre-norm from the
architecture timm builds. ``resolve_name`` says what timm will actually build for a name and warns
when a legacy or tag-less name lands on other weights than the ones the VTAB-1k literature used
(timm's ``vit_base_patch16_224_in21k`` is the AugReg checkpoint, not the original ``ViT-B_16.npz``).

MoCo v3 is not in timm: ``vit_base_patch16_mocov3`` is timm's ViT-B/16 registered under its own
name (ImageNet normalisation, as the authors trained it) whose weights come from the authors'
checkpoint file (``--weights PATH``); ``mocov3_state_dict`` maps that file's keys onto timm's.
"""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, get_deprecated_models, register_model
from timm.models.vision_transformer import VisionTransformer

MOCOV3 = "vit_base_patch16_mocov3.in1k"
MOCOV3_PREFIX = "module.base_encoder."  # the authors' DDP-wrapped MoCo model: base_encoder is the ViT
MOCOV3_HEAD = "head."  # their projection MLP, not part of the backbone


@dataclass(frozen=True)
class Preset:
    name: str  # timm name with its pretrained tag
    label: str
    img_size: int | None = None  # run at this size (None: the pretrained_cfg's); timm resizes position embeddings
    weights_note: str = "pretrained or --weights PATH"


PRESETS: tuple[Preset, ...] = (
    Preset("vit_base_patch16_224.orig_in21k", "ViT-B/16 ImageNet-21k, original (ViT-B_16.npz; VPT, NOAH, FacT, "
           "SHIP) — the default"),
    Preset("vit_base_patch16_224.augreg_in21k", "ViT-B/16 ImageNet-21k, AugReg (what the legacy name "
           "vit_base_patch16_224_in21k loads)"),
    Preset("vit_large_patch16_224.orig_in21k", "ViT-L/16 ImageNet-21k, original"),
    Preset("vit_base_patch16_224.mae", "MAE ViT-B/16 (self-supervised, ImageNet-1k)"),
    Preset("vit_base_patch14_dinov2.lvd142m", "DINOv2 ViT-B/14, run at 224 px (position embeddings resized)",
           img_size=224),
    Preset("vit_base_patch14_reg4_dinov2.lvd142m", "DINOv2 ViT-B/14 with 4 register tokens, run at 224 px",
           img_size=224),
    Preset("vit_base_patch16_clip_quickgelu_224.openai", "CLIP ViT-B/16 image tower (OpenAI), QuickGELU as the "
           "original"),
    Preset(MOCOV3, "MoCo v3 ViT-B/16 (the authors' checkpoint file, mapped onto timm's ViT-B/16)",
           weights_note="--weights PATH (the authors' .pth.tar)"),
)

# What the VTAB-1k literature used, for names that resolve elsewhere (the warning names it)
LITERATURE = {"vit_base_patch16_224": "vit_base_patch16_224.orig_in21k",
              "vit_large_patch16_224": "vit_large_patch16_224.orig_in21k",
              "vit_base_patch16_clip_224": "vit_base_patch16_clip_quickgelu_224.openai"}


GELU_NOT_QUICKGELU = {"vit_base_patch16_clip_224"}


def preset(name: str) -> Preset | None:
    return next((p for p in PRESETS if p.name == name), None)


@dataclass(frozen=True)
class Resolved:
    requested: str
    timm_name: str  # architecture.tag as timm builds it ("" tag: no pretrained config)
    architecture: str
    tag: str
    warning: str | None
    legacy: bool = False

    @property
    def build_name(self) -> str:
        """The name to hand timm: a legacy name's target (timm would map it with a warning of its own)."""
        return self.timm_name if self.legacy else self.requested


def resolve_name(name: str) -> Resolved:
    """What timm builds for ``name``, with one warning line when that is not what the name suggests."""
    deprecated = get_deprecated_models()
    target = deprecated.get(name) or name
    arch, _, tag = target.partition(".")
    if not tag:
        cfg = timm.models.get_pretrained_cfg(arch, allow_unregistered=False) if _known(arch) else None
        tag = (cfg.tag if cfg is not None else "") or ""
    resolved = f"{arch}.{tag}" if tag else arch
    literature = LITERATURE.get(arch)
    warning = None
    if name in deprecated:
        warning = f"--backbone {name}: timm resolves this legacy name to {resolved}"
        literature = literature if "in21k" in name else None
    elif "." not in name and (arch in LITERATURE or arch in GELU_NOT_QUICKGELU) and len(_tags(arch)) > 1:
        warning = f"--backbone {name}: no pretrained tag, so timm takes its default, {resolved}"
    elif arch in GELU_NOT_QUICKGELU:
        warning = (f"--backbone {name}: timm builds this CLIP tower with GELU, while OpenAI's CLIP was trained with "
                   "QuickGELU")
    if warning:
        if literature and literature != resolved:
            warning += f"; the VTAB-1k literature used {literature}"
    if warning and arch in GELU_NOT_QUICKGELU:
        warning = warning.replace("the VTAB-1k literature used", "the original is")
    return Resolved(name, resolved, arch, tag, warning, legacy=name in deprecated)


def _known(arch: str) -> bool:
    return arch in timm.list_models(arch)


def _tags(arch: str) -> list[str]:
    from timm.models._registry import get_arch_pretrained_cfgs

    return list(get_arch_pretrained_cfgs(arch)) if _known(arch) else []


def pretrained_file(name: str) -> str | None:
    """The cached file timm's ``pretrained=True`` loads for ``name`` (Hugging Face cache), if any."""
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name) if _known(name.split(".")[0]) else None
    if cfg is None:
        return None
    if cfg.file:
        return cfg.file
    if not cfg.hf_hub_id:
        return None
    repo = cfg.hf_hub_id.split("@")[0]
    for filename in [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return found
    return None


def describe_preset(p: Preset) -> dict:
    """The preset's facts from timm: pretrained_cfg (input size, normalisation) and the architecture."""
    cfg = timm.models.get_pretrained_cfg(p.name)
    kwargs = {"img_size": p.img_size} if p.img_size else {}
    with torch.device("meta"):  # structure only: no memory, no initialisation
        model = timm.create_model(p.name, pretrained=False, num_classes=0, **kwargs)
    h, w = model.patch_embed.img_size
    return {"name": p.name, "architecture": p.name.split(".")[0], "tag": p.name.split(".", 1)[1],
            "label": p.label, "img_size": [h, w], "pretrained_img_size": list(cfg.input_size[1:]),
            "patch_size": list(model.patch_embed.patch_size), "mean": list(cfg.mean), "std": list(cfg.std),
            "interpolation": cfg.interpolation, "prefix_tokens": int(model.num_prefix_tokens),
            "class_token": model.cls_token is not None, "register_tokens": int(getattr(model, "num_reg_tokens", 0)),
            "pre_norm": not isinstance(model.norm_pre, torch.nn.Identity),
            "act": type(model.blocks[0].mlp.act).__name__, "weights": p.weights_note}


# ---- MoCo v3 -----------------------------------------------------------------------------------

def is_mocov3_state(sd: dict) -> bool:
    return any(k.startswith(MOCOV3_PREFIX) for k in sd)


def mocov3_state_dict(sd: dict) -> dict:
    """The authors' checkpoint (``state_dict`` of their DDP-wrapped MoCo) → timm ViT keys.

    Keeps ``module.base_encoder.*`` without the prefix and without their projection head; the
    momentum encoder and the predictor are dropped. Their ViT is timm's VisionTransformer with a
    fixed 2-D sin-cos position embedding stored as ``pos_embed``, so the remaining keys are timm's.
    """
    return {k[len(MOCOV3_PREFIX):]: v for k, v in sd.items()
            if k.startswith(MOCOV3_PREFIX) and not k[len(MOCOV3_PREFIX):].startswith(MOCOV3_HEAD)}


default_cfgs = generate_default_cfgs({
    MOCOV3: dict(num_classes=0, input_size=(3, 224, 224), crop_pct=0.875, interpolation="bicubic",
                 mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, first_conv="patch_embed.proj",
                 classifier="head", license="cc-by-nc-4.0",
                 origin_url="https://github.com/facebookresearch/moco-v3"),
})


@register_model
def vit_base_patch16_mocov3(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """timm's ViT-B/16 (class token, LayerNorm eps 1e-6) for the MoCo v3 checkpoint; weights via --weights PATH."""
    if pretrained:
        raise RuntimeError("vit_base_patch16_mocov3: no download; pass the authors' checkpoint with --weights PATH")
    args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, num_classes=0)
    return build_model_with_cfg(VisionTransformer, "vit_base_patch16_mocov3", False, **{**args, **kwargs})


def backbone_table() -> list[dict]:
    return [describe_preset(p) for p in PRESETS]
