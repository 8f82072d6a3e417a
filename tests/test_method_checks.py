"""Method knobs that cannot work are refused before the first run, for every registered method (peft's
included), with one line; values peft adjusts silently are recorded as the values used, and no search
space offers a value that peft would replace."""

from __future__ import annotations

import dataclasses
import typing
import warnings

import pytest
import timm
import torch

import peftbench.models  # noqa: F401  (registers the mini ViT with timm)
from peftbench.backbone import load_backbone
from peftbench.checks import backbone_modules, method_problems
from peftbench.cli import main
from peftbench.config import Suite, resolve
from peftbench.errors import UsageError
from peftbench.method_api import BuildContext, RunFacts
from peftbench.records import load_records
from peftbench.registry import available_methods, get_method

RUN = ["run", "--suite", "vtab1k", "--backbone", "vit_tiny_patch16_224", "--weights", "none", "--img-size", "32",
       "--set", "epochs=1", "--set", "warmup_epochs=0", "--set", "bench_steps=0", "--no-report"]


@pytest.fixture(scope="module")
def mini():
    """The mini suite's backbone (width 96, depth 6), random weights, and the facts a sweep would check."""
    bb = load_backbone("vit_mini_patch8_32", "none")
    g = bb.geometry
    facts = RunFacts(task="t", num_classes=5, train_size=800, img_size=bb.preprocess.img_size,
                     image_tokens=g["image_tokens"], prefix_tokens=g["prefix_tokens"], depth=g["depth"], epochs=3,
                     width=g["width"], modules=backbone_modules(bb))
    return bb, facts


def _int_knobs() -> list[tuple[str, str]]:
    out = []
    for name in available_methods():
        cls = get_method(name).config_cls
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            inner = [a for a in typing.get_args(tp) if a is not type(None)]
            if tp is int or int in inner or any(typing.get_args(a)[:1] == (int,) for a in inner) or \
                    typing.get_args(tp)[:1] == (int,):
                out.append((name, f.name))
    return out


def _preflight(method: str, sets: dict, facts: RunFacts):
    """What a sweep does before its first run: resolve the settings, then ask the method's check."""
    spec = get_method(method)
    try:
        _, mcfg, _ = resolve(spec, None, Suite(name="s"), [(method, k, v) for k, v in sets.items()])
    except UsageError as exc:
        return [str(exc)], None
    return method_problems(f"{method}/t", mcfg, facts), mcfg


def test_int_knobs_cover_the_peft_family():
    methods = {m for m, _ in _int_knobs()}
    assert {"peft_lora", "peft_dora", "peft_oft", "peft_boft", "peft_vera", "lora", "ship", "vpt_deep"} <= methods


@pytest.mark.parametrize("value", [-1, 0, 7])
def test_every_int_knob_is_refused_up_front_or_builds(mini, value):
    """-1 is refused for every int knob of every method; any value the pre-flight lets through builds and
    gives logits of the right shape (a value it does not refuse never fails later, mid-sweep)."""
    bb, facts = mini
    let_through = []
    for method, knob in _int_knobs():
        problems, mcfg = _preflight(method, {knob: value}, facts)
        if problems:
            assert all("\n" not in p for p in problems), problems
            continue
        assert value != -1, f"{method}.{knob}=-1 was not refused before the run"
        vit = bb.instantiate(5)
        model = get_method(method).build(vit, 5, mcfg, BuildContext(preprocess=bb.preprocess,
                                                                    device=torch.device("cpu")))
        with torch.no_grad():
            assert model.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 5), (method, knob, value)
        let_through.append(f"{method}.{knob}")
    assert value == -1 or let_through  # the loop did build something


@pytest.mark.parametrize("method, sets, message", [
    ("peft_lora", {"r": 0}, "peft_lora.r=0: must be at least 1"),
    ("peft_vera", {"r": 0}, "peft_vera.r=0: must be at least 1"),
    ("peft_oft", {"oft_block_size": -4}, "peft_oft.oft_block_size=-4: must be at least 1"),
    ("peft_boft", {"boft_n_butterfly_factor": 0}, "peft_boft.boft_n_butterfly_factor=0: must be at least 1"),
    ("peft_lora", {"lora_dropout": 1.0}, "peft_lora.lora_dropout=1.0: must be in [0, 1)"),
    ("peft_boft", {"boft_block_size": 7}, "in_features (96) must be divisible by boft_block_size (7)"),
    ("peft_ia3", {"target_modules": "nope"}, "peft_ia3.target_modules=nope: no module of the backbone"),
    ("peft_ln", {"target_modules": ""}, "peft_ln.target_modules: give at least one module name"),
    ("repadapter", {"bottleneck": 10, "groups": 5}, "repadapter.groups=5 must divide the width 96"),
    ("vpt_deep", {"deep_layers": [0, 6]}, "vpt_deep.deep_layers=(0, 6): block indices must be below 6"),
    ("ship", {"layers": [0, 6], "num_prototypes": 8}, "ship.layers=(0, 6): block indices must be below 6"),
])
def test_bad_knobs_are_refused_with_one_line(mini, method, sets, message):
    problems, _ = _preflight(method, sets, mini[1])
    assert len(problems) == 1 and message in problems[0] and "\n" not in problems[0], problems


def _fails(argv, capsys, match):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.startswith("error: ") and match in err, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("sets, match", [
    ("peft_lora.r=0", "peft_lora.r=0: must be at least 1"),
    ("peft_boft.boft_block_size=7", "peft_boft/eurosat: peft_boft: peft rejected the configuration: in_features "
                                    "(192) must be divisible by boft_block_size (7)!"),
])
def test_sweep_refuses_bad_peft_knob_before_training_anything(vtab_root, tmp_path, capsys, sets, match):
    out = tmp_path / "runs"
    _fails(RUN + ["--methods", "linear,peft_lora,peft_boft", "--tasks", "eurosat", "--set", sets,
                  "--data-root", str(vtab_root), "--out", str(out)], capsys, match)
    assert not list(out.rglob("*.json"))  # linear was not trained first


def test_inspect_refuses_bad_peft_knob_in_one_line(capsys):
    _fails(["inspect", "--method", "peft_vera", "--set", "peft_vera.r=0"], capsys, "peft_vera.r=0: must be at least 1")


# ---- values peft adjusts -------------------------------------------------------------------------


@pytest.mark.parametrize("method, knob, value, used", [
    ("peft_oft", "oft_block_size", 7, 6),  # the nearest divisor of the width 96
    ("peft_oft", "oft_block_size", 64, 48),
])
def test_adjusted_values_are_in_method_info_and_notices(mini, method, knob, value, used):
    bb, facts = mini
    problems, mcfg = _preflight(method, {knob: value}, facts)
    assert problems == []
    ctx = BuildContext(preprocess=bb.preprocess, device=torch.device("cpu"))
    get_method(method).build(bb.instantiate(5), 5, mcfg, ctx)
    assert ctx.info["adjusted"] == {knob: {"set": value, "used": used}}
    assert ctx.notices == [f"{method}.{knob}={value}: peft used {used} instead (it adjusts values that the targeted "
                           "layers' widths or its available kernels do not allow)"]


def test_boft_butterfly_factor_without_cuda_extension_is_recorded_as_1(mini):
    from peft.tuners.boft import layer as boft_layer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft says it failed to build its CUDA kernel: what this test is about
        extension = boft_layer.get_fbd_cuda()
    if extension is not None:
        pytest.skip("peft's BOFT CUDA extension is available here: it uses the factor as set")
    bb, facts = mini
    _, mcfg = _preflight("peft_boft", {"boft_n_butterfly_factor": 2}, facts)
    ctx = BuildContext(preprocess=bb.preprocess, device=torch.device("cpu"))
    get_method("peft_boft").build(bb.instantiate(5), 5, mcfg, ctx)
    assert ctx.info["adjusted"] == {"boft_n_butterfly_factor": {"set": 2, "used": 1}}


def test_default_settings_record_no_adjustment(mini):
    bb, _ = mini
    for method in ("peft_oft", "peft_boft", "peft_lora", "peft_vera"):
        ctx = BuildContext(preprocess=bb.preprocess, device=torch.device("cpu"))
        get_method(method).build(bb.instantiate(5), 5, get_method(method).config_cls(), ctx)
        assert "adjusted" not in ctx.info and ctx.notices == [], method


def test_run_record_holds_the_value_used(vtab_root, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(RUN + ["--methods", "peft_oft", "--tasks", "eurosat", "--set", "peft_oft.oft_block_size=7",
                       "--data-root", str(vtab_root), "--out", str(out)]) == 0
    (record,) = load_records(out)[0]
    assert record["status"] == "complete"
    assert record["config"]["method"]["oft_block_size"] == 7  # what was asked (the run id's input)
    assert record["method_info"]["adjusted"] == {"oft_block_size": {"set": 7, "used": 6}}  # width 192
    assert any("peft used 6" in n for n in record["notices"])


def _vit_b_modules() -> tuple[tuple[str, tuple[int, ...]], ...]:
    with torch.device("meta"):
        vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    return tuple((k[:-7], tuple(v.shape)) for k, v in vit.state_dict().items() if k.endswith(".weight"))


def test_search_spaces_offer_only_values_peft_uses_as_given(mini):
    """On the mini backbone (width 96) and ViT-B (768), every searched value of every peft method is used
    as set: no trial silently runs another trial's configuration."""
    from peftbench.methods.hf_peft import dry_run

    shapes = {"mini": mini[1].modules, "vit_b": _vit_b_modules()}
    checked = 0
    for method in available_methods():
        spec = get_method(method)
        if spec.family != "peft":
            continue
        cls = spec.config_cls
        for knob, values in spec.search_space().items():
            for value in values:
                cfg = cls(**{knob: value})
                for backbone, modules in shapes.items():
                    problems, adjusted = dry_run(method, cls.PEFT_CLASS, cfg, modules)
                    assert problems == [] and adjusted == {}, (method, knob, value, backbone, problems, adjusted)
                    checked += 1
    assert checked > 40


def test_facts_of_a_sweep_carry_the_backbone_modules(mini):
    facts = mini[1]
    shapes = dict(facts.modules)
    assert facts.width == 96 and shapes["blocks.0.attn.qkv"] == (288, 96) and shapes["blocks.0.mlp.fc2"] == (96, 384)
    assert not any(path.startswith("head") for path in shapes)
