"""Issue 17, the first hour: what a run says while it works, defaults that agree, reproducible numbers."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pytest
import torch

from peftbench import train as train_mod
from peftbench.cli import main
from peftbench.records import load_records
from peftbench.runner import SweepRequest, run_sweep

TINY = ["--suite", "vtab1k", "--backbone", "vit_tiny_patch16_224", "--weights", "none", "--img-size", "32",
        "--set", "epochs=2", "--set", "warmup_epochs=1", "--set", "bench_steps=1", "--set", "bench_warmup=0",
        "--no-report"]


def _run(vtab_root: Path, out: Path, *extra: str, methods: str = "full") -> list[str]:
    return ["run", *TINY, "--methods", methods, "--tasks", "eurosat", "--data-root", str(vtab_root),
            "--out", str(out), *extra]


def test_piped_run_prints_one_line_per_epoch_and_stores_the_history(vtab_root, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(_run(vtab_root, out)) == 0
    lines = capsys.readouterr().out.splitlines()
    epochs = [line for line in lines if line.startswith("full/eurosat/seed0  epoch ")]
    assert [line.split()[2] for line in epochs] == ["1/2", "2/2"], lines
    assert all("train loss " in line and line.endswith(" s") for line in epochs)
    (rec,) = load_records(out)[0]
    history = rec["metrics"]["history"]
    assert [h["epoch"] for h in history] == [1, 2] and all(h["val_top1"] is None for h in history)
    assert history[-1]["train_loss"] == rec["metrics"]["final_train_loss"]
    assert f"train loss {history[0]['train_loss']:.4f}" in epochs[0]


def test_protocol_val_validates_every_epoch_on_val_never_on_test(vtab_root, tmp_path, monkeypatch, capsys):
    seen: list[int] = []
    evaluate = train_mod.evaluate

    def spy(model, batches, *args, **kwargs):
        seen.append(len(batches.data))
        return evaluate(model, batches, *args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate", spy)
    out = tmp_path / "runs"
    assert main(_run(vtab_root, out, "--set", "protocol=val")) == 0
    (rec,) = load_records(out)[0]
    history = rec["metrics"]["history"]
    assert all(isinstance(h["val_top1"], float) for h in history)
    assert history[-1]["val_top1"] == rec["metrics"]["val_top1"]  # evaluation is deterministic
    assert seen == [rec["data"]["splits"]["val200"]] * 2  # val200 (8 images) per epoch, never test (16)
    assert "val top-1 " in capsys.readouterr().out


def _header(text: str) -> str:
    (line,) = [line for line in text.splitlines() if line.startswith("suite ")]
    return line


def test_run_starts_with_one_header_line(vtab_root, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(_run(vtab_root, out, methods="linear,full")) == 0
    lines = capsys.readouterr().out.splitlines()
    first = _header("\n".join(lines))
    assert lines.index(first) < min(i for i, line in enumerate(lines) if "epoch 1/2" in line)
    assert first.startswith("suite vtab1k (recipe peftbench/suites/vtab1k.yaml) | backbone vit_tiny_patch16_224, "
                            "weights none [")
    assert "| device cpu (1 threads) | precision fp32 | epochs 2 |" in first
    assert first.endswith("2 method(s) x 1 task(s) x 1 seed(s) = 2 runs, 0 already done")
    assert main(_run(vtab_root, out, methods="linear,full")) == 0
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


def test_threads_option_is_used_and_recorded(vtab_root, tmp_path):
    try:
        assert main(_run(vtab_root, tmp_path / "runs", "--threads", "2")) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(False)
    (rec,) = load_records(tmp_path / "runs")[0]
    assert rec["provenance"]["numerics"]["intra_op_threads"] == 2


@pytest.mark.parametrize("bad", ["0", "-1"])
def test_threads_must_be_positive(vtab_root, tmp_path, capsys, bad):
    assert main(_run(vtab_root, tmp_path / "runs", "--threads", bad)) == 2
    assert capsys.readouterr().err.strip() == f"error: --threads {bad}: must be at least 1"


def test_warmup_as_long_as_training_is_scaled_with_a_warning(vtab_root, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(_run(vtab_root, out, "--set", "warmup_epochs=2")) == 0
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


# ---- item 3: inspect SHIP without data ---------------------------------------------------------

OFFICIAL = Path(__file__).parent / "data" / "ship_official"


def test_inspect_ship_with_a_task_uses_its_published_layers(capsys):
    """The README's example: the official cifar100 run's layers and trainable parameters (hparams.csv)."""
    assert main(["inspect", "--method", "ship", "--suite", "vtab1k", "--task", "cifar100", "--recipe", "official",
                 "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method_info"]["layers"] == [0, 2, 4, 6, 8, 11] and info["num_classes"] == 100
    assert info["trainable_params"] == 330_340  # trainable_params_shipped_code of the official cifar100 run
    assert info["method_info"]["layers_source"] == "published (cifar100, ViT-B/16 in21k)"


@pytest.mark.parametrize("row", list(csv.DictReader((OFFICIAL / "hparams.csv").open())), ids=lambda r: r["task"])
def test_every_vtab_task_gets_its_published_grouping_without_data(make_tiny_vit, row):
    """From the package's own copy of the affinity files and the suite's per-task threshold."""
    from peftbench.config import resolve
    from peftbench.data.tasks import resolve_tasks
    from peftbench.method_api import BuildContext
    from peftbench.methods.ship import PUBLISHED_AFFINITY
    from peftbench.registry import get_method
    from peftbench.runner import load_suite

    assert PUBLISHED_AFFINITY.parents[1].name == "methods"  # shipped inside the package (peftbench.methods.ship)
    spec = get_method("ship")
    _, cfg, _ = resolve(spec, row["task"], load_suite("vtab1k", None), [("ship", "attribute_prompts", False)],
                        "official")
    (task,) = resolve_tasks(row["task"], "vtab1k")
    context = BuildContext(preprocess=None, device=torch.device("cpu"), task=task)
    spec.build(make_tiny_vit(5, depth=12), 5, cfg, context)
    assert context.info["layers"] == [int(i) for i in row["prompt_layers"].split()]


def test_inspect_ship_without_a_task_falls_back_to_every_block_with_a_note(capsys):
    assert main(["inspect", "--method", "ship"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("defaults from suite mini (recipe peftbench/suites/mini.yaml)")
    assert "every block of 6 is counted as prompted" in out and "--task NAME" in out


def test_package_data_declares_the_affinity_files():
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"peftbench.methods.ship" = ["affinity/*.npy"]' in text


# ---- item 2 / 4: defaults that agree, a CLI that explains itself ----------------------------------

def test_methods_and_tasks_default_to_the_run_suite_and_say_so(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("defaults from suite mini (recipe peftbench/suites/mini.yaml)")
    assert "    epochs = 15  " in out and "    vpt_deep.prompt_length = 5  " in out
    assert main(["methods", "--suite", "vtab1k"]) == 0
    out = capsys.readouterr().out
    assert "    epochs = 100  " in out and "    vpt_deep.prompt_length = 50  " in out
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "suite mini (the default" in out and "sprite_loc" in out and "cifar100" not in out


def test_bare_command_prints_help_and_exits_0(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: peftbench") and "inspect" in out and "make-synthetic" in out


def test_plugin_is_accepted_after_the_command(tmp_path, capsys):
    plugin = tmp_path / "late_plugin.py"
    plugin.write_text(
        "from dataclasses import dataclass\n"
        "from peftbench.registry import register_method\n"
        "@dataclass\nclass Cfg:\n    pass\n"
        "@register_method('late_plugin_probe', config=Cfg, description='registered after the command')\n"
        "def build(backbone, num_classes, cfg, ctx):\n    return backbone\n")
    assert main(["methods", "--plugin", str(plugin)]) == 0
    assert "late_plugin_probe v1  registered after the command" in capsys.readouterr().out


def test_every_option_of_every_command_has_help():
    from peftbench.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    lacking = [f"{name} {action.dest}" for name, command in [("peftbench", parser), *sub.choices.items()]
               for action in command._actions
               if not isinstance(action, argparse._SubParsersAction) and not action.help]
    assert lacking == []


@pytest.mark.parametrize("argv, names", [
    (["tasks", "--suite", "vtab2k"], "(suites: fgvc, mini, vtab1k)"),
    (["run", "--tasks", "digitz"], "(tasks: digits, texture, sprite_loc, sprite_ori, count; or 'all')"),
    (["inspect", "--method", "full", "--suite", "vtab1k", "--task", "cifar1000"], "(tasks: cifar100, caltech101, "),
])
def test_unknown_task_or_suite_lists_the_valid_names(argv, names, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown ") and names in err, err


# ---- item 7: offline --weights pretrained ---------------------------------------------------------

@pytest.fixture
def no_hub(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def test_offline_pretrained_is_one_line_in_seconds(no_hub, capfd):
    import time

    from peftbench.backbone import load_backbone
    from peftbench.errors import CheckpointError

    t0 = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        load_backbone("vit_tiny_patch16_224", "pretrained", img_size=32)
    assert time.perf_counter() - t0 < 5  # huggingface_hub's retries took ~50-90 s
    assert "we are offline (127.0.0.1:9 unreachable: " in str(info.value) and "--weights PATH" in str(info.value)
    captured = capfd.readouterr()
    assert "Retry" not in captured.out + captured.err


def test_hub_probe_gives_up_after_its_timeout(no_hub, monkeypatch):
    import socket
    import time

    from peftbench.backbone import hub_unreachable

    def black_hole(*args, **kwargs):  # a network that drops packets: no answer, then a timeout
        time.sleep(2)
        raise OSError("timed out")

    monkeypatch.setattr(socket, "create_connection", black_hole)
    t0 = time.perf_counter()
    assert hub_unreachable(timeout=0.2) == "127.0.0.1:9 did not answer within 0.2 s"
    assert time.perf_counter() - t0 < 1


# ---- item 8: report reads records, not every JSON file below ------------------------------------

def test_report_reads_only_records_and_counts_what_it_skipped(vtab_root, tmp_path, capsys):
    top = tmp_path / "top"
    assert main(_run(vtab_root, top / "runs", methods="linear")) == 0
    (record,) = (top / "runs").rglob("seed0-*.json")
    for n in range(30):  # a big unrelated tree: configs, package metadata, another tool's outputs
        (top / "other" / f"d{n % 3}").mkdir(parents=True, exist_ok=True)
        (top / "other" / f"d{n % 3}" / f"cfg{n}.json").write_text('{"run_id": "x"}')
    (top / "deep" / "a" / "b" / "c" / "d" / "e").mkdir(parents=True)
    (top / "deep" / "a" / "b" / "c" / "d" / "e" / record.name).write_text(record.read_text())  # too deep
    foreign = json.loads(record.read_text()) | {"tool": "othertool"}
    (top / "other" / "seed0-0123456789abcdef.json").write_text(json.dumps(foreign))
    capsys.readouterr()
    assert main(["report", str(top)]) == 0
    out = capsys.readouterr().out
    assert ("warning: skipped 30 JSON file(s), each not a peftbench record (no 'tool' or 'schema' field: 30), "
            "e.g. ") in out
    assert "seed0-0123456789abcdef.json: not a peftbench record (written by 'othertool', not peftbench)" in out
    assert len(list(csv.DictReader((top / "report" / "records.csv").open()))) == 1  # not the too-deep copy


def test_report_of_a_folder_without_records_writes_nothing(tmp_path, capsys):
    (tmp_path / "x.json").write_text("{}")
    assert main(["report", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "warning: skipped 1 JSON file(s), each not a peftbench record" in captured.out
    assert captured.err.startswith("error: no peftbench records under") and not (tmp_path / "report").exists()


def test_records_carry_the_tool_marker_and_old_ones_stay_readable(vtab_root, tmp_path):
    out = tmp_path / "runs"
    assert main(_run(vtab_root, out, methods="linear")) == 0
    (path,) = out.rglob("seed0-*.json")
    rec = json.loads(path.read_text())
    assert rec["tool"] == "peftbench" and rec["schema"] == 1
    del rec["tool"]  # a record written before the marker existed
    path.write_text(json.dumps(rec))
    assert len(load_records(out)[0]) == 1


# ---- item 6: synthetic data and reference rows ---------------------------------------------------

def test_synthetic_data_is_marked_and_its_tables_say_timing_only(tmp_path, capsys):
    synth, out = tmp_path / "synth", tmp_path / "runs"
    assert main(["make-synthetic", "--like", "vtab1k", "--tasks", "eurosat", "--scale", "0.01",
                 "--out", str(synth)]) == 0
    assert main(["run", *TINY[:-1], "--methods", "linear", "--tasks", "eurosat", "--data-root", str(synth),
                 "--out", str(out)]) == 0
    (rec,) = load_records(out)[0]
    assert rec["data"]["synthetic"] is True
    summary = (out / "report" / "summary.md").read_text()
    assert "## Table 1 — ⚠ SYNTHETIC DATA — timing only — " in summary
    assert "No published reference rows: this table's data are synthetic" in summary


def _as_published_setting(rec: dict, **backbone) -> dict:
    rec = json.loads(json.dumps(rec))
    rec["backbone"].update({"name": "vit_base_patch16_224.orig_in21k", "weights": "ViT-B_16.npz",
                            "checksum": "c" * 64, **backbone})
    rec["backbone"]["timm_name"] = rec["backbone"]["name"]  # what timm built (the report's key)
    return rec


def test_reference_rows_only_beside_the_backbone_they_were_published_for(vtab_root, tmp_path):
    from peftbench.report.aggregate import load_reference, summary_tables

    assert main(_run(vtab_root, tmp_path / "runs", methods="linear")) == 0
    (rec,) = load_records(tmp_path / "runs")[0]
    assert rec["data"]["synthetic"] is False
    (vit_b,) = summary_tables([_as_published_setting(rec)], load_reference())
    assert [r.method for r in vit_b.references]  # the published linear probe etc. on eurosat
    (other,) = summary_tables([_as_published_setting(rec, name="vit_small_patch16_224.augreg_in21k")],
                              load_reference())
    assert other.references == [] and "this table's backbone is vit_small_patch16_224.augreg_in21k" in \
        other.reference_notes[0]
    synthetic = _as_published_setting(rec)
    synthetic["data"]["synthetic"] = True
    (table,) = summary_tables([synthetic], load_reference())
    assert table.references == [] and "SYNTHETIC DATA — timing only" in table.title() + table.short_title()


# ---- item 10 and item 1's plot: stable method styles, the Pareto front, training curves ----------

def test_a_method_keeps_its_colour_and_marker_whatever_else_a_report_holds():
    from peftbench.report.plots import _style, method_style

    assert _style(["ship"])["ship"] == _style(["adapter", "bitfit", "full", "ship"])["ship"]
    assert _style(["my_method"])["my_method"] == _style(["aaa", "my_method", "zzz"])["my_method"]
    assert method_style("my_method") == method_style("my_method")  # crc32: the same in every process
    shipped = ["linear", "full", "vpt_shallow", "vpt_deep", "ship"]
    assert len({method_style(m) for m in shipped}) == len(shipped)


def test_methods_on_fewer_tasks_stay_off_the_pareto_front():
    from types import SimpleNamespace as NS

    from peftbench.report.plots import whole_suite_front

    rows = [NS(mean_tasks=NS(partial=False)), NS(mean_tasks=NS(partial=False)), NS(mean_tasks=NS(partial=True))]
    pts = [(1.0, 50.0), (10.0, 70.0), (0.5, 90.0)]  # the partial method would dominate both
    assert whole_suite_front(rows, pts) == [0, 1]


def test_report_draws_training_curves_from_the_history(vtab_root, tmp_path):
    out = tmp_path / "runs"
    assert main(_run(vtab_root, out, "--set", "protocol=val", methods="linear,full")) == 0
    assert main(["report", str(out)]) == 0
    assert (out / "report" / "training_curves.png").stat().st_size > 10_000
    assert "![Training curves (Table 1)](training_curves.png)" in (out / "report" / "summary.md").read_text()


def test_terminal_bar_shows_epoch_and_loss_without_plain_lines():
    import io

    from rich.console import Console

    from peftbench.cli import RichReporter
    from peftbench.train import EpochEnd

    buffer = io.StringIO()
    with RichReporter(Console(file=buffer, force_terminal=True, width=200)) as reporter:
        reporter.run_started("full/digits/seed0", 10)
        reporter.epoch_finished(EpochEnd(3, 15, 1.23456, None, 4.0))
        (task,) = reporter.progress.tasks
        assert task.description == "full/digits/seed0: epoch 3/15  train loss 1.2346"
    assert "full/digits/seed0  epoch 3/15" not in buffer.getvalue()  # the bar says it; no extra line
