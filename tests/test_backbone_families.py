"""Every method on every architecture family of the backbone presets, as tiny random-weight variants:
class token only (ViT-B/16, MAE, MoCo v3), class token + ``norm_pre`` and QuickGELU (CLIP), patch 14
with LayerScale and position embeddings resized by timm (DINOv2), and register tokens (DINOv2 reg4).

Each is built from the preset's own timm architecture with tiny widths, so its prefix tokens, pre-norm,
activation and LayerScale are timm's. One training step and one evaluation per method and family; the
sequence entering block 0 must start with the backbone's own prefix tokens (class, then registers), and
carry the image tokens unchanged and in order, so prompts sit after all prefix tokens.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import timm
import torch
from timm.models.vision_transformer import checkpoint_filter_fn

from peftbench.backbone import Preprocess
from peftbench.config import TrainConfig, build_dataclass
from peftbench.data.images import Batches, SplitData
from peftbench.method_api import BuildContext, split_output
from peftbench.registry import available_methods, get_method
from peftbench.train import make_optimizer, make_step

NUM_CLASSES = 3
TINY = dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
KNOBS = {"ship": {"num_prototypes": 4, "prompt_length": 3}, "vpt_deep": {"prompt_length": 3},
         "vpt_shallow": {"prompt_length": 3}}
PROMPTED = {"vpt_shallow", "vpt_deep", "ship"}  # methods that add tokens to the sequence


def _resized(arch: str, native: int, img: int, patch: int) -> torch.nn.Module:
    """A tiny ``arch`` trained (here: initialised) at ``native`` px, run at ``img`` px: its position
    embeddings resized by timm's own checkpoint filter, as ``load_backbone`` does for DINOv2 at 224."""
    torch.manual_seed(0)
    source = timm.create_model(arch, pretrained=False, img_size=native, patch_size=patch, num_classes=0, **TINY)
    target = timm.create_model(arch, pretrained=False, img_size=img, patch_size=patch, num_classes=NUM_CLASSES,
                               **TINY)
    missing, unexpected = target.load_state_dict(checkpoint_filter_fn(source.state_dict(), target), strict=False)
    assert not unexpected and all(k.startswith("head.") for k in missing)
    assert target.pos_embed.shape != source.pos_embed.shape  # the resize happened
    return target


def _plain(arch: str, img: int = 32, patch: int = 8) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(arch, pretrained=False, img_size=img, patch_size=patch, num_classes=NUM_CLASSES, **TINY)


FAMILIES = {  # family: (factory, image size, prefix tokens)
    "cls": (lambda: _plain("vit_base_patch16_224"), 32, 1),
    "clip-prenorm": (lambda: _plain("vit_base_patch16_clip_quickgelu_224"), 32, 1),
    "dinov2-p14": (lambda: _resized("vit_base_patch14_dinov2", 70, 56, 14), 56, 1),
    "dinov2-reg4": (lambda: _resized("vit_base_patch14_reg4_dinov2", 70, 56, 14), 56, 5),
}


def test_families_are_what_they_claim():
    vits = {name: factory() for name, (factory, _, _) in FAMILIES.items()}
    assert isinstance(vits["clip-prenorm"].norm_pre, torch.nn.LayerNorm)
    assert type(vits["clip-prenorm"].blocks[0].mlp.act).__name__ == "QuickGELU"
    assert all(isinstance(vits[f].norm_pre, torch.nn.Identity) for f in ("cls", "dinov2-p14", "dinov2-reg4"))
    assert vits["dinov2-p14"].patch_embed.patch_size == (14, 14) and vits["dinov2-p14"].patch_embed.num_patches == 16
    assert [v.num_prefix_tokens for v in vits.values()] == [1, 1, 1, 5]
    assert vits["dinov2-reg4"].num_reg_tokens == 4


def _ctx(img: int, tmp_path) -> BuildContext:
    rng = np.random.default_rng(0)
    data = SplitData(images=rng.integers(0, 256, (12, img, img, 3), dtype=np.uint8),
                     labels=rng.integers(0, NUM_CLASSES, 12), checksum=f"families-{img}")
    pre = Preprocess((img, img), "bicubic", (0.5,) * 3, (0.5,) * 3)
    batches = Batches(data, (img, img), pre.mean, pre.std, pre.interpolation, torch.device("cpu"))
    return BuildContext(preprocess=pre, device=torch.device("cpu"), task=None, backbone_checksum=f"tiny-{img}",
                        cache_dir=tmp_path, train_batches=batches)


class SequenceProbe:
    """Captures, per forward, the embedded tokens (the output of ``norm_pre``, the last step of the
    embedding) and the sequence entering block 0 (the input of its first norm), wherever a method or a
    wrapper put those modules."""

    def __init__(self, model: torch.nn.Module):
        named = dict(model.named_modules())
        pre = [n for n in named if n == "norm_pre" or n.endswith(".norm_pre")]
        first = [n for n in named if n == "blocks.0.norm1" or n.endswith(".blocks.0.norm1")]
        assert len(pre) == 1 and len(first) == 1, (pre, first)
        self.embedded: list[torch.Tensor] = []
        self.entering: list[torch.Tensor] = []
        named[pre[0]].register_forward_hook(lambda m, i, o: self.embedded.append(o.detach()))
        named[first[0]].register_forward_pre_hook(lambda m, i: self.entering.append(i[0].detach()))

    def check(self, prefix: int, method: str) -> None:
        emb, seq = self.embedded[-1], self.entering[-1]
        assert torch.equal(seq[:, :prefix], emb[:, :prefix]), (
            f"{method}: the sequence entering block 0 does not start with the {prefix} prefix token(s)")
        images = emb[:, prefix:]
        starts = [k for k in range(prefix, seq.shape[1] - images.shape[1] + 1)
                  if torch.equal(seq[:, k:k + images.shape[1]], images)]
        assert starts, f"{method}: the image tokens do not enter block 0 unchanged and in order"
        if method not in PROMPTED:
            assert seq.shape == emb.shape, f"{method}: changed the token count"


def _step_and_evaluate(method: str, family: str, tmp_path) -> SequenceProbe:
    factory, img, prefix = FAMILIES[family]
    spec = get_method(method)
    cfg = build_dataclass(spec.config_cls, KNOBS.get(method, {}), method)
    torch.manual_seed(0)
    model = spec.build(factory(), NUM_CLASSES, cfg, _ctx(img, tmp_path))
    probe = SequenceProbe(model)
    tcfg = TrainConfig(lr=0.01, weight_decay=0.0, epochs=1)
    opt = make_optimizer(model, tcfg, torch.device("cpu"))
    model.train()
    loss = make_step(model, opt, tcfg, contextlib.nullcontext)(torch.randn(4, 3, img, img),
                                                               torch.randint(0, NUM_CLASSES, (4,)))
    assert torch.isfinite(torch.as_tensor(loss)).all(), f"{method} on {family}: loss {loss}"
    probe.check(prefix, method)
    with torch.no_grad():
        logits, _ = split_output(model.eval()(torch.randn(2, 3, img, img)))
    assert logits.shape == (2, NUM_CLASSES) and torch.isfinite(logits).all(), f"{method} on {family}"
    probe.check(prefix, method)
    return probe


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("method", available_methods())
def test_method_trains_and_evaluates_on_family(method, family, tmp_path):
    _step_and_evaluate(method, family, tmp_path)


def test_probe_detects_prompts_before_a_prefix_token(tmp_path, monkeypatch):
    """The check can fail: VPT told the backbone has one prefix token puts its prompts between the
    class token and the four registers, and the probe says so."""
    factory, img, prefix = FAMILIES["dinov2-reg4"]
    spec = get_method("vpt_shallow")
    model = spec.build(factory(), NUM_CLASSES, build_dataclass(spec.config_cls, KNOBS["vpt_shallow"], "vpt_shallow"),
                       _ctx(img, tmp_path))
    probe = SequenceProbe(model)
    model.vit.num_prefix_tokens = 1  # the mistake: prompts after the class token only
    with torch.no_grad():
        model.eval()(torch.randn(2, 3, img, img))
    with pytest.raises(AssertionError, match="does not start with the 5 prefix token"):
        probe.check(prefix, "vpt_shallow")
    model.vit.num_prefix_tokens = prefix  # put right, the same probe passes
    with torch.no_grad():
        model.eval()(torch.randn(2, 3, img, img))
    probe.check(prefix, "vpt_shallow")


def test_unsupported_architecture_is_refused_at_build_in_one_line(tmp_path):
    """SHIP reads the class token's attention: on a backbone without one it refuses at build time,
    naming the method, the backbone and the reason, in one line."""
    from peftbench.errors import UsageError

    torch.manual_seed(0)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=32, patch_size=8,
                            num_classes=NUM_CLASSES, class_token=False, global_pool="avg", **TINY)
    spec = get_method("ship")
    cfg = build_dataclass(spec.config_cls, KNOBS["ship"], "ship")
    with pytest.raises(UsageError) as err:
        spec.build_on("vit_avgpool_tiny", vit, NUM_CLASSES, cfg, _ctx(32, tmp_path))
    assert str(err.value) == ("ship cannot run on --backbone vit_avgpool_tiny: the backbone has no class token, "
                              "whose attention SHIP reads")
