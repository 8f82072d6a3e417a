"""Which differences the seeds and tasks can support: intervals, ties with the best, pairwise verdicts.

All tests come from scipy.stats (bootstrap, paired t-test, Wilcoxon signed-rank, Friedman); only Holm's
correction is written out here (see ``holm``). The rules:

- **Intervals** of an average over tasks (a group mean, the mean of the tasks, the mean of the group
  means) are 95% percentile intervals of a *stratified* bootstrap: the seeds of each task are
  resampled, the tasks are held fixed (Agarwal et al., NeurIPS 2021). ``scipy.stats.bootstrap`` does
  exactly this when each task's seeds are passed as a separate sample: it resamples every sample
  independently. An interval needs two or more seeds in every task of the average.
- **Tied with the best** (bold): in a task column, each method is compared with the column's best
  by a one-sided paired t-test over the seeds both have; in an average column, by a one-sided
  Wilcoxon signed-rank test over the per-task means of the tasks both have. The p-values of a column
  are Holm-corrected; a method is tied with the best unless its corrected p-value is below ALPHA. A
  column whose methods cannot be tested (one seed in a task column) bolds nothing.
- **A against B** (``compare``): per task, the difference of the means with a bootstrap interval;
  overall, the probability of improvement P(A > B) (the chance that a run of A beats a run of B on a
  task, averaged over tasks) with a stratified bootstrap interval, and a two-sided Wilcoxon
  signed-rank test over the per-task means that decides the verdict.

Everything is seeded (``RNG_SEED``): the same records give the same report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
CONFIDENCE = 0.95
N_RESAMPLES = 2000
RNG_SEED = 0

BOLD_NOTE = ("Bold: tied with the best of the column — not significantly worse at α = 0.05 after Holm's correction "
             "(task columns: one-sided paired t-test over seeds; averages: one-sided Wilcoxon signed-rank test over "
             "the per-task means); a column that cannot be tested bolds nothing.")
ONE_SEED_NOTE = ("One seed per run: no intervals and no ties within a task can be computed; run `--seeds 0,1,2` for "
                 "95% intervals and significance within tasks.")

Seeds = dict[int, float]  # seed → accuracy (%) of one method on one task


# ----------------------------------------------------------------------------------------------
# intervals


def _groups_mean(groups: Sequence[Sequence[int]]) -> Callable[..., np.ndarray]:
    """The statistic 'mean over groups of the mean over the group's tasks of the task's mean'.
    One group holding every task is the plain mean of the tasks."""

    def statistic(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        task_means = [s.mean(axis=axis) for s in samples]
        return np.mean([np.mean([task_means[i] for i in g], axis=0) for g in groups], axis=0)

    return statistic


def average_interval(tasks: Sequence[Seeds], groups: Sequence[Sequence[int]] | None = None
                     ) -> tuple[float, float] | None:
    """95% stratified-bootstrap interval of an average of per-task means (``groups``: indices into
    ``tasks`` per group, for a mean of group means; default one group). None unless every task has
    two or more seeds."""
    if not tasks or any(len(t) < 2 for t in tasks):
        return None
    samples = [np.array(list(t.values()), dtype=float) for t in tasks]
    groups = groups or [list(range(len(tasks)))]
    if all(np.ptp(s) == 0 for s in samples):  # no spread to resample: the interval is the point
        value = float(_groups_mean(groups)(*samples))
        return value, value
    result = stats.bootstrap(samples, _groups_mean(groups), n_resamples=N_RESAMPLES, vectorized=True,
                             method="percentile", confidence_level=CONFIDENCE, rng=np.random.default_rng(RNG_SEED))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def difference_interval(a: Seeds, b: Seeds) -> tuple[float, float] | None:
    """95% bootstrap interval of mean(a) − mean(b), each method's seeds resampled on their own."""
    if len(a) < 2 or len(b) < 2:
        return None
    xa, xb = np.array(list(a.values()), float), np.array(list(b.values()), float)
    if np.ptp(xa) == 0 and np.ptp(xb) == 0:
        return float(xa.mean() - xb.mean()), float(xa.mean() - xb.mean())
    result = stats.bootstrap((xa, xb), lambda x, y, axis=-1: x.mean(axis=axis) - y.mean(axis=axis),
                             n_resamples=N_RESAMPLES, vectorized=True, method="percentile",
                             confidence_level=CONFIDENCE, rng=np.random.default_rng(RNG_SEED))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


# ----------------------------------------------------------------------------------------------
# one-sided "worse than the best" tests and ties


def _paired_worse_p(best: Seeds, other: Seeds) -> float | None:
    """One-sided paired t-test that ``other`` is below ``best`` over their common seeds; None if
    fewer than two seeds are common."""
    common = sorted(set(best) & set(other))
    if len(common) < 2:
        return None
    diff = np.array([best[s] - other[s] for s in common])
    if np.ptp(diff) == 0:  # every seed differs by the same amount: the t statistic is ±inf or undefined
        return 0.0 if diff[0] > 0 else 1.0
    return float(stats.ttest_rel([best[s] for s in common], [other[s] for s in common], alternative="greater").pvalue)


def signed_rank_p(diff: Sequence[float], alternative: str = "two-sided") -> float:
    """Wilcoxon signed-rank p-value of per-task differences (zeros dropped; all zero: 1.0)."""
    d = np.asarray(diff, float)
    if not np.any(d != 0):
        return 1.0
    return float(stats.wilcoxon(d, zero_method="wilcox", alternative=alternative).pvalue)


def _tasks_worse_p(best: dict[str, float], other: dict[str, float]) -> float | None:
    common = sorted(set(best) & set(other))
    if not common:
        return None
    return signed_rank_p([best[t] - other[t] for t in common], alternative="greater")


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values. Written out (four lines of numpy) rather than taken from
    statsmodels' ``multipletests``, which gives the same numbers (tests/test_stats.py checks it) but runs
    a full ``gc.collect()`` on every call: 0.1 s each in a process that has torch loaded."""
    p = np.asarray(pvalues, float)
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(np.minimum(1.0, (len(p) - np.arange(len(p))) * p[order]))
    return [float(v) for v in stepped[np.argsort(order, kind="stable")]]


def _tied(means: dict[str, float], worse_p: Callable[[str, str], float | None]) -> set[str]:
    """Methods tied with the column's best (the best included); empty when some method cannot be tested
    or the column has a single method (nothing to compare)."""
    if len(means) < 2:
        return set()
    best = max(means, key=lambda m: (means[m], m))
    others = [m for m in means if m != best]
    ps = [worse_p(best, m) for m in others]
    if any(p is None for p in ps):
        return set()
    return {best} | {m for m, p in zip(others, holm(ps)) if p >= ALPHA}


def tied_in_task(cells: dict[str, Seeds]) -> set[str]:
    """Methods (keys) tied with the best in one task column (values: each method's seeds)."""
    cells = {m: s for m, s in cells.items() if s}
    means = {m: float(np.mean(list(s.values()))) for m, s in cells.items()}
    return _tied(means, lambda best, m: _paired_worse_p(cells[best], cells[m]))


def tied_in_average(averages: dict[str, float], task_means: dict[str, dict[str, float]]) -> set[str]:
    """Methods tied with the best in an average column: ``averages`` method → the column's value,
    ``task_means`` method → task → the method's mean on that task (the tasks of the average)."""
    return _tied(averages, lambda best, m: _tasks_worse_p(task_means[best], task_means[m]))


# ----------------------------------------------------------------------------------------------
# A against B


def _improvement(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(X_a > X_b) averaged over tasks; samples alternate a_task0, b_task0, a_task1, b_task1, ..."""
    per_task = []
    for a, b in zip(samples[0::2], samples[1::2]):
        x, y = np.expand_dims(a, -1), np.expand_dims(b, -2)
        per_task.append(((x > y) + 0.5 * (x == y)).mean(axis=(-1, -2)))
    return np.mean(per_task, axis=0)


@dataclass
class Comparison:
    a: str
    b: str
    tasks: list[str]
    diffs: dict[str, float]  # task → mean(A) − mean(B)
    diff_ci: dict[str, tuple[float, float] | None]
    p_improvement: float
    p_improvement_ci: tuple[float, float] | None
    wilcoxon_p: float
    seeds: int  # fewest seeds of a (method, task) cell in the comparison
    verdict: str


def smallest_signed_rank_p(n: int) -> float:
    """The smallest two-sided p-value the exact signed-rank test can give over ``n`` non-zero differences
    (every difference of one sign): 2 / 2**n. Over 5 tasks that is 0.0625: no difference can be detected."""
    return min(1.0, 2.0 ** (1 - n))


def verdict(a: str, b: str, diffs: Sequence[float], seeds: int) -> tuple[str, float]:
    """('A better' / 'B better' / 'no detectable difference ...', two-sided Wilcoxon p) over per-task
    mean differences A − B. Where the tasks are too few for the test to reach α at all, the verdict says
    so, so that a large gap on few tasks does not read as evidence of no difference."""
    p = signed_rank_p(diffs)
    if p < ALPHA:
        return (f"{a} better" if float(np.median(diffs)) > 0 else f"{b} better"), p
    text = f"no detectable difference at {seeds} seed(s) and {len(diffs)} tasks"
    floor = smallest_signed_rank_p(int(np.count_nonzero(np.asarray(diffs, float))))
    if floor >= ALPHA:
        text += (f" (too few tasks to tell: the signed-rank test cannot go below p = {floor:.3g} over them; "
                 "the per-task intervals describe these tasks)")
    return text, p


def compare(a: str, b: str, cells_a: dict[str, Seeds], cells_b: dict[str, Seeds],
            with_intervals: bool = True) -> Comparison:
    """Compare two methods over the tasks both completed (cells: task → seeds)."""
    tasks = [t for t in cells_a if cells_a[t] and cells_b.get(t)]
    if not tasks:
        raise ValueError(f"{a} and {b} have no completed task in common")
    diffs = {t: float(np.mean(list(cells_a[t].values())) - np.mean(list(cells_b[t].values()))) for t in tasks}
    seeds = min(min(len(cells_a[t]), len(cells_b[t])) for t in tasks)
    text, p = verdict(a, b, list(diffs.values()), seeds)
    samples = [np.array(list(c[t].values()), float) for t in tasks for c in (cells_a, cells_b)]
    p_imp = float(_improvement(*samples))
    p_ci = None
    if with_intervals and seeds >= 2 and any(np.ptp(s) > 0 for s in samples):
        res = stats.bootstrap(samples, _improvement, n_resamples=N_RESAMPLES, vectorized=True, method="percentile",
                              confidence_level=CONFIDENCE, rng=np.random.default_rng(RNG_SEED))
        p_ci = float(res.confidence_interval.low), float(res.confidence_interval.high)
    diff_ci = {t: difference_interval(cells_a[t], cells_b[t]) if with_intervals else None for t in tasks}
    return Comparison(a, b, tasks, diffs, diff_ci, p_imp, p_ci, p, seeds, text)


# ----------------------------------------------------------------------------------------------
# Friedman and the post-hoc test behind the critical-difference diagram


@dataclass
class RankTest:
    methods: list[str]
    tasks: list[str]
    mean_ranks: dict[str, float]  # 1 = best
    friedman_stat: float
    friedman_p: float
    posthoc_p: dict[tuple[str, str], float]  # Holm-corrected Wilcoxon p per pair (1.0 when Friedman is not significant)

    @property
    def name(self) -> str:
        return ("Friedman test, then pairwise Wilcoxon signed-rank tests with Holm's correction "
                f"(α = {ALPHA})")


def rank_test(task_means: dict[str, dict[str, float]]) -> RankTest | None:
    """Average ranks over the tasks every method completed, Friedman's test and, when it rejects,
    Holm-corrected pairwise Wilcoxon tests. None with fewer than 3 methods or 2 common tasks."""
    methods = sorted(task_means)
    if len(methods) < 3:
        return None
    tasks = sorted(set.intersection(*(set(task_means[m]) for m in methods)))
    if len(tasks) < 2:
        return None
    scores = np.array([[task_means[m][t] for m in methods] for t in tasks])  # tasks × methods
    ranks = np.array([stats.rankdata(-row) for row in scores]).mean(axis=0)
    if np.all(scores == scores[:, :1]):  # every method equal on every task
        stat, p = 0.0, 1.0
    else:
        stat, p = (float(v) for v in stats.friedmanchisquare(*scores.T))
    pairs = [(methods[i], methods[j]) for i in range(len(methods)) for j in range(i + 1, len(methods))]
    raw = [signed_rank_p(scores[:, methods.index(x)] - scores[:, methods.index(y)]) for x, y in pairs]
    adjusted = holm(raw) if p < ALPHA else [1.0] * len(pairs)
    return RankTest(methods, tasks, dict(zip(methods, map(float, ranks))), stat, p, dict(zip(pairs, adjusted)))
