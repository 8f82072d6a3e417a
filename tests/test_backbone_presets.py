"""Backbone presets, name resolution (the AugReg trap), MoCo v3 checkpoints and backbone provenance in
records and in the report's comparability key."""

from __future__ import annotations

import hashlib
import json

import pytest
import timm
import torch

from peftbench import report
from peftbench.backbone import load_backbone
from peftbench.cli import main
from peftbench.errors import UsageError
from peftbench.models import MINI_VIT, mini_weights_path
from peftbench.presets import PRESETS, resolve_name
from peftbench.registry import get_method
from peftbench.sweep.plan import RunKey, run_id_of

ORIG, AUGREG = "vit_base_patch16_224.orig_in21k", "vit_base_patch16_224.augreg_in21k"
LEGACY = "vit_base_patch16_224_in21k"


def test_backbones_lists_the_presets_with_timm_facts(capsys):
    assert main(["backbones", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert list(rows) == [p.name for p in PRESETS]
    assert {ORIG, AUGREG, "vit_large_patch16_224.orig_in21k", "vit_base_patch16_224.mae",
            "vit_base_patch14_dinov2.lvd142m", "vit_base_patch16_clip_quickgelu_224.openai",
            "vit_base_patch16_mocov3.in1k"} <= set(rows)
    for name, row in rows.items():  # normalisation and pretrained size: timm's pretrained_cfg, not ours
        cfg = timm.models.get_pretrained_cfg(name)
        assert (row["mean"], row["std"]) == (list(cfg.mean), list(cfg.std)), name
        assert row["pretrained_img_size"] == list(cfg.input_size[1:]), name
    dino, clip = rows["vit_base_patch14_dinov2.lvd142m"], rows["vit_base_patch16_clip_quickgelu_224.openai"]
    assert dino["img_size"] == [224, 224] and dino["pretrained_img_size"] == [518, 518]
    assert clip["pre_norm"] and clip["act"] == "QuickGELU" and not rows[ORIG]["pre_norm"]
    assert rows["vit_base_patch14_reg4_dinov2.lvd142m"]["prefix_tokens"] == 5 and rows[ORIG]["prefix_tokens"] == 1
    assert main(["backbones"]) == 0 and "vit_base_patch16_mocov3.in1k" in capsys.readouterr().out


def test_legacy_name_warns_once_and_records_what_timm_built(capsys):
    bb = load_backbone(LEGACY, "none")
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: --backbone {LEGACY}: timm resolves this legacy name to {AUGREG}; the VTAB-1k "
                   f"literature used {ORIG}"]
    desc = bb.describe()
    assert (desc["name"], desc["timm_name"], desc["pretrained_tag"]) == (LEGACY, AUGREG, "augreg_in21k")
    assert desc["checkpoint_sha256"] is None  # random init: no file
    assert load_backbone(ORIG, "none").describe()["timm_name"] == ORIG
    assert capsys.readouterr().err == ""  # the literature's name: no warning


@pytest.mark.parametrize("name,says", [
    ("vit_base_patch16_224", "no pretrained tag, so timm takes its default, vit_base_patch16_224.augreg2_in21k"),
    ("vit_base_patch16_clip_224.openai", "GELU, while OpenAI's CLIP was trained with QuickGELU"),
])
def test_ambiguous_names_warn(name, says):
    assert says in resolve_name(name).warning
    assert all(resolve_name(p.name).warning is None for p in PRESETS)


def test_dinov2_preset_runs_at_224_and_mocov3_needs_its_file():
    res = resolve_name("vit_base_patch14_dinov2.lvd142m")
    assert res.tag == "lvd142m" and res.warning is None
    with pytest.raises(UsageError, match="vit_base_patch16_mocov3.in1k: timm has no download for it; pass --weights"):
        load_backbone("vit_base_patch16_mocov3.in1k", "pretrained")


def _mocov3_checkpoint(path, sd: dict[str, torch.Tensor]) -> None:
    """A file in the authors' layout: their DDP-wrapped MoCo's state_dict (base and momentum encoders,
    each ViT with a projection MLP as ``head``, and a predictor), plus the training state."""
    state = {f"module.base_encoder.{k}": v.clone() for k, v in sd.items()}
    state |= {f"module.momentum_encoder.{k}": v + 1 for k, v in sd.items()}
    state |= {"module.base_encoder.head.0.weight": torch.randn(64, 96), "module.base_encoder.head.1.weight":
              torch.ones(64), "module.momentum_encoder.head.0.weight": torch.randn(64, 96),
              "module.predictor.0.weight": torch.randn(64, 64)}
    torch.save({"epoch": 300, "arch": "vit_base", "state_dict": state, "optimizer": {"state": {}, "param_groups": []},
                "scaler": {"scale": 1024.0}}, path)


def test_mocov3_checkpoint_keys_map_onto_timm(tmp_path):
    source = load_backbone(MINI_VIT, str(mini_weights_path()))
    path = tmp_path / "vit-mini-300ep.pth.tar"
    _mocov3_checkpoint(path, source.state_dict)
    bb = load_backbone(MINI_VIT, str(path))
    assert bb.state_dict.keys() == source.state_dict.keys()
    assert all(torch.equal(bb.state_dict[k], v) for k, v in source.state_dict.items())  # base encoder, not momentum
    assert bb.checksum == source.checksum
    assert bb.describe()["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # a file missing a block's weights is refused with the keys named
    broken = torch.load(path, weights_only=True)
    del broken["state_dict"]["module.base_encoder.blocks.0.attn.qkv.weight"]
    torch.save(broken, tmp_path / "broken.pth.tar")
    with pytest.raises(Exception, match="missing: blocks.0.attn.qkv.weight"):
        load_backbone(MINI_VIT, str(tmp_path / "broken.pth.tar"))


def test_run_ids_unchanged_for_existing_backbones():
    """The run id's inputs are what they were before backbone provenance was recorded (value from main)."""
    bb = load_backbone(MINI_VIT, str(mini_weights_path()))
    run_id = run_id_of(RunKey(get_method("linear"), "shapes", "mini", 0, {"train": {"lr": 0.1}}, "d" * 8, "fp32"), bb,
                       torch.device("cpu"))
    assert run_id == "759eded5a3654c68"


def _record(name: str, timm_name: str | None, acc: float, sha: str | None = "f" * 64, legacy: bool = False,
            seed: int = 0) -> dict:
    backbone = {"name": name, "weights": "pretrained", "checksum": f"tensors-of-{timm_name or name}",
                "img_size": [224, 224], "mean": [0.5] * 3, "std": [0.5] * 3}
    if not legacy:
        backbone |= {"timm_name": timm_name, "pretrained_tag": (timm_name or "").partition(".")[2],
                     "checkpoint_sha256": sha}
    return {"run_id": f"{name}-{acc}", "schema": 1, "status": "complete", "reason": None, "method": "linear",
            "task": "cifar100", "suite": "vtab1k", "seed": seed, "created": "2026-01-01T00:00:00Z",
            "config": {"train": {"protocol": "final", "epochs": 100, "precision": "bf16"}, "method": {}},
            "backbone": backbone, "data": {"checksum": "d"}, "metrics": {"test_top1": acc}, "provenance": {}}


def test_augreg_and_original_runs_never_share_a_table():
    recs = [_record(ORIG, ORIG, 60.0), _record(AUGREG, AUGREG, 70.0),
            _record(LEGACY, AUGREG, 71.0, sha="a" * 64),  # the legacy name: AugReg weights, another file
            _record(ORIG, None, 61.0, legacy=True, seed=1)]  # a record from before provenance: joins its match
    tables = report.summary_tables(recs, report.load_reference())
    by_backbone: dict[str, list[float]] = {}
    for t in tables:
        by_backbone.setdefault(t.setting.backbone, []).extend(
            v for r in t.rows for c in r.cells.values() for v in c.by_seed.values())
    assert sorted(by_backbone[ORIG]) == [60.0, 61.0]  # the old record sits with the original's
    assert 70.0 in by_backbone[AUGREG] and 60.0 not in by_backbone[AUGREG]
    assert sum(len(t.rows) for t in tables if t.setting.backbone == AUGREG) == 2  # two files: two tables
    legacy_table = next(t for t in tables if t.setting.checkpoint_sha256 == "a" * 64)
    assert "checkpoint file sha256" in legacy_table.differs_from_first
    orig_table = next(t for t in tables if t.setting.backbone == ORIG)
    assert orig_table.references  # the published rows' backbone: reference rows beside it
