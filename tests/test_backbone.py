from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from peftbench.backbone import load_backbone
from peftbench.errors import CheckpointError, UsageError
from peftbench.measure import count_params, inference_gflops
from peftbench.method_api import BuildContext
from peftbench.registry import get_method

TINY = "vit_tiny_patch16_224"


def _sd(**kw):
    return {k: v.clone() for k, v in load_backbone(TINY, "none", img_size=32, **kw).state_dict.items()}


def test_random_init_is_recorded_and_deterministic():
    a, b = load_backbone(TINY, "none", img_size=32), load_backbone(TINY, "none", img_size=32)
    assert a.weights == "none" and a.checksum == b.checksum
    assert a.preprocess.img_size == (32, 32) and a.preprocess.mean == (0.5, 0.5, 0.5)


def test_safetensors_and_pth_round_trip(tmp_path):
    sd = _sd(init_seed=7)
    save_file(sd, tmp_path / "w.safetensors")
    torch.save(sd, tmp_path / "w.pth")
    torch.save({"model": sd}, tmp_path / "wrapped.bin")
    ref = load_backbone(TINY, "none", img_size=32, init_seed=7).checksum
    for name in ("w.safetensors", "w.pth", "wrapped.bin"):
        bb = load_backbone(TINY, str(tmp_path / name), img_size=32)
        assert bb.checksum == ref and bb.weights.endswith(name)


def test_checkpoint_at_another_image_size_is_resampled(tmp_path):
    save_file(_sd(), tmp_path / "w.safetensors")
    bb = load_backbone(TINY, str(tmp_path / "w.safetensors"), img_size=48)
    assert bb.state_dict["pos_embed"].shape[1] == 1 + 9


def test_classifier_keys_are_ignored(tmp_path):
    sd = _sd(init_seed=3)
    save_file(sd, tmp_path / "plain.safetensors")
    sd["head.weight"], sd["head.bias"] = torch.zeros(1000, 192), torch.zeros(1000)
    save_file(sd, tmp_path / "w.safetensors")
    with_head = load_backbone(TINY, str(tmp_path / "w.safetensors"), img_size=32)
    assert with_head.checksum == load_backbone(TINY, str(tmp_path / "plain.safetensors"), img_size=32).checksum
    assert not [k for k in with_head.state_dict if k.startswith("head.")]
    head = with_head.instantiate(7).get_classifier()  # the task's classifier, freshly initialised
    assert head.weight.shape == (7, 192) and head.weight.abs().sum() > 0


def test_key_mismatch_lists_keys(tmp_path):
    sd = _sd()
    del sd["blocks.0.attn.qkv.weight"]
    sd["extra.weight"] = torch.zeros(3)
    save_file(sd, tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match=r"missing: blocks\.0\.attn\.qkv\.weight; unexpected: extra\.weight"):
        load_backbone(TINY, str(tmp_path / "w.safetensors"), img_size=32)


def test_unreadable_and_missing_checkpoints(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="bad.safetensors: unreadable checkpoint"):
        load_backbone(TINY, str(tmp_path / "bad.safetensors"), img_size=32)
    with pytest.raises(CheckpointError, match="no such file"):
        load_backbone(TINY, str(tmp_path / "nope.pth"), img_size=32)
    (tmp_path / "w.xyz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_backbone(TINY, str(tmp_path / "w.xyz"), img_size=32)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="bad.npz: not a .npz archive") as info:
        load_backbone(TINY, str(tmp_path / "bad.npz"), img_size=32)
    assert "pickle" not in str(info.value)  # numpy's guess for a non-zip file, misleading here


class _Payload:
    def __reduce__(self):
        return (print, ("payload ran",))


def test_pickled_payload_is_refused(tmp_path, capsys):
    with open(tmp_path / "evil.pth", "wb") as fh:
        pickle.dump({"x": _Payload()}, fh)
    with pytest.raises(CheckpointError, match="refused.*--trust-checkpoint"):
        load_backbone(TINY, str(tmp_path / "evil.pth"), img_size=32)
    assert "payload ran" not in capsys.readouterr().out


def test_unknown_backbone_is_a_usage_error():
    with pytest.raises(UsageError, match="--backbone vit_nope"):
        load_backbone("vit_nope", "none")


def test_pretrained_offline_is_one_clear_line(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network attempt in tests
    with pytest.raises(CheckpointError, match="--weights PATH"):
        load_backbone(TINY, "pretrained", img_size=32)


@pytest.fixture(scope="module")
def vit_b():
    return load_backbone("vit_base_patch16_224.orig_in21k", "none")


@pytest.mark.parametrize("method,trainable", [("linear", 76_900), ("full", 85_875_556)])
def test_vit_b16_exact_counts(vit_b, method, trainable):
    spec = get_method(method)
    model = spec.build(vit_b.instantiate(100), 100, spec.config_cls(),
                       BuildContext(preprocess=vit_b.preprocess, device=torch.device("cpu")))
    counts = count_params(model)
    assert counts["trainable_params"] == trainable
    assert counts["head_params"] == 76_900 and counts["total_params"] == 85_875_556


def test_vit_b16_gflops_count_attention(vit_b):
    gflops = inference_gflops(vit_b.instantiate(100), (224, 224))
    assert abs(gflops - 35.1) <= 0.2
