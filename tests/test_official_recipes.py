"""--recipe official for the methods whose authors published per-task VTAB-1k settings, the adapter's
published-rows default, and the knobs added for them (recorded only when set, so old run ids stay).

The expected values are typed here from the authors' files (FacT/configs/{tt,tk}/<task>.yaml of
JieShibo/PETL-ViT, configs/repblock/<task>.yaml of luogen1996/RepAdapter, train_ssf.sh of
dongzelian/SSF), independently of the suite file they check.
"""

from __future__ import annotations

import json

import pytest
import timm
import torch

from peftbench.cli import main
from peftbench.config import parse_sets, resolve
from peftbench.data.tasks import resolve_tasks
from peftbench.measure import count_params
from peftbench.registry import get_method
from peftbench.sweep.resolve import load_suite

VTAB = load_suite("vtab1k", None)


def _resolved(method: str, task: str | None, recipe: str = "official", sets: tuple[str, ...] = ()):
    return resolve(get_method(method), task, VTAB, parse_sets(list(sets)), recipe)


def test_adapter_default_is_the_published_rows_budget():
    """One bottleneck-8 adapter after each MLP: 156,768 trainable on ViT-B/16 without the head."""
    spec = get_method("adapter")
    _, cfg, _ = _resolved("adapter", None, "shared")
    with torch.device("meta"):
        vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=100)
        counts = count_params(spec.build(vit, 100, cfg, None))
    assert counts["trainable_params"] - counts["head_params"] == 156_768
    assert spec.version == 2  # the default changed: old adapter records are never reused for it


@pytest.mark.parametrize("method,task,knobs,train", [
    ("fact", "dtd", {"variant": "tt", "rank": 8, "scale": 0.01}, {"lr": 1e-3, "weight_decay": 1e-4}),
    ("fact", "svhn", {"rank": 16, "scale": 100.0}, {}),
    ("fact", "clevr_dist", {"rank": 4, "scale": 10.0}, {}),
    ("fact_tk", "dtd", {"variant": "tk", "rank": 16, "scale": 0.01, "official_layout": True}, {}),
    ("fact_tk", "oxford_pet", {"rank": 16, "scale": 10.0}, {}),  # the authors' oxford_iiit_pet
    ("fact_tk", "cifar100", {"rank": 32, "scale": 0.1}, {}),  # the authors' cifar
    ("repadapter", "clevr_count", {"scale": 0.5, "sparse_lambda": 0.0}, {}),
    ("repadapter", "smallnorb_azi", {"scale": 10.0}, {}),
    ("ssf", "eurosat", {}, {"lr": 3e-3, "weight_decay": 5e-2, "drop_path": 0.2, "batch_size": 64}),
    ("ssf", "dtd", {}, {"lr": 5e-3, "weight_decay": 5e-5, "drop_path": 0.0, "min_lr": 1e-8}),
])
def test_official_recipe_gives_the_authors_settings(method, task, knobs, train):
    tcfg, _, resolved = _resolved(method, task)
    assert resolved["recipe"] == "official"
    for key, value in knobs.items():
        assert resolved["method"][key] == value, key
    for key, value in train.items():
        assert getattr(tcfg, key) == value, key
    assert resolved["method"]["backbone_train_mode"] is True  # the authors' backbone trains in train mode
    assert tcfg.schedule == "per_epoch"
    if method != "ssf":  # FacT and RepAdapter: drop-path 0.1, timm's warm-up from 1e-6 and floor 1e-5, fp32
        assert (tcfg.drop_path, tcfg.warmup_lr, tcfg.min_lr, tcfg.precision) == (0.1, 1e-6, 1e-5, "fp32")


@pytest.mark.parametrize("method", ["fact", "fact_tk", "repadapter", "ssf"])
def test_every_vtab_task_has_an_official_entry(method):
    tasks = [t.name for t in resolve_tasks("all", "vtab1k")]
    assert len(tasks) == 19
    missing = [t for t in tasks if method not in VTAB.recipes["official"].tasks.get(t, {})]
    assert not missing


@pytest.mark.parametrize("method", ["adaptformer", "lora", "adapter", "bitfit", "ln_tune"])
def test_methods_without_published_per_task_settings_stay_on_shared(method):
    assert _resolved(method, "dtd")[2]["recipe"] == "shared"


@pytest.mark.parametrize("method,before", [
    ("fact", {"variant": "tt", "rank": 8, "scale": 1.0, "dropout": 0.1}),
    ("repadapter", {"bottleneck": 8, "groups": 2, "scale": 1.0, "dropout": 0.1, "sparse_lambda": 0.0}),
    ("ssf", {"init_std": 0.02}),
])
def test_new_knobs_at_their_defaults_leave_the_record_and_run_id_as_before(method, before):
    """The knobs this change added are recorded only when set: the shared-recipe config (and so the run
    id) of these methods is exactly what it was before them."""
    assert _resolved(method, "dtd", "shared")[2]["method"] == before
    assert _resolved(method, "dtd", "shared", (f"{method}.backbone_train_mode=true",))[2]["method"] == {
        **before, "backbone_train_mode": True}


@pytest.mark.parametrize("method", ["fact", "repadapter", "ssf"])
def test_backbone_train_mode_lets_drop_path_act(method, make_tiny_vit):
    spec = get_method(method)
    for on in (False, True):
        _, cfg, _ = _resolved(method, None, "shared", (f"{method}.backbone_train_mode={on}",))
        model = spec.build(make_tiny_vit(5, drop_path_rate=0.5), 5, cfg, None).train()
        x = torch.randn(2, 3, 32, 32)
        torch.manual_seed(0)
        a = model(x)
        torch.manual_seed(1)
        b = model(x)
        assert model.vit.training is on
        if method == "ssf":  # no dropout of its own: only the backbone's drop-path can make two passes differ
            assert (not torch.equal(a, b)) is on


def test_inspect_official_fact_dtd_shows_the_authors_rank_and_scale(capsys):
    assert main(["inspect", "--recipe", "official", "--method", "fact", "--task", "dtd", "--suite", "vtab1k",
                 "--backbone", "vit_tiny_patch16_224", "--weights", "none", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["config"]["rank"], info["config"]["scale"]) == (8, 0.01)
