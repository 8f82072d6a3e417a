"""--task (inspect) and --tasks (run / tune) pick the suite that holds the named tasks when no --suite is given."""

from __future__ import annotations

import json

import pytest

from peftbench.cli import main
from peftbench.data import tasks
from peftbench.data.tasks import TaskSpec, infer_suite
from peftbench.errors import UsageError
from peftbench.sweep.request import SweepRequest
from peftbench.sweep.resolve import suite_of


def test_a_task_name_or_alias_of_one_suite_picks_that_suite():
    assert infer_suite("cifar100", "mini") == "vtab1k"
    assert infer_suite("cifar,eurosat", "mini") == "vtab1k"  # aliases count
    assert infer_suite("digits,count", "vtab1k") == "mini"
    assert infer_suite("all", "mini") == "mini" and infer_suite(None, "vtab1k") == "vtab1k"
    assert infer_suite("nosuch", "mini") == "mini"  # the default suite's own error names it
    assert suite_of(SweepRequest(tasks="cifar100")) == "vtab1k"
    assert suite_of(SweepRequest(tasks="cifar100", suite="mini")) == "mini"  # --suite wins


def test_ambiguous_names_and_mixed_suites_list_the_suites(monkeypatch):
    monkeypatch.setitem(tasks.SUITES, "mine", (TaskSpec("digits", 10, "natural", 10, "32x32"),))
    with pytest.raises(UsageError, match=r"^task 'digits' belongs to several suites \(mine, mini\): give --suite"):
        infer_suite("digits", "mini")
    with pytest.raises(UsageError, match=r"^tasks of different suites: mini: count; vtab1k: cifar100; give --suite"):
        infer_suite("cifar100,count", "mini")


def test_inspect_with_a_vtab_task_needs_no_suite(capsys):
    assert main(["inspect", "--method", "ship", "--task", "cifar100", "--backbone", "vit_base_patch16_224.orig_in21k",
                 "--weights", "none", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["suite"] == "vtab1k" and info["task"] == "cifar100" and info["num_classes"] == 100


def test_run_with_a_vtab_task_asks_for_the_vtab_data_not_a_mini_task(tmp_path, capsys):
    assert main(["run", "--tasks", "cifar100", "--methods", "linear", "--out", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err.strip() == ("error: --data-root is required for suite 'vtab1k' (a folder in the "
                                               "VTAB-1k layout)")
