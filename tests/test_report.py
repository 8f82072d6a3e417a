"""The report: golden table text, separate tables for incomparable runs, plots, bad files."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from PIL import Image

from peftbench import report
from peftbench.atomic import staged_folder
from peftbench.data.tasks import SUITES, TaskSpec
from peftbench.errors import UsageError
from peftbench.records import record_path, write_record

BASE = "vit_base_patch16_224.orig_in21k"
# seed 0 gets these accuracies, seed 1 two points more: every cell is x+1 ± sqrt(2)
ACC = {
    "linear": {"cifar100": 50, "dtd": 60, "eurosat": 80, "clevr_count": 40, "kitti": 30},
    "ship": {"cifar100": 70, "dtd": 64, "eurosat": 90, "clevr_count": 70},  # kitti: the missing cell
    "vpt_deep": {"cifar100": 68, "dtd": 62, "eurosat": 88, "clevr_count": 66, "kitti": 50},
}
COSTS = {  # trainable params, gflops, train img/s, infer img/s, peak GiB (head: 100k params everywhere)
    "linear": (100_000, 35.1, 1400, 4100, 1),
    "ship": (400_000, 35.8, 800, 3900, 3),
    "vpt_deep": (700_000, 49.1, 700, 2900, 4),
}


def make_record(method: str, task: str, seed: int, acc: float | None, status: str = "complete",
                reason: str | None = None, backbone: str = BASE, checksum: str = "sha256:aaaa",
                weights: str = "pretrained", suite: str = "vtab1k", protocol: str = "final") -> dict:
    trainable, gflops, train_ips, infer_ips, gib = COSTS.get(method, COSTS["linear"])
    metrics = {} if status != "complete" else {
        ("val_top1" if protocol == "val" else "test_top1"): acc, "trainable_params": trainable,
        "head_params": 100_000, "total_params": 86_000_000, "gflops": gflops, "train_img_per_s": train_ips,
        "infer_img_per_s": infer_ips, "peak_mem_bytes": gib * 2**30, "peak_mem_kind": "cuda_max_allocated",
        "precision": "bf16", "wall_s": {"train": 10.0, "test": 2.0}}
    return {
        "run_id": f"{method}-{task}-{seed}-{backbone[:9]}-{weights}", "schema": 1, "status": status,
        "reason": reason, "method": method, "task": task, "suite": suite, "seed": seed,
        "created": "2025-01-01T00:00:00Z",
        "config": {"train": {"protocol": protocol, "epochs": 100, "precision": "auto"}, "method": {}},
        "backbone": {"name": backbone, "weights": weights, "checksum": checksum, "img_size": [224, 224]},
        "data": {"checksum": "d"}, "metrics": metrics, "provenance": {"device": "NVIDIA H100"},
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for method, accs in ACC.items():
        for task, acc in accs.items():
            for seed in (0, 1):
                rec = make_record(method, task, seed, acc + 2 * seed)
                if (method, task, seed) == ("vpt_deep", "dtd", 1):
                    rec = make_record(method, task, seed, None, status="diverged", reason="loss is NaN at epoch 3")
                write_record(record_path(root, rec), rec)
    other = make_record("linear", "cifar100", 0, 55.0, backbone="vit_small_patch16_224.augreg_in21k",
                        checksum="sha256:bbbb")
    write_record(root / "small" / "linear.json", other)
    (root / "linear" / "cifar100" / "seed9-broken.json").write_text('{"run_id": "x", "status": "compl')
    return root


@pytest.fixture(scope="module")
def written(runs, tmp_path_factory) -> tuple[Path, list[Path], list[str]]:
    out = tmp_path_factory.mktemp("report")
    problems: list[str] = []
    files = report.write_report(runs, out, on_problem=problems.append)
    return out, files, problems


def _section(md: str, heading_start: str) -> list[str]:
    lines = md.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(heading_start))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def _exact_interval(weights: list[float]) -> tuple[float, float]:
    """Exact 2.5% / 97.5% quantiles of sum(w_i * o_i), o_i independent in {-1, 0, 1} at 1/4, 1/2, 1/4."""
    dist: dict[float, float] = {}
    for offsets in itertools.product((-1, 0, 1), repeat=len(weights)):
        value = round(sum(w * o for w, o in zip(weights, offsets)), 9)
        dist[value] = dist.get(value, 0.0) + math.prod(0.5 if o == 0 else 0.25 for o in offsets)
    values = sorted(dist)
    cdf = list(itertools.accumulate(dist[v] for v in values))
    lo = next(v for v, c in zip(values, cdf) if c > 0.025)
    hi = next(v for v, c in zip(values, cdf) if c >= 0.975)
    return lo, hi


def test_main_table_golden(written):
    out, _, _ = written
    md = (out / "summary.md").read_text()
    table1 = _section(md, "## Table 1")
    assert table1[0].startswith(f"## Table 1 — {BASE} (weights pretrained")
    s = "± 1.4"  # sample std of {x, x + 2}
    assert f"{math.sqrt(2):.1f}" == "1.4"

    # linear: cells 51, 61 | 81 | 41, 31 — both averages by hand
    lin_nat, lin_spe, lin_str = (51 + 61) / 2, 81 / 1, (41 + 31) / 2
    lin_mean = (51 + 61 + 81 + 41 + 31) / 5
    lin_groups = (lin_nat + lin_spe + lin_str) / 3
    assert (lin_mean, round(lin_groups, 1)) == (53.0, 57.7)
    # ship: kitti missing → means over 4 of 19 tasks
    ship_mean = (71 + 65 + 91 + 71) / 4
    ship_groups = ((71 + 65) / 2 + 91 + 71) / 3
    # vpt_deep: dtd seed 1 diverged → dtd over seed 0 only; no seed completed every task → no ± on averages
    vpt_nat = (69 + 62) / 2
    vpt_mean = (69 + 62 + 89 + 67 + 51) / 5
    vpt_groups = (vpt_nat + 89 + (67 + 51) / 2) / 3

    # 95% intervals: every cell is {x, x + 2}, so a task's resampled mean is x + 1 + o with o = -1, 0, +1 at
    # probabilities 1/4, 1/2, 1/4; the exact quantiles of the average of those offsets, enumerated here, are
    # what the stratified bootstrap (2,000 resamples) finds
    def ci(mean: float, weights: list[float]) -> str:
        lo, hi = _exact_interval(weights)
        return f"[{mean + lo:.1f}, {mean + hi:.1f}]"

    half, third, sixth = [0.5, 0.5], [1 / 3], [1 / 6, 1 / 6]
    # bold: task columns — the best and the methods a one-sided paired t-test over seeds (Holm) cannot put below
    # it (here every other method trails the best by the same amount on both seeds, p = 0); dtd bolds nothing
    # (vpt_deep has one seed there); averages over 1–5 tasks: one-sided Wilcoxon over tasks can reach at best
    # p = 1/32, Holm over two comparisons 1/16, so every method is tied with the best
    b = "**{}**".format
    expected = [
        ("| Method | cifar100 | dtd | Natural mean | eurosat | Specialized mean | clevr_count | kitti | "
         "Structured mean | Mean (19 tasks) | Mean of 3 group means | Params (M) | Params excl. head (M) | "
         "GFLOPs | Train img/s | Infer img/s | Peak mem (GiB) | Seeds |"),
        "|:---|" + "---:|" * 17,
        (f"| linear | 51.0 {s} | 61.0 {s} | {b(f'{lin_nat:.1f} {ci(lin_nat, half)} (2/7)')} | 81.0 {s} | "
         f"{b(f'{lin_spe:.1f} {ci(lin_spe, [1])} (1/4)')} | 41.0 {s} | 31.0 {s} | "
         f"{b(f'{lin_str:.1f} {ci(lin_str, half)} (2/8)')} | {b(f'{lin_mean:.1f} {ci(lin_mean, [0.2] * 5)} (5/19)')} | "
         f"{b(f'{lin_groups:.1f} {ci(lin_groups, [*sixth, *third, *sixth])} (5/19)')} | 0.100 | 0.000 | 35.1 | "
         "1,400 | 4,100 | 1.00 | 2 |"),
        (f"| ship | {b(f'71.0 {s}')} | 65.0 {s} | {b(f'68.0 {ci(68, half)} (2/7)')} | {b(f'91.0 {s}')} | "
         f"{b(f'91.0 {ci(91, [1])} (1/4)')} | {b(f'71.0 {s}')} | – | {b(f'71.0 {ci(71, [1])} (1/8)')} | "
         f"{b(f'{ship_mean:.1f} {ci(ship_mean, [0.25] * 4)} (4/19)')} | "
         f"{b(f'{ship_groups:.1f} {ci(ship_groups, [*sixth, *third, *third])} (4/19)')} | 0.400 | 0.300 | 35.8 | "
         "800 | 3,900 | 3.00 | 2 |"),
        (f"| vpt_deep | 69.0 {s} | 62.0† | {b(f'{vpt_nat:.1f} (2/7)')} | 89.0 {s} | {b(f'89.0 {ci(89, [1])} (1/4)')} | "
         f"67.0 {s} | {b(f'51.0 {s}')} | {b(f'59.0 {ci(59, half)} (2/8)')} | {b(f'{vpt_mean:.1f} (5/19)')} | "
         f"{b(f'{vpt_groups:.1f} (5/19)')} | 0.700 | 0.600 | 49.1 | 700 | 2,900 | 4.00 | 1–2 |"),
    ]
    start = table1.index(expected[0])
    assert table1[start:start + len(expected)] == expected
    # the missing and the diverged cells are named in the footnotes
    notes = "\n".join(table1)
    assert "Not in the means (no completed run): ship: kitti (no run)." in notes
    assert "† vpt_deep / dtd: over 1 of 2 seeds; seed 1 diverged: loss is NaN at epoch 3." in notes


def test_reference_rows_under_ours_with_caveat(written):
    out, _, _ = written
    table1 = _section((out / "summary.md").read_text(), "## Table 1")
    rows = [ln for ln in table1 if ln.startswith("| ")]
    labels = [r.split(" | ")[0][2:] for r in rows[1:]]
    assert labels[:3] == ["linear", "ship", "vpt_deep"]  # ours first, references after
    assert all("(published [" in label for label in labels[3:]) and len(labels) == 8
    ship_ref = next(r for r in rows if r.startswith("| ship (published"))
    assert "⚠ best test epoch (test-set selection)" in ship_ref
    # published cifar100 76.63, dtd 73.94 (SHIP's released results) and their mean 75.285
    assert ship_ref.split(" | ")[1:4] == ["76.6", "73.9", "75.3 (2/7)"]
    # reference rows only for the table's methods (linear, ship, vpt_deep), one per source
    assert {label.split(" (published")[0] for label in labels[3:]} == {"linear", "ship", "vpt_deep"}
    # our means are untouched by the reference rows (checked exactly in the golden test)


def test_incomparable_backbone_gets_its_own_table(written):
    out, _, _ = written
    md = (out / "summary.md").read_text()
    table2 = _section(md, "## Table 2")
    assert "vit_small_patch16_224.augreg_in21k" in table2[0]
    assert "Differs from Table 1 in: backbone, weights checksum." in table2
    row = next(ln for ln in table2 if ln.startswith("| linear |"))
    assert row.split(" | ")[1] == "55.0"
    # ... and it is not in Table 1's linear / cifar100 cell (51.0 ± 1.4 there)
    table1_linear = next(ln for ln in _section(md, "## Table 1") if ln.startswith("| linear |"))
    assert table1_linear.split(" | ")[1] == "51.0 ± 1.4"


def test_random_init_flagged_and_other_suites_get_no_reference(monkeypatch):
    monkeypatch.setitem(SUITES, "mini", (TaskSpec("zeta", 3, "structured", 10, "16x16"),
                                         TaskSpec("alpha", 3, "natural", 10, "16x16")))
    recs = [make_record("linear", "cifar100", 0, 12.0, weights="none", checksum=None),
            make_record("linear", "zeta", 0, 40.0, suite="mini"),
            make_record("linear", "alpha", 0, 60.0, suite="mini"),
            make_record("linear", "eurosat", 0, 70.0, suite="nosuchsuite"),
            make_record("linear", "cifar100", 0, 71.0, suite="nosuchsuite")]
    tables = report.summary_tables(recs, report.load_reference())
    by_suite = {(t.setting.suite, t.random_init): t for t in tables}
    rand = by_suite[("vtab1k", True)]
    assert rand.title().startswith("⚠ RANDOM-INIT BACKBONE (weights: none)")
    assert rand.references == [] and "randomly initialised" in rand.reference_notes[0]
    mini = by_suite[("mini", False)]
    assert mini.references == [] and "suite 'mini'" in mini.reference_notes[0]
    assert mini.layout.tasks == ["alpha", "zeta"]  # natural before structured, then suite order
    unknown = by_suite[("nosuchsuite", False)]
    assert unknown.layout.total == 2 and unknown.layout.tasks == ["cifar100", "eurosat"]


def test_status_section_and_corrupt_file(written, runs):
    out, _, problems = written
    md = (out / "summary.md").read_text()
    status = _section(md, "## Run status")
    assert "| complete | 28 |" in status and "| diverged | 1 |" in status
    assert "| oom | 0 |" in status and "| failed | 0 |" in status
    assert "| vpt_deep | dtd | 1 | diverged | loss is NaN at epoch 3 |" in status
    assert len(problems) == 1 and "seed9-broken.json" in problems[0]
    assert "seed9-broken.json" in "\n".join(_section(md, "## Skipped files"))


def test_all_files_written_whole(written):
    out, files, _ = written
    names = {p.name for p in files}
    assert {"summary.md", "summary.csv", "summary.json", "records.csv"} <= names
    for table in ("", "_table2"):
        for kind in ("accuracy_vs_params", "heatmap", "accuracy_vs_throughput", "group_means"):
            for ext in ("png", "svg"):
                assert f"{kind}{table}.{ext}" in names
    assert all(p.stat().st_size > 0 for p in files)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left

    # literal pixel sizes at 150 dpi (the print-quality floor): 9 x 5.6 in scatter plots, a 10 x 5.6 in bar
    # chart, heatmaps 8 in wide and 2.6 + 0.42 in per row (8 rows: 3 methods + 5 references;
    # table 2, ViT-S: 1 row, no published rows beside it)
    expected = {"accuracy_vs_params.png": (1350, 840), "accuracy_vs_throughput.png": (1350, 840),
                "group_means.png": (1500, 840), "heatmap.png": (1200, 900), "heatmap_table2.png": (1200, 450)}
    for name, size in expected.items():
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.size == size, name
            assert tuple(round(d) for d in img.info["dpi"]) == (150, 150), name
    assert (out / "heatmap.svg").read_text().lstrip().startswith("<?xml")


def test_csv_and_json(written):
    import json

    import pandas as pd

    out, _, _ = written
    summary = pd.read_csv(out / "summary.csv")
    ours = summary[(summary.source == "peftbench") & (summary.table == 1)].set_index("method")
    assert ours.loc["linear", "mean_tasks"] == pytest.approx(53.0)
    assert ours.loc["linear", "mean_group_means"] == pytest.approx((56 + 81 + 36) / 3)
    assert ours.loc["ship", "mean_tasks_n_tasks"] == 4 and math.isnan(ours.loc["ship", "kitti"])
    records = pd.read_csv(out / "records.csv")
    assert len(records) == 29 and set(records.status) == {"complete", "diverged"}
    data = json.loads((out / "summary.json").read_text())
    assert [t["number"] for t in data["tables"]] == [1, 2]
    assert data["status"]["diverged"] == 1 and len(data["skipped_files"]) == 1


def test_no_records_is_a_usage_error(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "bad.json").write_text("[]")
    with pytest.raises(UsageError, match="no peftbench records") as err:
        report.write_report(tmp_path / "runs", tmp_path / "out", on_problem=lambda _: None)
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


def test_reference_points_hollow_only_when_parameters_known():
    recs = [make_record("ship", t, 0, 70.0) for t in ("cifar100", "dtd")]
    ref = [{"method": "ship", "task": t, "top1": "75", "protocol": "p", "source": "s", "params_m": "0.35"}
           for t in ("cifar100", "dtd")]
    ref += [{"method": "linear", "task": t, "top1": "60", "protocol": "p", "source": "s"} for t in ("cifar100", "dtd")]
    (table,) = report.summary_tables(recs, ref)
    fig = report.plot_accuracy_vs_params(table, report._style(["linear", "ship"]))
    labels = {c.get_label(): c for c in fig.axes[0].collections}
    assert len(labels["ship (published, hollow)"].get_facecolor()) == 0
    assert not any(label.startswith("linear") for label in labels)  # parameters unknown: not drawn


def test_pareto_front_and_atomic_write(tmp_path):
    assert report.pareto_front([(1, 50), (2, 60), (3, 55), (0.5, 40), (2, 60)]) == [3, 0, 1, 4]
    target = tmp_path / "report" / "summary.md"
    target.parent.mkdir()
    target.write_text("old\n")

    with pytest.raises(RuntimeError), staged_folder(target.parent) as stage:
        (stage / "summary.md").write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["report"]
    assert [p.name for p in target.parent.iterdir()] == ["summary.md"]


def test_builtin_mini_suite_layout_without_prior_import():
    import subprocess
    import sys

    code = ("from peftbench.report import task_layout; "
            "print([(g, ts) for g, ts in task_layout('mini', ['count', 'digits', 'texture']).groups])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[('natural', ['digits']), ('specialized', ['texture']), ('structured', ['count'])]"


def _table1(records: list[dict]) -> list[str]:
    md = report.render_markdown(report.summary_tables(records), records, [], Path("runs"), generated="now")
    return _section(md, "## Table 1")


def _column(lines: list[str], header: str) -> dict[str, str]:
    rows = [[c.strip() for c in ln.split("|")[1:-1]] for ln in lines if ln.startswith("| ")]
    at = rows[0].index(header)
    return {r[0]: r[at] for r in rows[1:]}


def test_stored_per_task_column_beside_the_parameters():
    """SHIP stores its 200 x 768 prototype bank per task on top of what it trains; VPT stores what it trains."""
    recs = []
    for method, stored in (("ship", 400_000 + 200 * 768), ("vpt_deep", 700_000)):
        rec = make_record(method, "cifar100", 0, 70.0)
        rec["metrics"]["stored_per_task_params"] = stored
        recs.append(rec)
    table1 = _table1(recs)
    header = next(ln for ln in table1 if ln.startswith("| Method"))
    assert "| Params excl. head (M) | Stored per task (M) | GFLOPs |" in header
    assert _column(table1, "Stored per task (M)") == {"ship": "0.554", "vpt_deep": "0.700"}
    assert any("Stored per task: what a user keeps for each task" in ln for ln in table1)
    assert not any("Stored per task" in ln for ln in _table1([make_record("linear", "cifar100", 0, 50.0)]))


def test_peak_memory_per_run_old_lifetime_figures_and_unmeasured_runs_are_told_apart():
    per_run, unmeasured = make_record("ship", "cifar100", 0, 70.0), make_record("linear", "cifar100", 0, 50.0)
    per_run["metrics"]["peak_mem_kind"] = "run_peak_rss"
    unmeasured["metrics"].update(peak_mem_bytes=None, peak_mem_kind=None)
    table1 = _table1([per_run, unmeasured])
    assert _column(table1, "Peak mem (GiB)") == {"linear": "—", "ship": "3.00"}
    notes = "\n".join(table1)
    assert "Peak mem: largest over the runs (peak resident set during the run)." in notes
    assert "Peak mem —: not measured" in notes and "lifetime high-water mark" not in notes
    old = make_record("linear", "cifar100", 0, 50.0)
    old["metrics"]["peak_mem_kind"] = "process_peak_rss"
    assert "is the sweep process's lifetime high-water mark" in "\n".join(_table1([old]))


def test_one_checkpoint_from_two_install_paths_is_named_once_in_the_title():
    from peftbench.report.aggregate import summary_tables

    recs = [make_record("linear", "dtd", 0, 50.0, weights="/a/resources/mini_vit.safetensors"),
            make_record("full", "dtd", 0, 60.0, weights="/b/resources/mini_vit.safetensors")]
    (table,) = summary_tables(recs)  # one checksum: one table
    assert "(weights mini_vit.safetensors, checksum " in table.title()
