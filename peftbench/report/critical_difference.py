"""The critical-difference diagram of a table: average ranks over its tasks, drawn by scikit-posthocs.

Methods joined by a bar are not significantly different (``stats.rank_test``: Friedman's test, then
Holm-corrected pairwise Wilcoxon signed-rank tests over the tasks); the test is named on the figure.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from .aggregate import Table
from .stats import ALPHA, rank_test


def _task_means(table: Table) -> dict[str, dict[str, float]]:
    return {r.method: {t: c.mean for t, c in r.cells.items() if c.by_seed} for r in table.rows}


def plot_critical_difference(table: Table, figure: Any) -> Any:
    """Draw into a new figure from ``figure(size)``; a figure that says why when it cannot be drawn."""
    import scikit_posthocs as sp

    test = rank_test(_task_means(table))
    if test is None:
        fig = figure((6.0, 1.6))
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, "No critical-difference diagram: it needs 3 or more methods with 2 or more tasks\n"
                "that all of them completed.", ha="center", va="center", fontsize=9)
        return fig
    fig = figure((7.0, 1.2 + 0.28 * len(test.methods)))
    ax = fig.add_subplot()
    sig = pd.DataFrame(1.0, index=test.methods, columns=test.methods)
    for (a, b), p in test.posthoc_p.items():
        sig.loc[a, b] = sig.loc[b, a] = p
    sp.critical_difference_diagram(pd.Series(test.mean_ranks), sig, ax=ax, alpha=ALPHA)
    verdict = "rejects equal ranks" if test.friedman_p < ALPHA else "cannot reject equal ranks: no post-hoc test"
    ax.set_title(f"Average rank over {len(test.tasks)} tasks (1 = best). Friedman χ² = {test.friedman_stat:.2f}, "
                 f"p = {test.friedman_p:.3g} ({verdict});\nbars join methods not significantly different "
                 f"(pairwise Wilcoxon signed-rank, Holm, α = {ALPHA})", fontsize=8)
    return fig
