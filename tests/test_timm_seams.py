"""The private timm seams peftbench relies on. If a timm release changes them, these fail first
and say which seam moved; pyproject pins timm to the range they were checked with."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from timm.models import vision_transformer as vt

from peftbench.backbone import _load_file_into, embed_tokens, logits_from_tokens
from peftbench.errors import CheckpointError

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def _seam_changed(what: str) -> str:
    return f"timm {timm.__version__}: {what} — peftbench/backbone.py uses this private seam; update it and the pin"


def test_installed_timm_is_in_the_pinned_range():
    from packaging.requirements import Requirement

    spec = next(Requirement(m) for m in re.findall(r'"(timm[^"]*)"', PYPROJECT.read_text()))
    assert spec.specifier and "<" in str(spec.specifier), "pyproject.toml: timm needs an upper bound"
    assert timm.__version__ in spec.specifier, f"timm {timm.__version__} is outside the tested range {spec}"


def test_token_seams_reproduce_the_models_own_forward(make_tiny_vit):
    vit = make_tiny_vit().eval()
    for attr in ("_pos_embed", "patch_embed", "patch_drop", "norm_pre", "blocks", "norm", "forward_head",
                 "num_prefix_tokens"):
        assert hasattr(vit, attr), _seam_changed(f"VisionTransformer.{attr} is gone")
    assert list(inspect.signature(vit._pos_embed).parameters) == ["x"], _seam_changed("_pos_embed(x) changed")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = embed_tokens(vit, x)
        assert tokens.shape == (2, vit.num_prefix_tokens + 16, 32), _seam_changed("_pos_embed's output changed")
        ours = logits_from_tokens(vit, vit.blocks(tokens))
        assert torch.allclose(ours, vit(x), atol=1e-6), _seam_changed("embed/blocks/head no longer equal forward()")


def test_npz_loader_seam(make_tiny_vit, tmp_path):
    assert callable(getattr(vt, "_load_weights", None)), _seam_changed("vision_transformer._load_weights is gone")
    params = list(inspect.signature(vt._load_weights).parameters)
    assert params[:2] == ["model", "checkpoint_path"], _seam_changed(f"_load_weights{tuple(params)}")
    path = tmp_path / "empty.npz"
    np.savez(path, unrelated=np.zeros(1))  # a valid archive without the big_vision keys
    with pytest.raises(CheckpointError, match=r"missing key|unreadable \.npz checkpoint: ValueError: .*JAX"):
        _load_file_into(make_tiny_vit(num_classes=0), path, trust=False)
