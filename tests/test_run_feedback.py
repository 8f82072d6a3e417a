"""What a run says while it works (piped progress lines, the header line), thread pinning and warm-up scaling."""

from __future__ import annotations

import json

import pytest
import torch

from peftbench import train as train_mod
from peftbench.cli import main
from peftbench.records import load_records
from peftbench.sweep.request import SweepRequest
from peftbench.sweep.run import run_sweep


def test_piped_run_prints_one_line_per_epoch_and_stores_the_history(tiny_run_argv, vtab_root, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(tiny_run_argv(vtab_root, out)) == 0
    lines = capsys.readouterr().out.splitlines()
    epochs = [line for line in lines if line.startswith("full/eurosat/seed0  epoch ")]
    assert [line.split()[2] for line in epochs] == ["1/2", "2/2"], lines
    assert all("train loss " in line and line.endswith(" s") for line in epochs)
    (rec,) = load_records(out)[0]
    history = rec["metrics"]["history"]
    assert [h["epoch"] for h in history] == [1, 2] and all(h["val_top1"] is None for h in history)
    assert history[-1]["train_loss"] == rec["metrics"]["final_train_loss"]
    assert f"train loss {history[0]['train_loss']:.4f}" in epochs[0]


def test_protocol_val_validates_every_epoch_on_val_never_on_test(tiny_run_argv, vtab_root, tmp_path, monkeypatch,
                                                                 capsys):
    seen: list[int] = []
    evaluate = train_mod.evaluate

    def spy(model, batches, *args, **kwargs):
        seen.append(len(batches.data))
        return evaluate(model, batches, *args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate", spy)
    out = tmp_path / "runs"
    assert main(tiny_run_argv(vtab_root, out, "--set", "protocol=val")) == 0
    (rec,) = load_records(out)[0]
    history = rec["metrics"]["history"]
    assert all(isinstance(h["val_top1"], float) for h in history)
    assert history[-1]["val_top1"] == rec["metrics"]["val_top1"]  # evaluation is deterministic
    assert seen == [rec["data"]["splits"]["val200"]] * 2  # val200 (8 images) per epoch, never test (16)
    assert "val top-1 " in capsys.readouterr().out


def _header(text: str) -> str:
    (line,) = [line for line in text.splitlines() if line.startswith("suite ")]
    return line


def test_run_starts_with_one_header_line(tiny_run_argv, vtab_root, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(tiny_run_argv(vtab_root, out, methods="linear,full")) == 0
    lines = capsys.readouterr().out.splitlines()
    first = _header("\n".join(lines))
    assert lines.index(first) < min(i for i, line in enumerate(lines) if "epoch 1/2" in line)
    assert first.startswith("suite vtab1k (recipe peftbench/suites/vtab1k.yaml) | backbone vit_tiny_patch16_224, "
                            "weights none [")
    assert "| device cpu (1 threads) | precision fp32 | epochs 2 |" in first
    assert first.endswith("2 method(s) x 1 task(s) x 1 seed(s) = 2 runs, 0 already done")
    assert main(tiny_run_argv(vtab_root, out, methods="linear,full")) == 0
    assert _header(capsys.readouterr().out).endswith("= 2 runs, 2 already done")


def test_same_run_same_numbers_whatever_the_process_thread_count(vtab_root, tmp_path):
    """torch defaults to one thread per core; a sweep pins its own count so machines agree.

    Without the pin, epoch 3 ends at loss 1.7454346 with 3 threads and 1.7454344 with 1 (LayerNorm and
    GEMM reductions split per thread), which over 15 epochs moved mini-suite accuracies by points.
    """
    results = []
    try:
        for n, threads in enumerate((3, 1)):
            torch.set_num_threads(threads)
            req = SweepRequest(methods=["full"], tasks="eurosat", suite="vtab1k", data_root=vtab_root,
                               out=tmp_path / f"runs{n}", backbone="vit_mini_patch8_32", weights="none",
                               img_size=32,
                               sets=["epochs=3", "warmup_epochs=0", "lr=0.01", "bench_steps=0", "batch_size=32"])
            rec = json.loads(run_sweep(req).written[0].read_text())
            results.append((rec["metrics"]["history"], rec["metrics"]["test_top1"]))
            assert rec["provenance"]["numerics"]["intra_op_threads"] == 1
            assert rec["provenance"]["numerics"]["deterministic_algorithms"] is True
    finally:
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(False)
    assert results[0] == results[1]


def test_threads_option_is_used_and_recorded(tiny_run_argv, vtab_root, tmp_path):
    try:
        assert main(tiny_run_argv(vtab_root, tmp_path / "runs", "--threads", "2")) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(False)
    (rec,) = load_records(tmp_path / "runs")[0]
    assert rec["provenance"]["numerics"]["intra_op_threads"] == 2


@pytest.mark.parametrize("bad", ["0", "-1"])
def test_threads_must_be_positive(tiny_run_argv, vtab_root, tmp_path, capsys, bad):
    assert main(tiny_run_argv(vtab_root, tmp_path / "runs", "--threads", bad)) == 2
    assert capsys.readouterr().err.strip() == f"error: --threads {bad}: must be at least 1"


def test_warmup_as_long_as_training_is_scaled_with_a_warning(tiny_run_argv, vtab_root, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(tiny_run_argv(vtab_root, out, "--set", "warmup_epochs=2")) == 0
    assert ("warning: warmup_epochs=2 >= epochs=2: the learning rate would never reach its peak; warm-up scaled to "
            "0 epoch(s) (10% of epochs), recorded as metrics.warmup_scaled") in capsys.readouterr().out
    (rec,) = load_records(out)[0]
    assert rec["metrics"]["warmup_scaled"] is True and rec["metrics"]["warmup_epochs"] == 0
    assert rec["config"]["train"]["warmup_epochs"] == 2  # the run id keeps what was asked


def test_warmup_shorter_than_training_is_kept():
    from peftbench.config import TrainConfig
    from peftbench.train import lr_at, warmup_epochs

    assert warmup_epochs(TrainConfig(epochs=100, warmup_epochs=10)) == 10
    cfg = TrainConfig(epochs=2, warmup_epochs=2, lr=0.1)
    assert warmup_epochs(cfg) == 0 and lr_at(0, 10, cfg) == pytest.approx(0.1)  # at the peak from step 0
