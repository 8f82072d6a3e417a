"""The shared loop: schedule, the linear probe's feature cache, precision choice."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import peftbench.train as train_mod
from peftbench.config import TrainConfig
from peftbench.data.images import Batches, SplitData
from peftbench.method_api import BuildContext, MethodOutput
from peftbench.registry import get_method
from peftbench.train import effective_precision, evaluate, lr_at, train, uses_feature_cache

CPU = torch.device("cpu")


def _batches(n: int = 40, classes: int = 4) -> Batches:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, n)
    images = rng.integers(0, 60, (n, 32, 32, 3), dtype=np.uint8) + (labels * 50)[:, None, None, None].astype(np.uint8)
    data = SplitData(images=images, labels=labels, checksum="t")
    return Batches(data, (32, 32), (0.5,) * 3, (0.5,) * 3, "bicubic", CPU)


def _build(make_vit, method: str):
    spec = get_method(method)
    ctx = BuildContext(preprocess=None, device=CPU)
    return spec.build(make_vit(4), 4, spec.config_cls(), ctx)


def test_schedule_warmup_then_cosine():
    cfg = TrainConfig(epochs=10, warmup_epochs=2, lr=1.0, warmup_lr=0.0, min_lr=0.1)
    assert lr_at(0, 5, cfg) == 0.0
    assert lr_at(5, 5, cfg) == pytest.approx(0.5)
    assert lr_at(10, 5, cfg) == pytest.approx(1.0)
    assert lr_at(50, 5, cfg) == pytest.approx(0.1)
    mid = lr_at(30, 5, cfg)
    assert 0.1 < mid < 1.0 and mid == pytest.approx(0.1 + 0.45 * (1 + np.cos(np.pi * 0.5)))


def test_precision_defaults():
    assert effective_precision(TrainConfig(), CPU) == "fp32"
    assert effective_precision(TrainConfig(), torch.device("cuda")) == "bf16"
    assert effective_precision(TrainConfig(precision="fp32"), torch.device("cuda")) == "fp32"


def test_feature_cache_only_where_only_the_classifier_trains(make_tiny_vit):
    cfg = TrainConfig()
    assert uses_feature_cache(_build(make_tiny_vit, "linear"), cfg)
    assert not uses_feature_cache(_build(make_tiny_vit, "linear"), TrainConfig(cache_features=False))
    assert not uses_feature_cache(_build(make_tiny_vit, "full"), cfg)
    for name in ("vpt_deep", "vpt_shallow"):
        assert not uses_feature_cache(_build(make_tiny_vit, name), cfg)
    model = _build(make_tiny_vit, "linear")
    model.vit.blocks[0].mlp.fc1.weight.requires_grad_(True)  # a trunk parameter that trains: no cache
    assert not uses_feature_cache(model, cfg)


def test_linear_probe_feature_cache_matches_end_to_end(make_tiny_vit):
    batches = _batches()
    model = _build(make_tiny_vit, "linear")
    twin = copy.deepcopy(model)
    cfg = TrainConfig(epochs=3, batch_size=8, warmup_epochs=1, lr=0.05)
    fast = train(model, batches, cfg, CPU, seed=3)
    slow = train(twin, batches, TrainConfig(**{**cfg.__dict__, "cache_features": False}), CPU, seed=3)
    np.testing.assert_allclose(fast.losses, slow.losses, rtol=1e-5)
    for a, b in zip(model.get_classifier().parameters(), twin.get_classifier().parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert evaluate(model, batches, 16, "fp32", CPU) == evaluate(twin, batches, 16, "fp32", CPU)


def test_compile_gives_the_same_training(make_tiny_vit, monkeypatch):
    """--compile goes through dynamo's graph capture and AOT autograd: the same losses as eager.

    Inductor's code generation (~100 s of C++ compiling for this tiny model on 2 cores) is left
    out: its numerics are torch's to test; what the harness owns is that its loop compiles whole
    (fixed shapes, no graph it cannot capture) and trains the same. ``aot_eager`` checks exactly that.
    """
    from torch._dynamo import lookup_backend

    graphs = []

    def aot_eager_counting(gm, example_inputs):
        graphs.append(gm)
        return lookup_backend("aot_eager")(gm, example_inputs)

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, **{**kw, "backend": aot_eager_counting}))
    monkeypatch.setattr(train_mod, "_compiled", {})  # nothing compiled by an earlier test is reused
    torch._dynamo.reset()
    batches = _batches(n=20)
    spec = get_method("vpt_deep")  # no prompt dropout: compiled code draws its random masks differently
    model = spec.build(make_tiny_vit(4), 4, spec.config_cls(prompt_length=2, dropout=0.0), BuildContext(None, CPU))
    twin = copy.deepcopy(model)
    cfg = TrainConfig(epochs=2, batch_size=8, warmup_epochs=0, lr=0.01)
    eager = train(model, batches, cfg, CPU, seed=1)
    compiled = train(twin, batches, TrainConfig(**{**cfg.__dict__, "compile": True}), CPU, seed=1)
    assert len(graphs) == 1  # the last batch of 4 is padded to 8: one graph (it used to compile a second)
    np.testing.assert_allclose(compiled.losses, eager.losses, rtol=1e-4)
    assert compiled.first_step_s > 0


class _ConstantAux(torch.nn.Module):
    """A method whose training forward returns its logits with a constant auxiliary loss."""

    def __init__(self, inner: torch.nn.Module, aux: float):
        super().__init__()
        self.inner, self.aux = inner, aux

    def forward(self, x: torch.Tensor) -> torch.Tensor | MethodOutput:
        logits = self.inner(x)
        return MethodOutput(logits, torch.tensor(self.aux)) if self.training else logits


def test_auxiliary_loss_returned_by_forward_is_added_to_the_training_loss(make_tiny_vit):
    spec = get_method("vpt_shallow")
    model = spec.build(make_tiny_vit(4), 4, spec.config_cls(prompt_length=2, dropout=0.0), BuildContext(None, CPU))
    plain, extra = _ConstantAux(model, 0.0), _ConstantAux(copy.deepcopy(model), 5.0)
    cfg = TrainConfig(epochs=2, batch_size=8, warmup_epochs=0, lr=0.01)
    batches = _batches(n=16)
    base, shifted = train(plain, batches, cfg, CPU, seed=1), train(extra, batches, cfg, CPU, seed=1)
    np.testing.assert_allclose(shifted.losses, np.array(base.losses) + 5.0, rtol=1e-5)  # same gradients, +5
    assert evaluate(extra, batches, 8, "fp32", CPU) == evaluate(plain, batches, 8, "fp32", CPU)
