"""VPT-shallow and VPT-deep: parameter counts, FLOPs, where the prompts go, what trains."""

from __future__ import annotations

import copy
import itertools

import pytest
import timm
import torch

from peftbench.backbone import embed_tokens
from peftbench.config import build_dataclass
from peftbench.errors import UsageError
from peftbench.measure import count_params, inference_gflops
from peftbench.method_api import BuildContext
from peftbench.methods.linear import LinearConfig, build_linear
from peftbench.methods.vpt import VPTDeepConfig, VPTShallowConfig, build_vpt_deep, build_vpt_shallow

CTX = BuildContext(preprocess=None, device=torch.device("cpu"))
NUM_CLASSES = 5


@pytest.fixture
def tiny_vit(make_tiny_vit):
    """The shared tiny ViT with timm's default MLP ratio 4 (this file's models always had it)."""
    return lambda **kw: make_tiny_vit(NUM_CLASSES, **{"mlp_ratio": 4.0, **kw})


def images(vit: torch.nn.Module, batch: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(batch, 3, *vit.patch_embed.img_size)


def deep(vit, **knobs):
    return build_vpt_deep(vit, NUM_CLASSES, VPTDeepConfig(**knobs), CTX)


def shallow(vit, **knobs):
    return build_vpt_shallow(vit, NUM_CLASSES, VPTShallowConfig(**knobs), CTX)


def record_blocks(model, x):
    """(input, output) token sequences of every block, in order."""
    seen = []
    hooks = [b.register_forward_hook(lambda m, args, out: seen.append((args[0], out))) for b in model.vit.blocks]
    try:
        logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return logits, seen


@pytest.fixture(scope="module")
def vit_b16():
    """ViT-B/16 on the meta device: shapes without weights, so counts and FLOPs cost nothing."""
    with torch.device("meta"):
        return timm.create_model("vit_base_patch16_224.orig_in21k", pretrained=False, num_classes=100)


@pytest.mark.parametrize("build, expected", [(deep, 537_700), (shallow, 115_300)])
def test_trainable_params_vit_b16(vit_b16, build, expected):
    counts = count_params(build(vit_b16, prompt_length=50))
    assert counts["trainable_params"] == expected  # L·P·D (deep) or P·D (shallow) + 768·100 + 100
    assert counts["head_params"] == 76_900


def test_gflops_vpt_deep_vit_b16(vit_b16):
    # 197 + 50 tokens in every block; measured reference 44.44 (plain ViT-B/16: 35.1)
    assert inference_gflops(deep(vit_b16, prompt_length=50), (224, 224), device="meta") == pytest.approx(44.4, abs=0.3)


def test_prompt_length_zero_is_the_linear_probe(tiny_vit):
    vit = tiny_vit().eval()
    probe = build_linear(copy.deepcopy(vit), NUM_CLASSES, LinearConfig(), CTX).eval()
    x = images(vit)
    expected = probe(x)
    assert torch.equal(deep(copy.deepcopy(vit), prompt_length=0).eval()(x), expected)
    assert torch.equal(shallow(copy.deepcopy(vit), prompt_length=0).eval()(x), expected)


@pytest.mark.parametrize("build", [deep, shallow])
def test_only_prompts_and_head_train(tiny_vit, build):
    model = build(tiny_vit(), prompt_length=3).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"prompts", "vit.head.weight", "vit.head.bias"}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    model(images(model.vit, 4)).logsumexp(dim=1).sum().backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None and p.grad.abs().sum() > 0) == (name in trainable), name
    opt.step()
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) == (name not in trainable), name


VARIANTS = {
    "cls": {},
    "registers": {"reg_tokens": 4},
    "registers_no_embed_class": {"reg_tokens": 4, "no_embed_class": True},
    "img48_depth3": {"img_size": 48, "depth": 3},
    "no_prefix_avg": {"class_token": False, "global_pool": "avg"},
}


@pytest.mark.parametrize("kwargs", VARIANTS.values(), ids=VARIANTS.keys())
def test_prompts_enter_after_prefix_tokens(tiny_vit, kwargs):
    model = deep(tiny_vit(**kwargs), prompt_length=3).eval()
    vit, n, p = model.vit, model.vit.num_prefix_tokens, 3
    x = images(vit)
    tokens = embed_tokens(vit, x)
    assert n == (0 if kwargs.get("class_token") is False else 1) + kwargs.get("reg_tokens", 0)
    logits, seen = record_blocks(model, x)
    assert logits.shape == (2, NUM_CLASSES) and len(seen) == len(vit.blocks)
    first_in = seen[0][0]
    assert first_in.shape[1] == tokens.shape[1] + p
    assert torch.equal(first_in[:, :n], tokens[:, :n]) and torch.equal(first_in[:, n + p:], tokens[:, n:])
    for i, (block_in, _) in enumerate(seen):  # fresh prompts before every block
        assert torch.equal(block_in[:, n:n + p], model.prompts[i].expand(2, -1, -1))
    for (_, out), (block_in, _) in itertools.pairwise(seen):  # prefix and image tokens flow on untouched
        assert torch.equal(block_in[:, :n], out[:, :n]) and torch.equal(block_in[:, n + p:], out[:, n + p:])


def test_shallow_prompts_travel_through_all_blocks(tiny_vit):
    model = shallow(tiny_vit(reg_tokens=2, depth=3), prompt_length=3).eval()
    n = model.vit.num_prefix_tokens
    _, seen = record_blocks(model, images(model.vit))
    assert model.prompts.shape == (1, 3, 32)
    assert torch.equal(seen[0][0][:, n:n + 3], model.prompts[0].expand(2, -1, -1))
    for (_, out), (block_in, _) in itertools.pairwise(seen):
        assert torch.equal(block_in, out)


def test_deep_layers_subset(tiny_vit):
    """Blocks before the first listed one see no prompts; unlisted later blocks carry them on."""
    model = deep(tiny_vit(depth=4), prompt_length=3, deep_layers=(3, 1)).eval()
    vit, n = model.vit, model.vit.num_prefix_tokens
    x = images(vit)
    _, seen = record_blocks(model, x)
    assert model.prompts.shape == (2, 3, 32)
    assert torch.equal(seen[0][0], embed_tokens(vit, x))
    assert torch.equal(seen[1][0][:, n:n + 3], model.prompts[0].expand(2, -1, -1))
    assert torch.equal(seen[2][0], seen[1][1])
    assert torch.equal(seen[3][0][:, n:n + 3], model.prompts[1].expand(2, -1, -1))


def test_deep_layers_zero_is_shallow(tiny_vit):
    vit = tiny_vit()
    a = deep(copy.deepcopy(vit), prompt_length=3, deep_layers=(0,)).eval()
    b = shallow(copy.deepcopy(vit), prompt_length=3).eval()
    b.load_state_dict(a.state_dict())
    x = images(vit)
    assert torch.equal(a(x), b(x))


def test_prompts_stay_out_of_the_avg_pooled_feature(tiny_vit):
    model = shallow(tiny_vit(reg_tokens=2, global_pool="avg"), prompt_length=3).eval()
    vit, n = model.vit, model.vit.num_prefix_tokens
    x = images(vit)
    logits, seen = record_blocks(model, x)
    last = vit.norm(seen[-1][1])
    image_tokens = last[:, n + 3:]
    assert image_tokens.shape[1] == vit.patch_embed.num_patches
    assert torch.allclose(logits, vit.head(vit.fc_norm(image_tokens.mean(dim=1))), atol=1e-6)
    with_prompts = vit.head(vit.fc_norm(last[:, n:].mean(dim=1)))
    assert not torch.allclose(logits, with_prompts, atol=1e-4)
    with torch.no_grad():  # prompts still act, through attention
        model.prompts.mul_(3)
    assert not torch.allclose(model(x), logits, atol=1e-4)


@pytest.mark.parametrize("backbone_train_mode", [False, True])
def test_backbone_mode_while_training(tiny_vit, backbone_train_mode):
    model = deep(tiny_vit(), prompt_length=2, backbone_train_mode=backbone_train_mode).train()
    assert model.training
    assert all(m.training == backbone_train_mode for m in model.vit.modules())
    model.eval()
    assert not any(m.training for m in model.modules())


def test_prompt_dropout_only_while_training(tiny_vit):
    model = deep(tiny_vit(), prompt_length=4, dropout=0.5)
    x = images(model.vit)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_deep_layers_out_of_range(tiny_vit):
    with pytest.raises(UsageError, match=r"deep_layers=\(0, 2\).*below 2.*valid: 0\.\.1"):
        deep(tiny_vit(depth=2), deep_layers=(0, 2))


@pytest.mark.parametrize("cls, knobs", [
    (VPTShallowConfig, {"prompt_length": -1}),
    (VPTShallowConfig, {"dropout": 1.0}),
    (VPTDeepConfig, {"deep_layers": (1, 1)}),
    (VPTDeepConfig, {"deep_layers": (-1,)}),
    (VPTDeepConfig, {"deep_layers": ()}),
])
def test_bad_knobs(cls, knobs):
    with pytest.raises(UsageError):
        cls(**knobs)


def test_knobs_from_the_command_line():
    cfg = build_dataclass(VPTDeepConfig, {"deep_layers": "0,2,4", "prompt_length": "10"}, "vpt_deep")
    assert cfg.deep_layers == (0, 2, 4) and cfg.prompt_length == 10
