"""Static shapes: a padded last batch trains exactly like the short one, and compiled runs never recompile."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter

import peftbench.train as train_mod
from peftbench.config import TrainConfig
from peftbench.data.images import Batches, SplitData
from peftbench.errors import UsageError
from peftbench.method_api import BuildContext
from peftbench.records import load_records
from peftbench.registry import get_method
from peftbench.sweep.request import SweepRequest
from peftbench.sweep.run import run_sweep
from peftbench.train import effective_compile, evaluate, make_step, real_sizes, sample_weights, train

CPU = torch.device("cpu")
# no dropout and no drop-path, so that padding cannot change the random draws of the samples it keeps
KNOBS = {"vpt_deep": {"prompt_length": 2, "dropout": 0.0},
         "ship": {"prompt_length": 2, "layers": (0, 1), "attribute_prompts": False, "matching_warmup": 0}}
# the compiled runs: SHIP's matching loss switches on after the first epoch, which must not recompile either
COMPILED_KNOBS = {"vpt_deep": KNOBS["vpt_deep"], "ship": {**KNOBS["ship"], "matching_warmup": 1},
                  "ship_masked": {**KNOBS["ship"], "matching_warmup": 1, "attention": "masked"}}


def _model(make_vit, method: str, knobs: dict | None = None) -> torch.nn.Module:
    spec = get_method(method.removesuffix("_masked"))
    cfg = spec.config_cls(**(knobs or KNOBS)[method])
    return spec.build(make_vit(4), 4, cfg, BuildContext(None, CPU)).train()


def _batches(n: int) -> Batches:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, n)
    images = rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
    return Batches(SplitData(images=images, labels=labels, checksum="s"), (32, 32), (0.5,) * 3, (0.5,) * 3,
                   "bicubic", CPU)


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("grad_accum", [1, 2])
@pytest.mark.parametrize("method", ["vpt_deep", "ship"])  # ship: its matching loss is masked as well
def test_padded_batch_gives_the_gradients_of_the_short_batch(make_tiny_vit, method, grad_accum):
    model = _model(make_tiny_vit, method)
    twin = copy.deepcopy(model)
    cfg = TrainConfig(batch_size=8, grad_accum=grad_accum)
    x, y = _batches(5).batch(np.arange(5))
    short = make_step(model, torch.optim.SGD(model.parameters(), lr=0.0), cfg, lambda: torch.autocast("cpu",
                                                                                                   enabled=False))
    padded = make_step(twin, torch.optim.SGD(twin.parameters(), lr=0.0), cfg, lambda: torch.autocast("cpu",
                                                                                                  enabled=False))
    idx = np.resize(np.arange(5), 8)  # the padding repeats the batch's own samples
    loss_short = short(x, y)
    loss_padded = padded(x[idx], y[idx], sample_weights(8, 5, CPU))
    torch.testing.assert_close(loss_padded, loss_short, rtol=1e-6, atol=1e-6)
    got, want = _grads(twin), _grads(model)
    assert want.keys() == got.keys() and len(want) >= 3
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)


def test_batches_pad_the_last_batch_with_its_own_samples():
    b = _batches(10)
    out = list(b.iterate(4, pad_last=True))
    assert [len(y) for _, y in out] == [4, 4, 4] and real_sizes(10, 4) == [4, 4, 2]
    torch.testing.assert_close(out[-1][0], torch.cat([out[-1][0][:2]] * 2))
    assert real_sizes(8, 4) == [4, 4]




@pytest.fixture
def counting_compiler(monkeypatch):
    """Compile with a frame counter instead of inductor: dynamo's guards and recompiles are decided before the
    backend sees a graph, so the counts are those of inductor; it keeps the test at seconds."""
    counter = CompileCounter()
    torch._dynamo.reset()
    monkeypatch.setattr(train_mod, "COMPILE_BACKEND", counter)
    monkeypatch.setattr(train_mod, "_compiled", {})
    with torch._dynamo.config.patch(error_on_recompile=True):  # a recompile raises instead of being counted
        yield counter
    torch._dynamo.reset()


@pytest.mark.parametrize("method", ["vpt_deep", "ship", "ship_masked"])
def test_a_compiled_run_compiles_once_and_the_next_run_not_at_all(make_tiny_vit, method, counting_compiler):
    train_b, eval_b = _batches(20), _batches(11)  # batch 8: short last batches of 4 (train) and 3 (eval)
    cfg = TrainConfig(epochs=3, batch_size=8, eval_batch_size=8, warmup_epochs=1, lr=0.01, compile="true")
    for run in range(2):  # two runs of a sweep: fresh models of the same method, backbone and classes
        model = _model(make_tiny_vit, method, COMPILED_KNOBS)
        result = train(model, train_b, cfg, CPU, seed=run)
        top1 = evaluate(model, eval_b, cfg.eval_batch_size, "fp32", CPU, compile=True)
        assert result.epochs_done == 3 and 0 <= top1 <= 100
        # one graph for training (forward + loss), one for evaluation; none added by the second run
        assert counting_compiler.frame_count == 2, f"run {run}"


def test_compile_auto_is_on_for_cuda_only():
    assert effective_compile(TrainConfig(), torch.device("cuda"))
    assert not effective_compile(TrainConfig(), CPU)
    assert effective_compile(TrainConfig(compile=True), CPU)
    assert not effective_compile(TrainConfig(compile="false"), torch.device("cuda"))
    with pytest.raises(UsageError, match="compile='sometimes'"):
        TrainConfig(compile="sometimes")


def test_a_compiled_sweep_reuses_its_graphs_and_records_compile(vtab_root, tmp_path, counting_compiler):
    # 32 training images and 16 test images in batches of 6: short last batches in both
    sets = ["epochs=2", "batch_size=6", "eval_batch_size=6", "bench_steps=0", "compile=true", "vpt_deep.dropout=0"]
    req = SweepRequest(methods=["vpt_deep"], tasks="cifar", seeds=[0, 1], suite="vtab1k", data_root=vtab_root,
                       out=tmp_path / "runs", backbone="test_vit", weights="none", img_size=32, sets=sets)
    result = run_sweep(req)
    assert result.statuses == {"complete": 2}
    assert counting_compiler.frame_count == 2  # seed 1 ran seed 0's graphs: nothing compiled again
    for rec in load_records(tmp_path / "runs")[0]:
        m = rec["metrics"]
        assert m["compiled"] is True and rec["config"]["train"]["compile"] == "true"
        assert 0 < m["first_step_s"] <= m["wall_s"]["train"]  # the compilation is inside the training time


def test_compiled_evaluation_pads_and_drops_the_padding(make_tiny_vit, counting_compiler):
    model = _model(make_tiny_vit, "vpt_deep").eval()
    b = _batches(10)
    with torch.no_grad():
        x, y = b.batch(np.arange(10))
        want = 100.0 * (model(x).argmax(-1) == y).sum().item() / 10
    assert evaluate(model, b, 16, "fp32", CPU) == pytest.approx(want)  # eager: nothing padded
    assert evaluate(model, b, 4, "fp32", CPU, compile=True) == pytest.approx(want)  # 4, 4, 2 padded to 4
    assert counting_compiler.frame_count == 1
