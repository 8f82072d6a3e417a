"""SHIP: official layer grouping and parameter counts, FLOPs, decoupled attention, matching loss,
ablation switches, what trains, register tokens and image sizes, and the data-dependent preparation."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from peftbench.config import build_dataclass, load_suite_file, resolve
from peftbench.data.images import Batches, SplitData
from peftbench.errors import DataError, UsageError
from peftbench.measure import count_params, inference_gflops
from peftbench.method_api import BuildContext, MethodOutput
from peftbench.methods import ship
from peftbench.methods.ship import ShipConfig, build_ship, group_layers, layer_affinity, ship_block
from peftbench.registry import get_method

OFFICIAL = Path(__file__).parent / "data" / "ship_official"
AFFINITY = ship.PUBLISHED_AFFINITY  # the official matrices, stored once: as package data
ROWS = list(csv.DictReader((OFFICIAL / "hparams.csv").open()))
NUM_CLASSES = 5
WIDTH = 32


def ctx(**kw) -> BuildContext:
    return BuildContext(preprocess=None, device=torch.device("cpu"), **kw)


@pytest.fixture
def tiny_vit(make_tiny_vit):
    """The shared tiny ViT (width WIDTH), 4 blocks deep by default: SHIP's groups here start at blocks 0, 1, 3."""
    return lambda depth=4, **kw: make_tiny_vit(NUM_CLASSES, depth=depth, **kw)


def images(size: int = 32, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def bank_file(tmp_path: Path) -> str:
    path = tmp_path / "bank.npy"
    np.save(path, np.random.default_rng(0).standard_normal((16, WIDTH)).astype(np.float32))
    return str(path)


def tiny_ship(make_vit, bank_file: str, vit: torch.nn.Module | None = None, **knobs) -> torch.nn.Module:
    knobs = {"layers": (0, 1, 3), "prompt_length": 3, "prototypes": bank_file, "matching_warmup": 0, **knobs}
    if knobs.get("hierarchy") is False:
        knobs.pop("layers")
    torch.manual_seed(0)
    return build_ship(vit if vit is not None else make_vit(), NUM_CLASSES, ShipConfig(**knobs), ctx())


# ---- the official products: grouping, counts, FLOPs ------------------------------------------

@pytest.mark.parametrize("row", ROWS, ids=[r["task"] for r in ROWS])
def test_grouping_reproduces_official_layers(row):
    affinity = np.load(AFFINITY / f"{row['task']}.npy")
    assert group_layers(affinity, float(row["share_threshold"])) == [int(i) for i in row["prompt_layers"].split()]


def test_end_layer_drops_later_groups():
    affinity = np.load(AFFINITY / "cifar100.npy")
    assert group_layers(affinity, 0.93, end_layer=8) == [0, 2, 4, 6]


@pytest.fixture(scope="module")
def vit_b16():
    """ViT-B/16 on the meta device: shapes without weights, so counts and FLOPs cost nothing."""
    with torch.device("meta"):
        return timm.create_model("vit_base_patch16_224.orig_in21k", pretrained=False, num_classes=100)


def official_build(vit, row: dict, context: BuildContext | None = None) -> torch.nn.Module:
    with torch.device("meta"):
        vit.reset_classifier(int(row["num_classes"]))
    cfg = build_dataclass(ShipConfig, {"layers": row["prompt_layers"], "prompt_length": row["prompt_length_K"]},
                          "test")
    return build_ship(vit, int(row["num_classes"]), cfg, context or ctx())


@pytest.mark.parametrize("row", ROWS, ids=[r["task"] for r in ROWS])
def test_trainable_params_match_the_shipped_architecture(vit_b16, row):
    counts = count_params(official_build(vit_b16, row))
    assert counts["trainable_params"] == int(row["trainable_params_shipped_code"])
    assert counts["head_params"] == 769 * int(row["num_classes"])


def ship_gflops_analytic(layers: list[int], attr_blocks: list[int], depth: int = 12, width: int = 768,
                         image_tokens: int = 197, patch_pixels: int = 3 * 16 * 16, k: int = 50, shared: int = 10,
                         attr: int = 10, bank: int = 200, classes: int = 100) -> float:
    """SHIP's inference GFLOPs (2 x multiply-accumulates of every matrix product), by hand.

    Per block, with P prompt tokens after the n image tokens: image queries only (prompts pass their
    input on) except in the last block, keys and values for all tokens, image queries over image and
    over prompt keys, the output projection and the 4x MLP for all tokens. Blocks feeding an
    attribute block also score the class token against the image keys; attribute blocks match ``attr``
    tokens to the prototype bank and mix the bank back in.
    """
    d, n = width, image_tokens
    macs = (n - 1) * d * patch_pixels + d * classes  # patch embedding, classifier
    prompts = 0
    for i in range(depth):
        if i in layers:
            prompts = k + shared + (attr if i in attr_blocks else 0)
            macs += 2 * attr * bank * d if i in attr_blocks else 0
        t, last = n + prompts, i == depth - 1
        macs += (t if last else n) * d * d + t * 2 * d * d  # query, key and value projections
        macs += 2 * n * n * d + 2 * n * prompts * d  # image queries: QK^T and AV over image, then prompt keys
        macs += 2 * prompts * t * d if last else 0  # the last block's prompt queries over all keys
        macs += n * d if i + 1 in attr_blocks else 0  # class-token attention logits
        macs += t * d * d + t * 8 * d * d  # output projection, MLP
    return 2 * macs / 1e9


def test_cifar100_gflops_and_placeholder_bank(vit_b16):
    context = ctx()
    model = official_build(vit_b16, next(r for r in ROWS if r["task"] == "cifar100"), context)
    assert count_params(model)["trainable_params"] == 330_340
    expected = ship_gflops_analytic(layers=[0, 2, 4, 6, 8, 11], attr_blocks=[8, 11])
    assert expected == pytest.approx(45.6, abs=0.01)
    assert inference_gflops(model, (224, 224), device="meta") == pytest.approx(expected, rel=1e-6)
    assert "prototypes" in dict(model.named_buffers())
    assert not any("prototypes" in name for name, _ in model.named_parameters())
    assert model.prototypes.shape == (200, 768)
    assert any("placeholder" in note for note in context.notices)
    assert context.info["layers"] == [0, 2, 4, 6, 8, 11] and context.info["layers_source"] == "explicit"


def test_official_affinity_file_groups_a_twelve_block_vit(tiny_vit, tmp_path):
    context = ctx()
    affinity = str(AFFINITY / "cifar100.npy")
    model = build_ship(tiny_vit(depth=12), NUM_CLASSES, ShipConfig(affinity=affinity, share_threshold=0.93), context)
    assert sorted(model.slot) == context.info["layers"] == [0, 2, 4, 6, 8, 11]
    assert context.info["layers_source"] == f"file {affinity}" and context.info["share_threshold"] == 0.93
    with pytest.raises(UsageError, match="expected 4 x 4"):
        build_ship(tiny_vit(), NUM_CLASSES, ShipConfig(affinity=affinity), ctx())


def test_without_layers_or_data_every_block_is_counted_with_a_note(tiny_vit):
    """No training images and no published grouping (peftbench inspect without --task): the most
    prompts SHIP can select, said in a note, instead of an error (issue 17)."""
    context = ctx()
    build_ship(tiny_vit(), NUM_CLASSES, ShipConfig(), context)
    assert context.info["layers"] == [0, 1, 2, 3] and context.info["layers_source"].startswith("every block")
    assert any("every block of 4 is counted as prompted" in note for note in context.notices)


@pytest.mark.parametrize("knobs, match", [({"layers": "1,2"}, "including 0"), ({"prompt_length": 0}, "at least 1"),
                                          ({"layers": "0,2", "hierarchy": False}, "contradict"),
                                          ({"scale": 1.5}, r"\[0, 1\]")])
def test_config_validation(knobs, match):
    with pytest.raises(UsageError, match=match):
        build_dataclass(ShipConfig, knobs, "method 'ship'")


def test_layers_beyond_the_depth_are_refused(tiny_vit, bank_file):
    with pytest.raises(UsageError, match="below 4"):
        tiny_ship(tiny_vit, bank_file, layers=(0, 7))


# ---- attention and forward ------------------------------------------------------------------

def reference_block(block, x, n, s, last):
    """SHIP's block written out with explicit soft-maxes over the full logits matrix."""
    attn, h = block.attn, block.norm1(x)
    b, t, d = h.shape
    q, k, v = attn.qkv(h).reshape(b, t, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = q @ k.transpose(-2, -1) * attn.scale
    image = ((1 - s) * logits[:, :, :n, :n].softmax(-1) @ v[:, :, :n]
             + s * logits[:, :, :n, n:].softmax(-1) @ v[:, :, n:]).transpose(1, 2).reshape(b, n, d)
    if last:
        prompts = (logits[:, :, n:].softmax(-1) @ v).transpose(1, 2).reshape(b, t - n, d)
    else:
        prompts = h[:, n:]
    x = x + attn.proj(torch.cat([image, prompts], dim=1))
    x = x + block.mlp(block.norm2(x))
    return x, logits[:, :, 0, :n].mean(1)


@pytest.mark.parametrize("last", [False, True])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_decoupled_attention_equals_explicit_softmaxes(tiny_vit, last, qk_norm):
    block = tiny_vit(qk_norm=qk_norm).blocks[0].eval()
    if qk_norm:
        for norm in (block.attn.q_norm, block.attn.k_norm):
            torch.nn.init.normal_(norm.weight, 1.0, 0.3)
    x = torch.randn(2, 17 + 13, WIDTH, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got, got_logits = ship_block(block, x, 17, scale=0.1, last=last, want_logits=True)
        want, want_logits = reference_block(block, x, 17, 0.1, last)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_logits, want_logits, atol=1e-5, rtol=1e-5)


def test_only_the_last_blocks_prompt_queries_attend(tiny_vit):
    block = tiny_vit().blocks[0].eval()
    x = torch.randn(2, 17 + 13, WIDTH, generator=torch.Generator().manual_seed(2))
    moved = x.clone()
    moved[:, 3:17] = torch.randn(2, 14, WIDTH)  # other image tokens
    with torch.no_grad():
        for last, sees in ((False, False), (True, True)):
            before, after = ship_block(block, x, 17, last=last)[0], ship_block(block, moved, 17, last=last)[0]
            assert torch.allclose(before[:, 17:], after[:, 17:]) is not sees
        joint = ship_block(block, x, 17, decoupled=False)[0]
        assert torch.allclose(joint, block(x), atol=1e-6)  # decoupling off = the block's own attention


def test_token_layout_per_block(tiny_vit, bank_file):
    model = tiny_ship(tiny_vit, bank_file).eval()  # groups start at 0, 1, 3; attribute prompts at 1 and 3
    lengths = []
    hooks = [b.norm1.register_forward_hook(lambda m, a, out: lengths.append(out.shape[1])) for b in model.vit.blocks]
    with torch.no_grad():
        model(images())
    for h in hooks:
        h.remove()
    n = 17
    assert lengths == [n + 3 + 10, n + 3 + 10 + 10, n + 3 + 10 + 10, n + 3 + 10 + 10]


def test_matching_loss_is_returned_by_the_training_forward_after_warmup(tiny_vit, bank_file):
    model = tiny_ship(tiny_vit, bank_file, matching_warmup=2).train()
    model.on_epoch_start(1, 5)
    out = model(images())
    assert isinstance(out, MethodOutput)
    assert torch.equal(out.aux_loss, torch.zeros(2))  # computed at weight 0: one graph for every epoch
    model.on_epoch_start(2, 5)
    logits, loss = model(images())
    assert logits.shape == (2, NUM_CLASSES) and loss.shape == (2,) and (loss > 0).all() and loss.requires_grad
    model.eval()
    assert isinstance(model(images()), torch.Tensor)  # evaluation: the logits alone
    model.train()
    kept = model(images())  # the loss lives in the output, not on the module:
    copy.deepcopy(model)  # a model can be copied mid-training without a __getstate__ workaround
    assert kept.aux_loss is not None


ABLATIONS = {  # knob -> change of the trainable count (D = 32, K = 3, 4 blocks, groups at 0, 1, 3)
    "hierarchy": 1 * 3 * WIDTH,  # off: a fresh group at block 2 as well
    "shared_prompt": -10 * WIDTH,
    "attribute_prompts": -2 * 10 * WIDTH,
    "matching_loss": 0,
    "decoupled_attention": 0,
}


@pytest.mark.parametrize("knob", list(ABLATIONS))
def test_each_ablation_switch(tiny_vit, bank_file, knob):
    full, ablated = tiny_ship(tiny_vit, bank_file), tiny_ship(tiny_vit, bank_file, **{knob: False})
    assert count_params(ablated)["trainable_params"] - count_params(full)["trainable_params"] == ABLATIONS[knob]
    shared = {k: v for k, v in full.state_dict().items() if ablated.state_dict().get(k, v).shape == v.shape}
    ablated.load_state_dict(shared, strict=False)
    full.train()
    ablated.train()
    x = images()
    if knob == "matching_loss":
        assert full(x).aux_loss is not None and ablated(x).aux_loss is None
    else:
        with torch.no_grad():
            assert not torch.allclose(full.eval()(x), ablated.eval()(x))
    if knob == "attribute_prompts":
        assert ablated.prototypes is None


def test_prompts_and_head_train_and_nothing_else(tiny_vit, bank_file):
    model = tiny_ship(tiny_vit, bank_file).train()
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    logits, aux = model(images())
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])) + aux.mean()
    loss.backward()
    opt.step()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == {"semantic", "shared", "attribute", "vit.head.weight", "vit.head.bias"}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    for name, value in model.state_dict().items():
        assert torch.equal(value, frozen[name]) is (name not in trainable), name


def test_backbone_runs_in_train_mode_like_the_official_code(tiny_vit, bank_file):
    assert tiny_ship(tiny_vit, bank_file).train().vit.training
    assert not tiny_ship(tiny_vit, bank_file, backbone_train_mode=False).train().vit.training


def test_register_tokens_and_two_image_sizes(tiny_vit, bank_file):
    vit = tiny_vit(reg_tokens=4, dynamic_img_size=True)
    model = tiny_ship(tiny_vit, bank_file, vit=vit).train()
    for size in (32, 48):
        logits, aux = model(images(size))
        assert logits.shape == (2, NUM_CLASSES) and (aux > 0).all()
    scores = model._candidate_logits(torch.zeros(2, 21))
    assert torch.isinf(scores[:, 1:5]).all() and torch.isfinite(scores[:, [0, *range(5, 21)]]).all()
    with pytest.raises(UsageError, match="image tokens"):
        model(images(16))  # 4 patches + class token: fewer than the 10 most attended tokens


# ---- data-dependent preparation ---------------------------------------------------------------

def synthetic_batches(n: int) -> Batches:
    rng = np.random.default_rng(0)
    data = SplitData(images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), labels=np.arange(n) % NUM_CLASSES,
                     checksum=f"synthetic-{n}")
    return Batches(data, (32, 32), (0.5,) * 3, (0.5,) * 3, "bicubic", torch.device("cpu"))


def test_layer_affinity_is_the_mean_per_image_cosine_matrix():
    feats = np.random.default_rng(0).standard_normal((4, 5, 8)).astype(np.float32)
    per_image = []
    for i in range(5):
        unit = feats[:, i] / np.linalg.norm(feats[:, i], axis=-1, keepdims=True)
        per_image.append(unit @ unit.T)
    np.testing.assert_allclose(layer_affinity(feats), np.mean(per_image, axis=0), atol=1e-6)


def test_preparation_selects_layers_clusters_and_caches(tiny_vit, tmp_path, monkeypatch):
    batches, cfg = synthetic_batches(40), ShipConfig(num_prototypes=8, prompt_length=2)
    first = ctx(train_batches=batches, cache_dir=tmp_path, backbone_checksum="tiny-vit")
    model = build_ship(tiny_vit(), NUM_CLASSES, cfg, first)
    cached = sorted((tmp_path / "ship").glob("*.npy"))
    assert len(cached) == 2
    affinity = np.load(next(p for p in cached if p.name.endswith("affinity.npy")))
    assert affinity.shape == (4, 4) and np.allclose(np.diag(affinity), 1) and np.allclose(affinity, affinity.T)
    assert first.info["layers"] == group_layers(affinity, cfg.share_threshold)
    assert first.info["layers_source"] == first.info["prototypes_source"] == "computed"
    assert first.info["share_threshold"] == cfg.share_threshold and first.info["prep_images"] == 40
    assert model.prototypes.shape == (8, WIDTH) and sorted(model.slot) == first.info["layers"]
    assert any(name.startswith("ship: layer affinity") for name in first.phase_times)

    monkeypatch.setattr(ship.preparation, "cls_features", lambda *a: pytest.fail("the cache was not used"))
    second = ctx(train_batches=batches, cache_dir=tmp_path, backbone_checksum="tiny-vit")
    again = build_ship(tiny_vit(), NUM_CLASSES, cfg, second)
    assert second.info["layers_source"] == second.info["prototypes_source"] == "cache"
    assert second.info["layers"] == first.info["layers"]
    assert torch.equal(again.prototypes, model.prototypes)


def test_too_few_images_for_the_prototypes_is_a_clear_error(tiny_vit):
    with pytest.raises(DataError, match=r"num_prototypes=200 training images, but the training split has 40"):
        build_ship(tiny_vit(), NUM_CLASSES, ShipConfig(), ctx(train_batches=synthetic_batches(40)))


def test_vtab1k_official_recipe_carries_the_official_per_task_settings():
    suite = load_suite_file(Path(__file__).parents[1] / "peftbench" / "suites" / "vtab1k.yaml")
    for row in ROWS:
        tcfg, mcfg, resolved = resolve(get_method("ship"), row["task"], suite, [], recipe="official")
        assert resolved["recipe"] == "official"
        assert (tcfg.precision, tcfg.schedule, mcfg.matching_warmup) == ("fp32", "per_epoch", 0)
        assert (tcfg.lr, tcfg.weight_decay) == (float(row["lr"]), float(row["weight_decay"])), row["task"]
        assert mcfg.share_threshold == float(row["share_threshold"])
        assert mcfg.prompt_length == int(row["prompt_length_K"])
        assert (tcfg.warmup_lr, tcfg.min_lr, tcfg.drop_path, tcfg.epochs, tcfg.batch_size) == (1e-6, 1e-5, 0.1, 100, 64)
