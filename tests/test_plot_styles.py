"""Plots: a stable colour and marker per method, the Pareto front, training curves; the terminal progress bar."""

from __future__ import annotations

from peftbench.cli import main


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


def test_report_draws_training_curves_from_the_history(tiny_run_argv, vtab_root, tmp_path):
    out = tmp_path / "runs"
    assert main(tiny_run_argv(vtab_root, out, "--set", "protocol=val", methods="linear,full")) == 0
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
