"""Calibration of the report's statistics on simulated records with a known truth (fixed RNG seed).

(a) two methods drawn from one distribution are called "no detectable difference" in ≥ 90% of replicates;
(b) a planted +2-point effect is detected in ≥ 90%; (c) bold holds every method tied with the best and
never one significantly worse. Plus the exact behaviour of the edge cases.
"""

from __future__ import annotations

import numpy as np
import pytest

from peftbench.report import stats

TASKS = [f"t{i}" for i in range(19)]
SEEDS = range(5)
REPLICATES = 200


def _method(rng: np.random.Generator, base: np.ndarray, shift: np.ndarray | float, seed_sd: float = 1.0
            ) -> dict[str, dict[int, float]]:
    values = base + shift
    return {t: {s: float(values[i] + rng.normal(0, seed_sd)) for s in SEEDS} for i, t in enumerate(TASKS)}


def _verdicts(effect: float, task_noise: float) -> list[str]:
    rng = np.random.default_rng(2024)
    out = []
    for _ in range(REPLICATES):
        base = rng.uniform(30, 90, len(TASKS))  # tasks differ a lot in difficulty
        a = _method(rng, base, 0.0)
        b = _method(rng, base, effect + rng.normal(0, task_noise, len(TASKS)) if task_noise else effect)
        out.append(stats.compare("A", "B", a, b, with_intervals=False).verdict)
    return out


def test_a_same_distribution_is_no_detectable_difference():
    verdicts = _verdicts(effect=0.0, task_noise=0.0)
    rate = sum(v.startswith("no detectable difference") for v in verdicts) / REPLICATES
    assert rate >= 0.90, rate
    assert verdicts[0] == "no detectable difference at 5 seed(s) and 19 tasks" or verdicts[0].endswith("better")


def test_b_planted_two_points_are_detected():
    verdicts = _verdicts(effect=2.0, task_noise=0.5)
    rate = sum(v == "B better" for v in verdicts) / REPLICATES
    assert rate >= 0.90, rate


def test_holm_equals_statsmodels():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(11)
    for n in (1, 3, 19):
        for _ in range(2):
            p = rng.uniform(0, 0.2, n)
            p[rng.integers(n)] = p[0]  # a tie
            assert stats.holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]), abs=1e-12)


def test_c_bold_is_every_method_tied_with_the_best_and_none_worse():
    from scipy.stats import ttest_rel

    rng = np.random.default_rng(7)
    checked_tied = checked_worse = 0
    for _ in range(100):
        truth = {"best": 70.0, "twin": 70.0, "close": 69.5, "worse": 64.0, "far": 50.0}
        column = {m: {s: mu + rng.normal(0, 1.0) for s in range(3)} for m, mu in truth.items()}
        bold = stats.tied_in_task(column)
        means = {m: np.mean(list(v.values())) for m, v in column.items()}
        best = max(means, key=means.get)
        others = [m for m in column if m != best]
        ps = [ttest_rel([column[best][s] for s in range(3)], [column[m][s] for s in range(3)],
                        alternative="greater").pvalue for m in others]
        adjusted = dict(zip(others, stats.holm(ps)))
        expected = {best} | {m for m in others if adjusted[m] >= stats.ALPHA}
        assert bold == expected
        checked_tied += len(expected) - 1
        checked_worse += len(column) - len(expected)
        assert "far" not in bold  # 20 points below with a 1-point seed spread: always significantly worse
    assert checked_tied > 50 and checked_worse > 100  # both kinds of decision were exercised


def test_bold_needs_a_test_and_more_than_one_method():
    assert stats.tied_in_task({"a": {0: 70.0}, "b": {0: 60.0}}) == set()  # one seed: nothing can be tested
    assert stats.tied_in_task({"a": {0: 70.0, 1: 71.0}}) == set()  # a lone method is not "tied" with anything
    same = {0: 70.0, 1: 71.0, 2: 69.0}
    assert stats.tied_in_task({"a": same, "b": dict(same)}) == {"a", "b"}  # identical runs are tied
    # averages: 19 tasks on which one method is 5 points lower everywhere → significantly worse
    per_task = {"a": {t: 60.0 + i for i, t in enumerate(TASKS)}, "b": {t: 55.0 + i for i, t in enumerate(TASKS)}}
    averages = {m: float(np.mean(list(v.values()))) for m, v in per_task.items()}
    assert stats.tied_in_average(averages, per_task) == {"a"}
    # ... but over 4 tasks no Wilcoxon test can reach p < 0.05 one-sided (smallest p = 1/16): tied
    four = {m: dict(list(v.items())[:4]) for m, v in per_task.items()}
    assert stats.tied_in_average({m: float(np.mean(list(v.values()))) for m, v in four.items()}, four) == {"a", "b"}


def test_stratified_interval_covers_and_shrinks_with_seeds():
    rng = np.random.default_rng(3)
    base = rng.uniform(30, 90, len(TASKS))
    few = [{s: float(b + rng.normal(0, 2)) for s in range(3)} for b in base]
    many = [{s: float(b + rng.normal(0, 2)) for s in range(30)} for b in base]
    lo, hi = stats.average_interval(few)
    lo2, hi2 = stats.average_interval(many)
    assert lo < np.mean([np.mean(list(t.values())) for t in few]) < hi
    assert (hi2 - lo2) < (hi - lo) / 2  # 10× the seeds: about a third of the width
    assert stats.average_interval([{0: 1.0}, {0: 2.0, 1: 3.0}]) is None  # a task with one seed: no interval
    assert stats.average_interval([{0: 1.0, 1: 1.0}]) == (1.0, 1.0)  # no spread: the point itself


def test_interval_is_seeded_and_tasks_are_held_fixed():
    tasks = [{0: 10.0, 1: 12.0}, {0: 50.0, 1: 52.0}]
    assert stats.average_interval(tasks) == stats.average_interval(tasks)
    # resampling tasks (not seeds) would let the mean range from 11 to 51; seeds within tasks: 30 ± 1
    lo, hi = stats.average_interval(tasks)
    assert 29.0 <= lo <= hi <= 33.0


def test_probability_of_improvement_and_per_task_intervals():
    a = {"x": {0: 80.0, 1: 81.0}, "y": {0: 60.0, 1: 61.0}}
    b = {"x": {0: 70.0, 1: 71.0}, "y": {0: 60.0, 1: 61.0}}
    c = stats.compare("a", "b", a, b)
    # task x: every run of a beats every run of b (1.0); task y: ties count half, 61 > 60 once each way (0.5)
    assert c.p_improvement == pytest.approx(0.75)
    assert c.diffs == {"x": 10.0, "y": 0.0}
    assert c.diff_ci["x"][0] > 0 and c.diff_ci["y"][0] < 0 < c.diff_ci["y"][1]
    # one non-zero task difference: the signed-rank test cannot go below p = 1, and the verdict says so
    assert c.verdict == ("no detectable difference at 2 seed(s) and 2 tasks (too few tasks to tell: the "
                         "signed-rank test cannot go below p = 1 over them; the per-task intervals describe these "
                         "tasks)")


@pytest.mark.parametrize("n, floor", [(1, 1.0), (5, 0.0625), (6, 0.03125), (19, 2.0 ** -18)])
def test_smallest_signed_rank_p_is_what_scipy_gives_when_every_difference_agrees(n, floor):
    diffs = np.arange(1, n + 1, dtype=float)  # all positive, no ties: the exact test's extreme
    assert stats.smallest_signed_rank_p(n) == pytest.approx(floor)
    assert stats.signed_rank_p(diffs) == pytest.approx(floor)


def test_a_large_gap_over_five_tasks_is_no_evidence_and_says_why():
    a = {t: {0: 80.0 + i, 1: 81.0 + i} for i, t in enumerate("vwxyz")}
    b = {t: {0: 50.0, 1: 51.0} for t in "vwxyz"}
    c = stats.compare("a", "b", a, b)
    assert c.p_improvement == 1.0 and c.wilcoxon_p == pytest.approx(0.0625)
    assert c.verdict.startswith("no detectable difference at 2 seed(s) and 5 tasks (too few tasks to tell: ")
    six = stats.compare("a", "b", {**a, "u": {0: 90.0, 1: 91.0}}, {**b, "u": {0: 50.0, 1: 51.0}})
    assert six.verdict == "a better"  # 6 tasks of one sign: p = 0.03125


def test_rank_test_names_friedman_and_holm():
    rng = np.random.default_rng(0)
    base = rng.uniform(30, 90, len(TASKS))
    means = {m: {t: float(base[i] + shift + rng.normal(0, 0.3)) for i, t in enumerate(TASKS)}
             for m, shift in (("good", 5.0), ("mid", 2.5), ("bad", 0.0))}
    test = stats.rank_test(means)
    assert test.friedman_p < 0.001 and test.mean_ranks["good"] < test.mean_ranks["mid"] < test.mean_ranks["bad"]
    assert all(p < stats.ALPHA for p in test.posthoc_p.values())
    assert "Friedman" in test.name and "Holm" in test.name
    assert stats.rank_test({"a": means["good"], "b": means["bad"]}) is None  # Friedman needs 3 methods
