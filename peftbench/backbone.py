"""timm ViT backbones: creation, checkpoint loading with key checks, and token-level seams.

Methods never fork the ViT. They use the seams timm already has (``patch_embed``,
``_pos_embed``, ``num_prefix_tokens``, ``blocks``, ``norm``, ``forward_head``) through the
small helpers below, so token counts, widths and depths always come from the model.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from torch import nn

from . import (
    models,  # noqa: F401  (registers the shipped vit_mini_patch8_32 with timm)
    presets,  # registers vit_base_patch16_mocov3 (MoCo v3 weights from the authors' file)
)
from .backbones_meta import DEFAULT_BACKBONE
from .errors import CheckpointError, UsageError
from .hub import _hub_offline, _in_hub_cache, hub_unreachable  # noqa: F401  (network probing lives in hub.py)
from .util import file_sha256

CLASSIFIER_PREFIXES = ("head.",)


@dataclass(frozen=True)
class Preprocess:
    """What the model expects: fixed input size, resize interpolation and normalisation."""

    img_size: tuple[int, int]
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass
class Backbone:
    """A backbone loaded once per process; ``instantiate`` hands each run a fresh copy."""

    name: str
    weights: str  # "none", "pretrained" (timm / Hugging Face cache) or a file path
    checksum: str  # sha256 of the loaded tensors (independent of the file format)
    preprocess: Preprocess
    img_size: int | None
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    geometry: dict[str, int] = field(default_factory=dict)  # image_tokens, prefix_tokens, depth, width (checks)
    timm_name: str | None = None  # what timm built: architecture.tag (a legacy name resolved)
    pretrained_tag: str | None = None
    file_sha256: str | None = None  # of the checkpoint file actually loaded (None: random init, or not found)
    build_name: str | None = None  # the name handed to timm (a legacy name's target), if not ``name``

    def describe(self) -> dict:
        return {"name": self.name, "weights": self.weights, "checksum": self.checksum,
                "img_size": list(self.preprocess.img_size), "interpolation": self.preprocess.interpolation,
                "mean": list(self.preprocess.mean), "std": list(self.preprocess.std),
                "timm_name": self.timm_name, "pretrained_tag": self.pretrained_tag,
                "checkpoint_sha256": self.file_sha256}

    def instantiate(self, num_classes: int, drop_path: float = 0.0) -> nn.Module:
        """A new model with the backbone weights and a freshly initialised classifier."""
        model = _create(self.build_name or self.name, num_classes=num_classes, img_size=self.img_size,
                        drop_path_rate=drop_path)
        missing, unexpected = model.load_state_dict(self.state_dict, strict=False)
        assert not unexpected and all(k.startswith(CLASSIFIER_PREFIXES) for k in missing), (missing, unexpected)
        return model


def _create(name: str, **kwargs) -> nn.Module:
    if kwargs.get("img_size") is None:
        kwargs.pop("img_size", None)
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as exc:  # timm: "Unknown model (...)"
        raise UsageError(f"--backbone {name}: {exc}") from exc
    except TypeError as exc:
        raise UsageError(f"--backbone {name}: not a ViT that takes these options ({exc})") from exc
    check_vit(model, name)
    check_img_size(model, name, kwargs.get("img_size"))
    return model


def check_img_size(model: nn.Module, name: str, img_size: int | None) -> None:
    """--img-size must hold at least one patch (a 0-token image fails deep inside torch otherwise)."""
    patch = getattr(model.patch_embed, "patch_size", None)
    if img_size is None or not patch:
        return
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    if img_size < max(ph, pw):
        raise UsageError(f"--img-size {img_size}: smaller than one {ph}x{pw} patch of --backbone {name}; "
                         f"give at least {max(ph, pw)} (default: the model's own size)")


def check_vit(model: nn.Module, name: str = "backbone") -> None:
    needed = ("patch_embed", "_pos_embed", "blocks", "norm", "forward_head", "num_prefix_tokens")
    lacking = [a for a in needed if not hasattr(model, a)]
    if lacking:
        raise UsageError(f"--backbone {name}: not a timm VisionTransformer (lacks {', '.join(lacking)})")


def _state_checksum(sd: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().contiguous().cpu()
        h.update(k.encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _read_state_dict(path: Path, trust: bool) -> dict[str, torch.Tensor]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        if suffix in (".pth", ".pt", ".bin", ".ckpt") or path.name.lower().endswith(".pth.tar"):  # MoCo v3
            try:
                sd = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as exc:
                if not trust:
                    raise CheckpointError(
                        f"--weights {path}: refused: the file needs arbitrary pickled code to load "
                        "(pass --trust-checkpoint only if you trust its source)") from exc
                sd = torch.load(path, map_location="cpu", weights_only=False)
            for key in ("model", "state_dict", "model_state"):
                if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
                    sd = sd[key]
            if not isinstance(sd, dict):
                raise CheckpointError(f"--weights {path}: no state dict inside (found {type(sd).__name__})")
            return sd
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"--weights {path}: unreadable checkpoint: {type(exc).__name__}: {exc}") from exc
    raise CheckpointError(f"--weights {path}: unknown checkpoint format '{suffix}' "
                          "(use .npz, .safetensors, .pth, .pt or .bin)")


def _load_file_into(model: nn.Module, path: Path, trust: bool) -> None:
    if not path.is_file():
        raise CheckpointError(f"--weights {path}: no such file")
    if path.suffix.lower() == ".npz":
        from timm.models.vision_transformer import _load_weights

        if not zipfile.is_zipfile(path):  # else numpy guesses a pickle and speaks of "pickled data"
            raise CheckpointError(f"--weights {path}: not a .npz archive (the file is not a zip archive: "
                                  "truncated, or another format under a .npz name)")
        try:
            _load_weights(model, str(path))
        except KeyError as exc:
            raise CheckpointError(f"--weights {path}: missing key {exc} for {type(model).__name__}") from exc
        except Exception as exc:
            raise CheckpointError(f"--weights {path}: unreadable .npz checkpoint: {type(exc).__name__}: {exc}") from exc
        return
    sd = _read_state_dict(path, trust)
    if presets.is_mocov3_state(sd):  # the authors' MoCo v3 file: their ViT under module.base_encoder.
        sd = presets.mocov3_state_dict(sd)
    from timm.models.vision_transformer import checkpoint_filter_fn

    try:
        sd = checkpoint_filter_fn(sd, model)
    except Exception as exc:
        raise CheckpointError(f"--weights {path}: does not fit {type(model).__name__}: {exc}") from exc
    sd = {k: v for k, v in sd.items() if not k.startswith(CLASSIFIER_PREFIXES)}
    own = model.state_dict()
    mismatched = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items()
                  if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = sorted(k for k in own if k not in sd and not k.startswith(CLASSIFIER_PREFIXES))
    unexpected = sorted(k for k in sd if k not in own)
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointError(f"--weights {path}: keys do not match the backbone: " + "; ".join(parts))
    model.load_state_dict(sd, strict=False)


def load_backbone(name: str = DEFAULT_BACKBONE, weights: str = "pretrained", img_size: int | None = None,
                  trust_checkpoint: bool = False, init_seed: int = 0) -> Backbone:
    """Create the ViT once and load its weights: 'pretrained' (timm cache), 'none', or a path."""
    resolved = presets.resolve_name(name)
    if resolved.warning:
        print(f"warning: {resolved.warning}", file=sys.stderr)
    preset = presets.preset(resolved.timm_name)
    if img_size is None and preset is not None:
        img_size = preset.img_size  # e.g. DINOv2 at 224 px, its position embeddings resized by timm
    checkpoint_hash = None
    if weights == "pretrained" and preset is not None and preset.weights_note.startswith("--weights"):
        raise UsageError(f"--backbone {name}: timm has no download for it; pass {preset.weights_note}")
    timm_name = resolved.build_name
    if weights == "none":
        torch.manual_seed(init_seed)
        model = _create(timm_name, num_classes=0, img_size=img_size)
        source = "none"
    elif weights == "pretrained":
        unreachable = hub_unreachable()
        if unreachable and not _in_hub_cache(timm_name):
            raise CheckpointError(
                f"--backbone {name}: pretrained weights are not in the timm/Hugging Face cache and we are offline "
                f"({unreachable}); pass a local file with --weights PATH (e.g. ViT-B_16.npz) or --weights none for "
                "random initialisation")
        try:
            with _hub_offline(unreachable is not None):  # the cache only: no retries, no waiting
                model = timm.create_model(timm_name, pretrained=True, num_classes=0,
                                          **({"img_size": img_size} if img_size else {}))
        except Exception as exc:
            if isinstance(exc, RuntimeError) and "Unknown model" in str(exc):
                raise UsageError(f"--backbone {name}: {exc}") from exc
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            why = f"we are offline ({unreachable})" if unreachable else f"could not be downloaded ({first})"
            raise CheckpointError(
                f"--backbone {name}: pretrained weights are not in the timm/Hugging Face cache and {why}; pass a "
                "local file with --weights PATH (e.g. ViT-B_16.npz) or --weights none for random initialisation"
                ) from exc
        check_vit(model, name)
        check_img_size(model, name, img_size)
        source = "pretrained"
        cached = presets.pretrained_file(resolved.timm_name)
        checkpoint_hash = file_sha256(Path(cached)) if cached else None
    else:
        path = Path(os.path.expanduser(weights))
        model = _create(timm_name, num_classes=0, img_size=img_size)
        _load_file_into(model, path, trust_checkpoint)
        source = str(path)
        checkpoint_hash = file_sha256(path)
    cfg = timm.data.resolve_data_config({}, model=model)
    h, w = getattr(model.patch_embed, "img_size", None) or cfg["input_size"][1:]
    pre = Preprocess(img_size=(h, w), interpolation=str(cfg.get("interpolation", "bicubic")),
                     mean=tuple(float(m) for m in cfg["mean"]), std=tuple(float(s) for s in cfg["std"]))
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    geometry = {"image_tokens": int(model.patch_embed.num_patches), "prefix_tokens": int(model.num_prefix_tokens),
                "depth": len(model.blocks), "width": int(model.embed_dim)}
    return Backbone(name=name, weights=source, checksum=_state_checksum(sd), preprocess=pre,
                    img_size=img_size, state_dict=sd, geometry=geometry, timm_name=resolved.timm_name,
                    pretrained_tag=resolved.tag or None, file_sha256=checkpoint_hash, build_name=timm_name)




# ---- token-level seams -------------------------------------------------------------------

def embed_tokens(vit: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Images -> the token sequence that enters block 0 (prefix tokens first, then patches)."""
    x = vit.patch_embed(images)
    x = vit._pos_embed(x)
    x = vit.patch_drop(x)
    return vit.norm_pre(x)


def logits_from_tokens(vit: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The backbone's own final norm, pooling and classifier on [prefix tokens, image tokens]."""
    return vit.forward_head(vit.norm(tokens))


def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)
