"""The weight-adapting methods (issue 13): parameter formulas, merging, train/eval modes, peft counts.

Formulas are written out here from the papers' / official codes' definitions, independently of
the plugins: D width, L depth, H MLP hidden width, C classes; the head (D*C + C) always trains.
"""

from __future__ import annotations

import pytest
import timm
import torch

from peftbench.adapt import Adaptation
from peftbench.config import build_dataclass
from peftbench.measure import count_params
from peftbench.method_api import split_output
from peftbench.registry import get_method

C = 5


def head(d: int, c: int) -> int:
    return d * c + c


def expected(method: str, knobs: dict, d: int, depth: int, hidden: int, c: int) -> int:
    """Trainable parameters of each method on a standard timm ViT (qkv bias, LayerNorms, class token)."""
    r = knobs.get("rank", knobs.get("bottleneck", 8))
    chunks = hidden // d
    per_block = {
        "bitfit": 3 * d + d + hidden + d + 2 * d,  # biases of qkv, proj, fc1, fc2, norm1, norm2
        "ln_tune": 4 * d,
        "lora": 2 * (r * d + d * r),  # q and v: A (r x D) and B (D x r)
        "adapter": (2 if knobs.get("placement", "pfeiffer") == "houlsby" else 1) * (d * r + r + r * d + d),
        "adaptformer": d * r + r + r * d + d,
        "ssf": 2 * (3 * d + d + hidden + d + d + d),  # after qkv, proj, fc1, fc2, norm1, norm2
        "repadapter": 2 * (d * r + r + d * (r // 2) + d),  # two adapters: dense A, grouped B (2 groups)
        "fact_tt": (3 + 1 + chunks + chunks) * r * r,  # one r x r core per D x D piece
        "fact_tk": 0,
    }
    extra = {  # outside the blocks: patch embedding, final norm, shared factors
        "bitfit": d + d, "ln_tune": 2 * d, "ssf": 2 * d + 2 * d,
        "fact_tt": 2 * d * r, "fact_tk": 2 * d * r + r ** 3 + r * depth * (3 + 1 + 2 * chunks),
    }
    return depth * per_block.get(method, 0) + extra.get(method, 0) + head(d, c)


CASES = [("bitfit", {}), ("ln_tune", {}), ("lora", {}), ("lora", {"rank": 4}), ("adapter", {}),
         ("adapter", {"placement": "houlsby", "bottleneck": 4}), ("adaptformer", {}), ("ssf", {}),
         ("repadapter", {}), ("fact", {}), ("fact", {"variant": "tk", "rank": 4})]


def _key(method: str, knobs: dict) -> str:
    return f"fact_{knobs.get('variant', 'tt')}" if method == "fact" else method


def _build(make_vit, method: str, knobs: dict | None = None, vit=None, num_classes: int = C):
    spec = get_method(method)
    cfg = build_dataclass(spec.config_cls, knobs or {}, method)
    torch.manual_seed(0)
    return spec.build(vit if vit is not None else make_vit(num_classes), num_classes, cfg, None)


@pytest.mark.parametrize("method,knobs", CASES, ids=[f"{m}-{k}" for m, k in CASES])
def test_trainable_count_formula_tiny_vit(make_tiny_vit, method, knobs):
    model = _build(make_tiny_vit, method, knobs)
    assert count_params(model)["trainable_params"] == expected(_key(method, knobs), knobs, 32, 2, 64, C)


# ViT-B/16, 100 classes (what `peftbench inspect --num-classes 100` prints); built on the meta device
VIT_B16 = {"bitfit": 179_812, "ln_tune": 115_300, "lora": 371_812, "adapter": 233_668, "adaptformer": 233_668,
           "ssf": 282_724, "repadapter": 316_708, "fact": 98_404}


@pytest.mark.parametrize("method", sorted(VIT_B16))
def test_trainable_count_vit_b16(make_tiny_vit, method):
    with torch.device("meta"):
        vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=100)
        got = count_params(_build(make_tiny_vit, method, vit=vit, num_classes=100))["trainable_params"]
    assert got == VIT_B16[method] == expected(_key(method, {}), {}, 768, 12, 3072, 100)


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Trained-looking weights: a fresh build's adaptation is (almost) the identity."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


MERGEABLE = [("lora", {}), ("lora", {"targets": "q,k,v"}), ("ssf", {}), ("repadapter", {}), ("fact", {}),
             ("fact", {"variant": "tk", "rank": 4}), ("peft_lora", {}), ("peft_dora", {}), ("peft_ia3", {}),
             ("peft_oft", {}), ("peft_boft", {}), ("peft_vera", {"r": 16}), ("peft_ln", {})]


@pytest.mark.parametrize("method,knobs", MERGEABLE, ids=[f"{m}-{k}" for m, k in MERGEABLE])
def test_merged_model_gives_the_same_logits(make_tiny_vit, method, knobs):
    torch.manual_seed(1)
    x = torch.randn(3, 3, 32, 32)
    plain = make_tiny_vit(C).eval()(x)
    model = _perturbed(_build(make_tiny_vit, method, knobs))
    with torch.no_grad():
        logits = model(x)
        merged = model.merge()
        assert not any(isinstance(m, Adaptation) for m in merged.modules())
        assert isinstance(merged, timm.models.VisionTransformer)
        assert (logits - plain).abs().max() > 1e-2  # the adaptation does something, so merging matters
        torch.testing.assert_close(merged(x), logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(model(x), logits, atol=0, rtol=0)  # merging left the model untouched


@pytest.mark.parametrize("method", ["bitfit", "ln_tune", "adapter", "adaptformer"])
def test_no_merge_hook_where_nothing_to_fold(make_tiny_vit, method):
    assert not hasattr(_build(make_tiny_vit, method), "merge")


def test_lora_leaves_the_key_slice_alone(make_tiny_vit):
    model = _perturbed(_build(make_tiny_vit, "lora"))
    qkv = model.vit.blocks[0].attn.qkv
    delta = model.merge().blocks[0].attn.qkv.weight - qkv.base.weight
    d = qkv.base.in_features
    assert delta[:d].abs().max() > 0 and delta[2 * d:].abs().max() > 0
    assert torch.equal(delta[d:2 * d], torch.zeros_like(delta[d:2 * d]))


@pytest.mark.parametrize("method", ["adaptformer", "repadapter", "fact", "peft_lora"])
def test_adapter_dropout_acts_in_training_backbone_stays_in_eval(make_tiny_vit, method):
    model = _perturbed(_build(make_tiny_vit, method, {"lora_dropout": 0.5} if method == "peft_lora" else {}))
    model.train()
    assert not model.vit.blocks[0].training  # frozen backbone: eval mode (no drop-path), as VPT
    x = torch.randn(2, 3, 32, 32)
    logits = [split_output(model(x))[0] for _ in range(2)]
    assert not torch.equal(*logits)  # the method's own dropout (0.1 by default) acts
    model.eval()
    torch.testing.assert_close(model(x), model(x), atol=0, rtol=0)


PEFT = ["peft_lora", "peft_dora", "peft_ia3", "peft_oft", "peft_boft", "peft_vera", "peft_ln"]


@pytest.mark.parametrize("method", PEFT)
def test_peft_trainable_count_equals_peft_own(make_tiny_vit, method):
    model = _build(make_tiny_vit, method, {"r": 16} if method == "peft_vera" else {})
    trainable, _ = model.vit.get_nb_trainable_parameters()
    assert count_params(model)["trainable_params"] == trainable
    assert all(p.requires_grad for p in model.get_classifier().parameters())
    assert trainable > head(32, C)


def test_peft_knobs_reach_peft(make_tiny_vit):
    small, large = (_build(make_tiny_vit, "peft_lora", {"r": r}) for r in (2, 4))
    grow = count_params(large)["trainable_params"] - count_params(small)["trainable_params"]
    assert grow == 2 * 2 * (32 + 3 * 32)  # 2 blocks, 2 more ranks of A (r x D) and B (3D x r) on qkv


def test_record_says_merged_and_measures_the_merged_model(vtab_root, tmp_path):
    from peftbench.cli import main
    from peftbench.records import load_records

    out = tmp_path / "runs"
    assert main(["run", "--suite", "vtab1k", "--backbone", "vit_tiny_patch16_224", "--weights", "none",
                 "--img-size", "32", "--set", "epochs=1", "--set", "warmup_epochs=0", "--set", "bench_steps=1",
                 "--set", "bench_warmup=0", "--no-report", "--methods", "linear,lora,adapter", "--tasks", "eurosat",
                 "--data-root", str(vtab_root), "--out", str(out)]) == 0
    metrics = {r["method"]: r["metrics"] for r in load_records(out)[0]}
    assert metrics["lora"]["merged"] is True and metrics["adapter"]["merged"] is False
    assert metrics["lora"]["gflops"] == pytest.approx(metrics["linear"]["gflops"])  # folded: the backbone's cost
    assert metrics["adapter"]["gflops"] > metrics["linear"]["gflops"]
    assert metrics["lora"]["infer_img_per_s"] > 0


# ---- the official codes' equations, written out with the plugins' weights (eval mode) -----------

def test_adaptformer_block_matches_official_equations(make_tiny_vit):
    model = _perturbed(_build(make_tiny_vit, "adaptformer"))
    blk, x = model.vit.blocks[0], torch.randn(2, 17, 32)
    wrap = blk.mlp  # official: x = x + attn(norm1(x)); x = x + mlp(norm2(x)) + s * up(relu(down(x)))
    x1 = x + blk.attn(blk.norm1(x))
    adapter = wrap.adapter
    official = x1 + wrap.mlp(wrap.norm(x1)) + 0.1 * adapter.up(torch.relu(adapter.down(x1)))
    torch.testing.assert_close(blk(x), official)


def test_repadapter_matches_official_grouped_conv(make_tiny_vit):
    model = _perturbed(_build(make_tiny_vit, "repadapter"))
    wrap, z = model.vit.blocks[1].mlp.fc1, torch.randn(2, 17, 32)
    groups, r = 2, wrap.down.out_features
    conv_a = torch.nn.Conv1d(32, r, 1)
    conv_b = torch.nn.Conv1d(r, 32, 1, groups=groups)
    with torch.no_grad():
        conv_a.weight.copy_(wrap.down.weight[:, :, None])
        conv_a.bias.copy_(wrap.down.bias)
        conv_b.weight.copy_(wrap.up_weight.reshape(32, r // groups, 1))
        conv_b.bias.copy_(wrap.up_bias)
        adapted = (conv_b(conv_a(z.transpose(1, 2))) * 1.0 + z.transpose(1, 2)).transpose(1, 2)
        torch.testing.assert_close(wrap(z), wrap.base(adapted))


def test_fact_tt_matches_official_equations(make_tiny_vit):
    model = _perturbed(_build(make_tiny_vit, "fact", {"scale": 0.5}))
    f, blk, s = model.fact, model.vit.blocks[1], 0.5
    cores = f.cores[8:16]  # block 1 starts after block 0's 3 (qkv) + 1 (proj) + 2 (fc1) + 2 (fc2) cores
    u, v = (lambda t: t @ f.u.t()), (lambda t: t @ f.v.t())
    x, h = torch.randn(2, 17, 32), torch.randn(2, 17, 64)
    with torch.no_grad():
        q, k, vv = (v(u(x) @ cores[i].t()) for i in range(3))  # official q_FacTs, k_FacTs, v_FacTs
        torch.testing.assert_close(blk.attn.qkv(x), blk.attn.qkv.base(x) + torch.cat([q, k, vv], -1) * s)
        torch.testing.assert_close(blk.attn.proj(x), blk.attn.proj.base(x) + v(u(x) @ cores[3].t()) * s)
        fc1_facts = torch.cat([cores[4], cores[5]], 0)  # Linear(r, 2r): chunk j's rows
        delta = v((u(x) @ fc1_facts.t()).unflatten(-1, (2, -1))).flatten(-2)
        torch.testing.assert_close(blk.mlp.fc1(x), blk.mlp.fc1.base(x) + delta * s)
        fc2_facts = torch.cat([cores[6], cores[7]], 1)  # Linear(2r, r): chunk j's columns
        delta = v(u(h.unflatten(-1, (2, -1))).flatten(-2) @ fc2_facts.t())
        torch.testing.assert_close(blk.mlp.fc2(h), blk.mlp.fc2.base(h) + delta * s)


def test_repadapter_sparsity_penalty_as_official(make_tiny_vit):
    model = _perturbed(_build(make_tiny_vit, "repadapter", {"sparse_lambda": 0.5, "dropout": 0.0})).train()
    wraps = [b.attn.qkv for b in model.vit.blocks] + [b.mlp.fc1 for b in model.vit.blocks]
    official = 0.5 * sum(torch.norm(w.up_weight, p=2) + torch.norm(w.up_bias, p=2) for w in wraps)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    torch.testing.assert_close(out.aux_loss, official)
    torch.testing.assert_close(model.eval()(x), out.logits)  # evaluation: the logits alone


def test_fact_tk_attention_matches_official_equations(make_tiny_vit):
    model = _perturbed(_build(make_tiny_vit, "fact", {"variant": "tk", "rank": 4, "scale": 0.5}))
    f, blk = model.fact, model.vit.blocks[1]
    mixed = f.core @ f.coef[:, 8:12]  # official FacTc @ FacTp[:, idx:idx + 4], idx = 8 after block 0
    u, v = (lambda t: t @ f.u.t()), (lambda t: t @ f.v.t())
    x = torch.randn(2, 17, 32)
    with torch.no_grad():
        q, k, vv = (v(u(x) @ mixed[:, :, i]) for i in range(3))
        torch.testing.assert_close(blk.attn.qkv(x), blk.attn.qkv.base(x) + torch.cat([q, k, vv], -1) * 0.5)
        torch.testing.assert_close(blk.attn.proj(x), blk.attn.proj.base(x) + v(u(x) @ mixed[:, :, 3]) * 0.5)


def test_listing_methods_does_not_import_peft():
    """peft imports transformers (seconds): only building a peft_* method may pay for it."""
    import subprocess
    import sys

    code = ("import sys; from peftbench.cli import main; rc = main(['methods']); "
            "print('rc', rc, 'heavy', sorted(m for m in ('peft', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "rc 0 heavy []", out.stdout + out.stderr
    assert "peft_lora" in out.stdout and "fact.variant" in out.stdout


def test_inspect_shows_merged_cost_and_peft_knobs_from_the_command_line(capsys):
    import json

    from peftbench.cli import main

    tiny = ["--backbone", "vit_tiny_patch16_224", "--weights", "none", "--img-size", "32", "--num-classes", "5"]
    assert main(["inspect", "--method", "lora", *tiny]) == 0
    assert "(merged; " in capsys.readouterr().out
    assert main(["inspect", "--method", "peft_lora", "--set", "peft_lora.r=2", "--json", *tiny]) == 0
    info = json.loads(capsys.readouterr().out)
    d, depth = 192, 12  # vit_tiny: width 192, 12 blocks; LoRA on the fused qkv: A (r x D), B (3D x r)
    assert info["merged"] and info["trainable_params"] == depth * 2 * (d + 3 * d) + head(d, 5)
    assert info["gflops"] < info["gflops_unmerged"]


NEW = ["bitfit", "ln_tune", "lora", "adapter", "adaptformer", "ssf", "fact", "fact_tk", "repadapter", *PEFT]
NOT_SEARCHED = {"target_modules", "feedforward_modules", "use_dora",  # what to adapt: the method's identity
                "fact_tk.variant",  # fixed: fact_tk is FacT-TK
                # how the authors' code runs (--recipe official), not a tuning choice; unsearched, so the
                # tune grids of fact, repadapter and ssf stay what they were
                "backbone_train_mode", "official_layout"}


@pytest.mark.parametrize("method", NEW)
def test_every_knob_has_help_and_a_valid_search_space(method):
    import dataclasses

    spec = get_method(method)
    for f in dataclasses.fields(spec.config_cls):
        assert f.metadata.get("help"), f"{method}.{f.name} has no help text"
        if f.name in NOT_SEARCHED or f"{method}.{f.name}" in NOT_SEARCHED:
            continue
        assert f.metadata.get("search"), f"{method}.{f.name} has no search list for `peftbench tune`"
        for value in f.metadata["search"]:
            build_dataclass(spec.config_cls, {f.name: value}, method)  # every value is a valid setting


@pytest.mark.parametrize("sets,match", [
    (["--set", "peft_lora.r=0"], "peft_lora.r=0: must be at least 1"),
    (["--set", "peft_boft.boft_block_size=7"], "peft_boft: peft rejected the configuration: in_features (192) must "
                                               "be divisible by boft_block_size (7)!"),
    (["--set", "peft_lora.target_modules=nothing"], "peft_lora.target_modules=nothing: no module"),
    (["--set", "lora.targets=q,x"], "lora.targets=q,x: give distinct slices among q, k, v"),
])
def test_bad_method_settings_one_clear_error(capsys, sets, match):
    from peftbench.cli import main

    method = sets[1].split(".")[0]
    code = main(["inspect", "--method", method, "--backbone", "vit_tiny_patch16_224", "--weights", "none",
                 "--img-size", "32", "--num-classes", "5", *sets])
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.startswith("error: ") and match in err and "Traceback" not in err, err


def test_peft_methods_form_the_peft_family():
    from peftbench.registry import expand_methods

    assert expand_methods(["peft"]) == sorted(PEFT)


def test_repadapter_trains_its_adapters_by_default(make_tiny_vit):
    """The official experiment scripts run with sparse_lambda=0. With the parser's default of 1 the penalty
    held every up-projection at zero and RepAdapter reproduced the linear probe exactly on the mini suite."""
    from peftbench.methods.repadapter import RepAdapterConfig

    assert RepAdapterConfig().sparse_lambda == 0.0
    model = _build(make_tiny_vit, "repadapter", {}).train()
    out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor)  # no auxiliary loss unless asked for
