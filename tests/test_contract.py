"""Contract tests: every registered method, on tiny ViTs, obeys the method contract (peftbench/method_api.py)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from peftbench.backbone import Preprocess
from peftbench.config import TrainConfig, build_dataclass
from peftbench.data.images import Batches, SplitData
from peftbench.measure import count_params
from peftbench.method_api import BuildContext, split_output
from peftbench.registry import available_methods, get_method
from peftbench.train import make_optimizer, make_step

NUM_CLASSES = 5
# knobs that make a method fit a tiny ViT and a tiny data set (e.g. fewer SHIP prototypes than images)
TINY_KNOBS = {"ship": {"num_prototypes": 4, "prompt_length": 3}, "vpt_deep": {"prompt_length": 3},
              "vpt_shallow": {"prompt_length": 3}}


def _ctx(img: int, tmp_path) -> BuildContext:
    rng = np.random.default_rng(0)
    data = SplitData(images=rng.integers(0, 256, (12, img, img, 3), dtype=np.uint8),
                     labels=rng.integers(0, NUM_CLASSES, 12), checksum=f"contract-{img}")
    pre = Preprocess((img, img), "bicubic", (0.5,) * 3, (0.5,) * 3)
    batches = Batches(data, (img, img), pre.mean, pre.std, pre.interpolation, torch.device("cpu"))
    return BuildContext(preprocess=pre, device=torch.device("cpu"), task=None, backbone_checksum=f"tiny-{img}",
                        cache_dir=tmp_path, train_batches=batches)


def _build(make_vit, name: str, tmp_path, img: int = 32, **vit_kw):
    spec = get_method(name)
    cfg = build_dataclass(spec.config_cls, TINY_KNOBS.get(name, {}), name)
    torch.manual_seed(0)
    model = spec.build(make_vit(NUM_CLASSES, img_size=img, **vit_kw), NUM_CLASSES, cfg, _ctx(img, tmp_path))
    return model


@pytest.fixture(params=available_methods())
def method(request):
    return request.param


@pytest.mark.parametrize("img,vit_kw", [(32, {}), (48, {}), (32, {"reg_tokens": 2})],
                         ids=["32px", "48px", "register-tokens"])
def test_forward_shape_and_classifier(make_tiny_vit, method, tmp_path, img, vit_kw):
    model = _build(make_tiny_vit, method, tmp_path, img, **vit_kw)
    x = torch.randn(3, 3, img, img)
    logits, _ = split_output(model.train()(x))  # training may add an auxiliary loss
    assert logits.shape == (3, NUM_CLASSES)
    with torch.no_grad():
        out = model.eval()(x)
    assert isinstance(out, torch.Tensor) and out.shape == (3, NUM_CLASSES)  # evaluation: the logits alone
    assert hasattr(model, "get_classifier") and count_params(model)["head_params"] == 32 * NUM_CLASSES + NUM_CLASSES


def test_only_trainable_parameters_change(make_tiny_vit, method, tmp_path):
    model = _build(make_tiny_vit, method, tmp_path)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(lr=0.05, weight_decay=0.1, epochs=1)
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    model.train()
    if hasattr(model, "on_epoch_start"):
        model.on_epoch_start(cfg.epochs - 1, cfg.epochs)  # past any loss warm-up
    step = make_step(model, opt, cfg, contextlib.nullcontext)
    # two steps: an adapter whose up-projection starts at zero (AdaptFormer, RepAdapter, VeRA, ...)
    # gives its down-projection's bias a zero gradient until the up-projection has moved once
    for _ in range(2):
        step(torch.randn(6, 3, 32, 32), torch.randint(0, NUM_CLASSES, (6,)))
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{method}: trainable {name} received no gradient"
            assert not torch.equal(p.detach(), before[name]), f"{method}: trainable {name} did not change"
        else:
            assert p.grad is None, f"{method}: frozen {name} received a gradient"
            assert torch.equal(p.detach(), before[name]), f"{method}: frozen {name} changed"
    # an independent count: the values one optimiser step changed, from the saved state, not requires_grad
    changed = sum(v.numel() for k, v in model.state_dict().items() if not torch.equal(v, state_before[k]))
    assert count_params(model)["trainable_params"] == changed


def test_state_dict_round_trip(make_tiny_vit, method, tmp_path):
    model = _build(make_tiny_vit, method, tmp_path).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)  # make the trained state differ from a fresh build
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    fresh = _build(make_tiny_vit, method, tmp_path).eval()
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(x), expected)
