"""The four plots per table (matplotlib Figure objects on the Agg canvas; no pyplot global state).

matplotlib is imported inside the functions so that building tables does not pay for it.
"""

from __future__ import annotations

import textwrap
import zlib
from collections import defaultdict
from statistics import fmean
from typing import Any

from .aggregate import STATUS_TEXT, Row, Table
from .critical_difference import plot_critical_difference

DPI = 150
SCATTER_SIZE = (9.0, 5.6)  # inches; a PNG is exactly size × DPI pixels (no tight bbox)
BAR_SIZE = (10.0, 5.6)


def plot_names(number: int) -> dict[str, str]:
    suffix = "" if number == 1 else f"_table{number}"
    return {kind: f"{kind}{suffix}" for kind in ("accuracy_vs_params", "heatmap", "accuracy_vs_throughput",
                                                  "group_means", "training_curves", "critical_difference")}



def _figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


MARKERS = "osD^vP*Xh<>pdH"


def method_style(method: str) -> tuple[Any, str]:
    """The colour and marker of a method, derived from its name alone (crc32, not Python's salted ``hash``):
    the same in every report and process, for built-in methods and plugins alike, whatever else a report
    holds. The hue comes from the name, saturation and brightness (kept dark enough for a white page)
    and the marker from other bits of the same checksum, so that two methods rarely look alike."""
    from matplotlib.colors import hsv_to_rgb

    code = zlib.crc32(method.encode())
    hue = (code % 3600) / 3600
    saturation = (0.55, 0.7, 0.85)[(code >> 12) % 3]
    value = (0.55, 0.7, 0.85)[(code >> 16) % 3]
    red, green, blue = (float(c) for c in hsv_to_rgb((hue, saturation, value)))
    return (red, green, blue, 1.0), MARKERS[(code >> 20) % len(MARKERS)]


def by_mean(rows: list[Row]) -> list[Row]:
    """Rows best first by their mean over tasks (rows without a mean last), ties by name: the plots' order."""
    return sorted(rows, key=lambda r: (r.mean_tasks.mean is None, -(r.mean_tasks.mean or 0.0), r.method))


def _style(methods: list[str]) -> dict[str, tuple[Any, str]]:
    """Colour and marker per method for the plots of a report (see :func:`method_style`)."""
    return {m: method_style(m) for m in methods}


def _title(fig, title: str, table: Table) -> None:
    """Figure-level title (constrained layout keeps it clear of the legend), wrapped to the width."""
    width = int(fig.get_figwidth() * 11)
    sub = "\n".join(textwrap.wrap(table.short_title(), width))
    fig.suptitle(f"{title}\n{sub}", fontsize=11)


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.4")


def _legend_label(row: Row) -> str:
    avg = row.mean_tasks
    return row.method + (f" ({avg.n}/{avg.total} tasks)" if avg.partial else "")


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (fewer or equal parameters and higher or equal
    accuracy, one of them strictly), sorted by parameters."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(x2 <= x and y2 >= y and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def whole_suite_front(rows: list[Row], pts: list[tuple[float, float]]) -> list[int]:
    """The Pareto front among methods averaged over every task: a mean over fewer tasks is not
    comparable with the others, so such a method is drawn hollow and labelled n/N, never on the front."""
    whole = [i for i, r in enumerate(rows) if not r.mean_tasks.partial]
    return [whole[i] for i in pareto_front([pts[i] for i in whole])]


def _scatter(table: Table, style: dict, xkey: str, xlabel: str, title: str, refs: bool):
    fig = _figure(SCATTER_SIZE)
    ax = fig.add_subplot()
    rows = [r for r in by_mean(table.rows) if r.costs.get(xkey) and r.mean_tasks.mean is not None]
    pts = [(r.costs[xkey], r.mean_tasks.mean) for r in rows]
    ref_rows = [r for r in table.references if refs and r.costs.get(xkey) and r.mean_tasks.mean is not None]
    if xkey == "params_m":
        front = whole_suite_front(rows, pts)
        if len(front) >= 2:
            ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], drawstyle="steps-post", color="0.3",
                    lw=1.2, ls="--", zorder=1, label="Pareto front (ours, methods on every task)")
        for i in front:
            ax.scatter(*pts[i], s=260, facecolors="none", edgecolors="black", linewidths=1.6, zorder=2)
    for row, (x, y) in zip(rows, pts):
        color, marker = style[row.method]
        xerr = row.costs.get(f"{xkey}_std")  # throughput: the spread over the method's runs
        if row.mean_tasks.std is not None or xerr:
            ax.errorbar(x, y, yerr=row.mean_tasks.std, xerr=xerr or None, fmt="none", ecolor=color, capsize=3,
                        zorder=3)
        fill = {"facecolors": "none", "edgecolors": [color], "linewidths": 1.6} if row.mean_tasks.partial else \
            {"color": color, "edgecolors": "white", "linewidths": 0.8}  # hollow: a mean over fewer tasks
        ax.scatter(x, y, s=90, marker=marker, zorder=4, label=_legend_label(row), **fill)
    for row in ref_rows:
        color, marker = style.get(row.method, ("0.4", "o"))
        ax.scatter(row.costs[xkey], row.mean_tasks.mean, s=90, facecolors="none", edgecolors=[color],
                   marker=marker, linewidths=1.6, zorder=4, label=f"{row.method} (published, hollow)")
    if not rows and not ref_rows:
        _no_data(ax, "no complete runs with this measurement")
    else:
        xs = [p[0] for p in pts] + [r.costs[xkey] for r in ref_rows]
        if xkey == "params_m" or max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        fig.legend(loc="outside lower center", ncols=4, fontsize=9, frameon=False)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"Mean {_metric_label(table)} over tasks (%)")
    ax.grid(True, which="major", alpha=0.3)
    _title(fig, title, table)
    return fig


def _metric_label(table: Table) -> str:
    return "val200 top-1" if table.metric == "val_top1" else "test top-1"


def plot_accuracy_vs_params(table: Table, style: dict):
    return _scatter(table, style, "params_m", "Trainable parameters incl. head (M, log scale)",
                    "Accuracy vs trainable parameters", refs=True)


def plot_accuracy_vs_throughput(table: Table, style: dict):
    device = f", {table.devices[0]}" if len(table.devices) == 1 else ""
    return _scatter(table, style, "infer_img_per_s", f"Inference throughput (images/s{device})",
                    "Accuracy vs inference throughput", refs=False)


def heatmap_figsize(n_rows: int, n_cols: int) -> tuple[float, float]:
    """Inches; multiples of 0.1 so that size × DPI is a whole number of pixels."""
    return (round(max(8.0, 3.4 + 0.62 * n_cols), 1), round(2.6 + 0.42 * n_rows, 1))


def plot_heatmap(table: Table):
    import numpy as np
    from matplotlib import colormaps

    rows = [*by_mean(table.rows), *table.references]
    tasks = table.layout.tasks
    cols = [*tasks, "mean"]
    data = np.full((len(rows), len(cols)), np.nan)
    text = [["" for _ in cols] for _ in rows]
    for i, row in enumerate(rows):
        for j, task in enumerate(tasks):
            cell = row.cells.get(task)
            if cell and cell.by_seed:
                data[i, j] = cell.mean
                text[i][j] = f"{cell.mean:.1f}" + ("†" if cell.failed else "")
            elif cell and cell.failed:
                text[i][j] = "/".join(sorted({STATUS_TEXT.get(s, s)[:4] for s, _ in cell.failed.values()}))
            else:
                text[i][j] = "–"
        if row.mean_tasks.mean is not None:
            data[i, -1] = row.mean_tasks.mean
            text[i][-1] = f"{row.mean_tasks.mean:.1f}" + ("*" if row.mean_tasks.partial else "")
    fig = _figure(heatmap_figsize(len(rows), len(cols)))
    ax = fig.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad="0.88")
    img = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(cols)):
            value = data[i, j]
            dark = not np.isnan(value) and sum(cmap(value / 100)[:3]) < 1.6
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7.5, color="white" if dark else "black")
    ax.set_xticks(range(len(cols)), [*tasks, "Mean (* partial)"], rotation=45, ha="right", rotation_mode="anchor",
                  fontsize=8.5)
    ax.set_yticks(range(len(rows)), [r.method + (" (published)" if r.source != "peftbench" else "") for r in rows],
                  fontsize=9)
    edge = 0
    for _, ts in table.layout.groups:
        edge += len(ts)
        ax.axvline(edge - 0.5, color="white", lw=3)
    if table.references:
        ax.axhline(len(table.rows) - 0.5, color="white", lw=4)
    ax.tick_params(length=0)
    ax.set_xlabel("Task (groups separated by white lines)")
    ax.set_ylabel("Method")
    fig.colorbar(img, ax=ax, label=f"{_metric_label(table)} (%)", fraction=0.04, pad=0.02)
    _title(fig, f"Per-task {_metric_label(table)} (%); † fewer seeds, – no run", table)
    return fig


def plot_group_means(table: Table, style: dict):
    import numpy as np
    from matplotlib.patches import Patch

    fig = _figure(BAR_SIZE)
    ax = fig.add_subplot()
    bars = [(g.capitalize(), g) for g, _ in table.layout.groups] + [("All tasks", None)]
    rows = [r for r in by_mean(table.rows) if r.mean_tasks.mean is not None]
    width = 0.8 / max(len(rows), 1)
    partial_any = False
    for k, row in enumerate(rows):
        color, _ = style[row.method]
        avgs = [row.group_means.get(g) if g else row.mean_tasks for _, g in bars]
        xs = np.arange(len(bars)) - 0.4 + width * (k + 0.5)
        heights = [a.mean if a and a.mean is not None else 0 for a in avgs]
        errs = [a.std if a and a.std is not None else 0 for a in avgs]
        hatches = ["//" if a and a.partial else "" for a in avgs]
        partial_any |= any(hatches)
        for x, h, e, hatch in zip(xs, heights, errs, hatches):
            ax.bar(x, h, width=width * 0.92, color=color, hatch=hatch, edgecolor="white", linewidth=0.5)
            if e:
                ax.errorbar(x, h, yerr=e, fmt="none", ecolor="black", capsize=3, lw=1)
    handles = [Patch(facecolor=style[r.method][0], label=r.method) for r in rows]
    if partial_any:
        handles.append(Patch(facecolor="0.7", hatch="//", edgecolor="white", label="mean over fewer tasks"))
    if any(r.seeds and len(r.seeds) > 1 for r in rows):
        handles.append(Patch(facecolor="none", edgecolor="none", label="error bars: std over seeds"))
    if rows:
        fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=9, frameon=False)
    else:
        _no_data(ax, "no complete runs")
    ax.set_xticks(range(len(bars)), [name for name, _ in bars])
    ax.set_ylim(0, 100)
    ax.set_xlabel("Task group")
    ax.set_ylabel(f"Mean {_metric_label(table)} (%)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    _title(fig, "Mean accuracy per task group", table)
    return fig


def _curves(records: list[dict]) -> dict[tuple[str, str], dict[str, list[list[float]]]]:
    """(task, method) -> per-epoch series over seeds: {"train_loss": [[...], ...], "val_top1": [...]}."""
    out: dict[tuple[str, str], dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    for rec in records:
        history = (rec.get("metrics") or {}).get("history") or []
        for key in ("train_loss", "val_top1"):
            series = [h.get(key) for h in history]
            if series and all(v is not None for v in series):
                out[(rec["task"], rec["method"])][key].append(series)
    return out


def plot_training_curves(table: Table, style: dict, records: list[dict]):
    """Mean over seeds of each epoch's training loss (solid) and, under protocol=val, val200 top-1
    (dashed, right axis), one panel per task; records from before ``metrics.history`` have none."""
    from matplotlib.ticker import MaxNLocator

    curves = _curves(records)
    tasks = [t for t in table.layout.tasks if any(task == t for task, _ in curves)]
    cols = min(3, max(1, len(tasks)))
    fig = _figure((SCATTER_SIZE[0], 2.8 * -(-max(1, len(tasks)) // cols) + 1.2))
    if not tasks:
        _no_data(fig.add_subplot(), "no per-epoch history in these records (written before metrics.history)")
    for k, task in enumerate(tasks):
        ax = fig.add_subplot(-(-len(tasks) // cols), cols, k + 1)
        twin = None
        order = {row.method: i for i, row in enumerate(by_mean(table.rows))}
        for method in sorted((m for t, m in curves if t == task), key=lambda m: (order.get(m, len(order)), m)):
            color, _ = style.get(method, method_style(method))
            series = curves[(task, method)]
            for key, axis, ls in (("train_loss", ax, "-"), ("val_top1", None, "--")):
                runs = series.get(key)
                if not runs or len({len(r) for r in runs}) != 1:
                    continue
                if axis is None:
                    twin = twin or ax.twinx()
                    axis = twin
                axis.plot(range(1, len(runs[0]) + 1), [fmean(v) for v in zip(*runs)], ls=ls, color=color,
                          label=method if key == "train_loss" else None)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("train loss")
        if twin is not None:
            twin.set_ylabel("val200 top-1 (%, dashed)")
        ax.grid(True, alpha=0.3)
    if tasks:
        handles = {h.get_label(): h for ax in fig.axes for h in ax.get_lines() if not h.get_label().startswith("_")}
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=5, fontsize=9,
                   frameon=False)
    _title(fig, "Training curves (mean over seeds)", table)
    return fig


def table_figures(table: Table, style: dict, records: list[dict] | None = None) -> dict[str, Any]:
    names = plot_names(table.number)
    return {names["accuracy_vs_params"]: plot_accuracy_vs_params(table, style),
            names["heatmap"]: plot_heatmap(table),
            names["accuracy_vs_throughput"]: plot_accuracy_vs_throughput(table, style),
            names["group_means"]: plot_group_means(table, style),
            names["training_curves"]: plot_training_curves(table, style, records or []),
            names["critical_difference"]: plot_critical_difference(table, _figure)}
