"""The method-author toolkit (peftbench.method_api): freezing helpers and hooks found by isinstance."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from peftbench import method_api as api
from peftbench.registry import get_method

ROOT = Path(__file__).resolve().parents[1]
HOOKS = {"get_classifier", "on_epoch_start", "no_weight_decay", "merge", "merged", "frozen_features",
         "classify", "check"}


def _build(name: str, vit: nn.Module) -> nn.Module:
    spec = get_method(name)
    return spec.build(vit, 5, spec.config_cls(), api.BuildContext(preprocess=None, device=torch.device("cpu")))


def test_freeze_except_head_leaves_only_the_classifier_trainable(make_tiny_vit):
    vit = make_tiny_vit(5)
    api.freeze_except_head(vit)
    trainable = {n for n, p in vit.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}
    api.freeze(vit)
    api.train_head(vit)
    assert {n for n, p in vit.named_parameters() if p.requires_grad} == trainable


@pytest.mark.parametrize(("method", "hooks"), [
    ("linear", {api.HasClassifier, api.CachesFrozenFeatures}),
    ("lora", {api.HasClassifier, api.Merges}),
    ("vpt_shallow", {api.HasClassifier}),
    ("ship", {api.HasClassifier, api.EpochAware}),
])
def test_built_models_offer_their_hooks_by_protocol(make_tiny_vit, method, hooks):
    model = _build(method, make_tiny_vit(5, depth=4) if method == "ship" else make_tiny_vit(5))
    protocols = {api.HasClassifier, api.CachesFrozenFeatures, api.Merges, api.EpochAware, api.ExemptsWeightDecay}
    assert {p for p in protocols if isinstance(model, p)} == hooks
    head = {id(p) for p in model.get_classifier().parameters()}
    assert head and all(p.requires_grad for p in model.get_classifier().parameters())
    assert not any(p.requires_grad for p in model.vit.blocks[0].norm1.parameters())  # the backbone is frozen
    assert all(id(p) in head for p in model.parameters() if p.requires_grad) == (method == "linear")


def test_config_checks_are_found_by_protocol():
    assert isinstance(get_method("ship").config_cls(), api.ChecksSettings)
    assert not isinstance(get_method("lora").config_cls(), api.ChecksSettings)


@pytest.mark.parametrize("module", ["train.py", "measure.py", "checks.py", "catalog.py", "sweep/plan.py",
                                    "sweep/execute.py", "sweep/run.py"])
def test_the_harness_finds_hooks_by_isinstance_not_by_name(module):
    """No hasattr/getattr on a hook's name in the modules that call hooks: isinstance on the Protocol."""
    tree = ast.parse((ROOT / "peftbench" / module).read_text())
    by_name = [f"line {node.lineno}: {ast.unparse(node)}" for node in ast.walk(tree)
               if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
               and node.func.id in ("hasattr", "getattr") and len(node.args) >= 2
               and isinstance(node.args[1], ast.Constant) and node.args[1].value in HOOKS]
    assert not by_name, by_name
