"""Measurements that must describe one run, not the process or the method's own bookkeeping."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from test_reliability import sweep

from peftbench import registry
from peftbench.measure import stored_per_task, tensor_ids
from peftbench.method_api import BuildContext
from peftbench.registry import register_method

HOG_BYTES = 400 * 2**20
NUM_CLASSES = 5


@dataclass
class _NoKnobs:
    pass


@pytest.fixture
def memory_hog():
    """A method like linear probing whose build touches 400 MiB once (e.g. a large preparation pass)."""
    linear = registry.get_method("linear")

    def build(backbone, num_classes, cfg, ctx):
        scratch = torch.ones(HOG_BYTES // 4)
        del scratch
        return linear.build(backbone, num_classes, linear.config_cls(), ctx)

    register_method("memory_hog_test", config=_NoKnobs, description="test: 400 MiB at build")(build)
    yield "memory_hog_test"
    registry._METHODS.pop("memory_hog_test")


def _peaks(out: Path) -> dict[str, dict]:
    recs = [json.loads(p.read_text()) for p in out.rglob("*.json")]
    return {r["method"]: r["metrics"] for r in recs}


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="per-run CPU peaks need Linux's VmHWM reset")
def test_cpu_peak_memory_is_per_run_not_the_process_high_water_mark(vtab_root, tmp_path, memory_hog):
    """A small run after a big one in the same process reports its own, smaller peak."""
    sweep(vtab_root, tmp_path / "runs", methods=(memory_hog, "linear"))
    peaks = _peaks(tmp_path / "runs")
    big, small = peaks[memory_hog], peaks["linear"]
    assert big["peak_mem_bytes"] - small["peak_mem_bytes"] > HOG_BYTES // 2
    assert big["peak_mem_kind"] == small["peak_mem_kind"] == "run_peak_rss"


# ---- stored per task ----------------------------------------------------------------------------

def _built(make_vit, method: str, **knobs):
    spec = registry.get_method(method)
    vit = make_vit(NUM_CLASSES)
    shared = tensor_ids(vit)
    model = spec.build(vit, NUM_CLASSES, spec.config_cls(**knobs), BuildContext(None, torch.device("cpu")))
    return model, shared


def test_stored_per_task_counts_ships_prototype_bank(make_tiny_vit):
    """SHIP keeps a P x D prototype bank per task: neither trainable nor part of the backbone."""
    model, shared = _built(make_tiny_vit, "ship", layers=(0, 1), num_prototypes=7, prompt_length=2)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert stored_per_task(model, shared) == trainable + 7 * 32  # tiny_vit's width is 32


def test_stored_per_task_of_vpt_is_its_trainable_count(make_tiny_vit):
    model, shared = _built(make_tiny_vit, "vpt_deep", prompt_length=3)
    # analytic: prompts depth x P x D, classifier D x C + C
    assert stored_per_task(model, shared) == 2 * 3 * 32 + 32 * NUM_CLASSES + NUM_CLASSES
