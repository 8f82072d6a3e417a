"""Plots order methods by their mean and colour every method, plugins included, from its name alone."""

from __future__ import annotations

from pathlib import Path

from peftbench import report
from peftbench.registry import available_methods
from peftbench.report import plots

ACC = {"linear": (50, 60), "ship": (70, 64), "my_plugin_method": (90, 80), "vpt_deep": (68, 62)}  # means 55, 67, 85, 65
BEST_FIRST = ["my_plugin_method", "ship", "vpt_deep", "linear"]


def record(method: str, task: str, acc: float) -> dict:
    return {
        "run_id": f"{method}-{task}", "schema": 1, "status": "complete", "reason": None, "method": method,
        "task": task, "suite": "vtab1k", "seed": 0, "created": "2025-01-01T00:00:00Z",
        "config": {"train": {"protocol": "final", "epochs": 100, "precision": "auto"}, "method": {}},
        "backbone": {"name": "vit_small_patch16_224", "weights": "pretrained", "checksum": "c", "img_size": [224, 224]},
        "data": {"checksum": "d"}, "provenance": {"device": "cpu"},
        "metrics": {"test_top1": acc, "trainable_params": 1000 * len(method), "head_params": 100, "total_params": 10**6,
                    "gflops": 1.0, "train_img_per_s": 10.0, "infer_img_per_s": 100.0 + len(method),
                    "peak_mem_bytes": 2**30, "peak_mem_kind": "run_peak_rss", "precision": "fp32"},
    }


def table():
    recs = [record(m, t, a) for m, accs in ACC.items() for t, a in zip(("cifar100", "dtd"), accs)]
    (tab,) = report.summary_tables(recs)
    return tab


def test_heatmap_rows_and_bars_go_best_mean_first():
    tab = table()
    heat = plots.plot_heatmap(tab)
    assert [t.get_text() for t in heat.axes[0].get_yticklabels()] == BEST_FIRST
    style = report._style(list(ACC))
    bars = plots.plot_group_means(tab, style)
    assert [h.get_label() for h in bars.legends[0].legend_handles][:4] == BEST_FIRST
    scatter = plots.plot_accuracy_vs_params(tab, style)
    labels = [t.get_text().split(" (")[0] for t in scatter.legends[0].get_texts()]
    assert [label for label in labels if not label.startswith("Pareto")] == BEST_FIRST


def test_every_method_gets_its_colour_from_its_name_none_from_a_list():
    source = Path(plots.__file__).read_text()
    named = [m for m in available_methods() if f'"{m}"' in source or f"'{m}'" in source]
    assert named == []  # no method is special-cased
    for name in ["my_plugin_method", *available_methods()]:
        colour, marker = plots.method_style(name)
        assert plots.method_style(name) == (colour, marker) and len(colour) == 4 and marker in plots.MARKERS
        assert sum(colour[:3]) < 2.6  # never near-white on a white page
    shipped = available_methods()
    assert len({plots.method_style(m) for m in shipped}) == len(shipped)
