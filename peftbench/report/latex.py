"""summary.tex (``peftbench report --latex``): the tables in the layout of the VTAB-1k papers.

Task columns under their group headers, the group means, the mean of the tasks (and of the group
means), trainable parameters; booktabs rules; bold as in summary.md (tied with the best, see
``stats``); cells mean ± std over seeds. Each table is a ``table*`` float ready to ``\\input``; the
preamble needs ``\\usepackage{booktabs,graphicx}``.
"""

from __future__ import annotations

from .aggregate import Average, Cell, Row, Table
from .stats import ALPHA

# stats.BOLD_NOTE and stats.ONE_SEED_NOTE in LaTeX (no Unicode Greek for pdflatex)
BOLD_TEX = (f"Bold: not significantly worse than the column's best ($\\alpha = {ALPHA}$, Holm's correction; task "
            "columns: one-sided paired $t$-test over seeds; averages: one-sided Wilcoxon signed-rank test over the "
            "per-task means); a column that cannot be tested bolds nothing.")
ONE_SEED_TEX = "One seed per run: no test within a task is possible (run 3 seeds)."

PACKAGES = ("booktabs", "graphicx")
_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
             "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def escape(text: str) -> str:
    return "".join(_SPECIALS.get(ch, ch) for ch in str(text))


def _number(value: float, std: float | None, bold: bool) -> str:
    mean = f"{value:.1f}"
    text = rf"\textbf{{{mean}}}" if bold else mean
    return text + (rf"{{\scriptsize$\pm${std:.1f}}}" if std is not None else "")


def _cell(cell: Cell | None, bold: bool) -> str:
    if cell is None or cell.mean is None:
        return "--"
    return _number(cell.mean, cell.std, bold)


def _average(avg: Average | None, bold: bool) -> str:
    if avg is None or avg.mean is None:
        return "--"
    return _number(avg.mean, None, bold) + ("$^*$" if avg.partial else "")


def _columns(table: Table) -> list[tuple[str, str]]:
    """(column id, header) in order: the tasks group by group, then the averages and the parameters."""
    cols = [(f"task:{t}", t) for _, tasks in table.layout.groups for t in tasks]
    several = len(table.layout.groups) >= 2
    if several:
        cols += [(f"group:{g}", g.capitalize()) for g, _ in table.layout.groups]
    cols.append(("mean_tasks", "Mean"))
    if several:
        cols.append(("mean_groups", "Mean of groups"))
    return cols


def _row(table: Table, row: Row, cols: list[tuple[str, str]]) -> str:
    out = [escape(row.method)]
    for col, _ in cols:
        kind, _, name = col.partition(":")
        bold = row.method in table.ties.get(col, ())
        if kind == "task":
            out.append(_cell(row.cells.get(name), bold))
        elif kind == "group":
            out.append(_average(row.group_means.get(name), bold))
        else:
            out.append(_average(getattr(row, col), bold))
    params = row.costs.get("params_m")
    out.append("--" if params is None else f"{params:.2f}")
    return " & ".join(out) + r" \\"


def latex_table(table: Table) -> str:
    cols = _columns(table)
    groups = table.layout.groups
    n_tasks = sum(len(tasks) for _, tasks in groups)
    spec = "l" + "".join("c" * len(tasks) for _, tasks in groups) + "c" * (len(cols) - n_tasks) + "r"
    header_top, rules, start = [""], [], 2
    for group, tasks in groups:
        header_top.append(rf"\multicolumn{{{len(tasks)}}}{{c}}{{{escape(group.capitalize())}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + len(tasks) - 1}}}")
        start += len(tasks)
    header_top += [""] * (len(cols) - n_tasks + 1)
    names = ["Method", *[rf"\rotatebox{{90}}{{{escape(h)}}}" for _, h in cols], "Params (M)"]
    s = table.setting
    metric = "val200" if table.metric == "val_top1" else "test"
    caption = (f"{escape(s.backbone)}, suite {escape(s.suite)}, protocol {escape(s.protocol)}, {s.epochs} epochs: "
               f"{metric} top-1 (\\%), mean over seeds ($\\pm$ std with 2 or more seeds); $^*$ an average over "
               f"fewer than the suite's {table.layout.total} tasks; Params: trainable parameters with the "
               f"classifier head, mean over tasks. {BOLD_TEX}" + (f" {ONE_SEED_TEX}" if table.one_seed else ""))
    lines = [r"\begin{table*}[t]", r"\centering", r"\scriptsize", r"\setlength{\tabcolsep}{2.5pt}",
             rf"\caption{{{caption}}}",
             rf"\label{{tab:peftbench-{table.number}}}",
             r"\resizebox{\textwidth}{!}{%", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(header_top) + r" \\", "".join(rules), " & ".join(names) + r" \\", r"\midrule"]
    lines += [_row(table, row, cols) for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table*}"]
    return "\n".join(lines) + "\n"


def render_latex(tables: list[Table]) -> str:
    head = (f"% peftbench report: {len(tables)} table(s). Preamble: \\usepackage{{{','.join(PACKAGES)}}}\n")
    return head + "\n".join(latex_table(t) for t in tables)
