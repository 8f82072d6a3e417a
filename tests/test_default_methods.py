"""`run` and `tune` without --methods: the suite's ``default_methods`` (mini: 6 methods); ``all``: every method."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftbench.cli import main
from peftbench.config import load_suite_file
from peftbench.errors import UsageError
from peftbench.registry import available_methods
from peftbench.sweep.request import SweepRequest
from peftbench.sweep.resolve import default_suite_file, sweep_methods

MINI_DEFAULT = ["linear", "full", "vpt_shallow", "vpt_deep", "ship", "lora"]


def test_mini_runs_its_default_methods_and_all_runs_every_method():
    assert sweep_methods(SweepRequest()) == MINI_DEFAULT  # the shipped mini.yaml says so, not the CLI
    assert load_suite_file(default_suite_file("mini")).default_methods == MINI_DEFAULT
    assert sweep_methods(SweepRequest(methods=["all"])) == available_methods()
    assert len(available_methods()) > len(MINI_DEFAULT)
    assert sweep_methods(SweepRequest(methods=["vpt", "linear"])) == ["vpt_deep", "vpt_shallow", "linear"]
    # a suite without default_methods (vtab1k) keeps running every method
    assert sweep_methods(SweepRequest(suite="vtab1k")) == available_methods()


def test_a_suite_file_sets_the_default_and_a_bad_name_in_it_names_the_file(tmp_path: Path):
    good = tmp_path / "good.yaml"
    good.write_text("suite: mini\ndefault_methods: [vpt, linear]\n")
    assert sweep_methods(SweepRequest(suite_file=good)) == ["vpt_deep", "vpt_shallow", "linear"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("suite: mini\ndefault_methods: [linear, lroa]\n")
    with pytest.raises(UsageError, match=rf"^{bad}: default_methods: unknown method 'lroa'; did you mean 'lora'"):
        sweep_methods(SweepRequest(suite_file=bad))
    empty = tmp_path / "empty.yaml"
    empty.write_text("suite: mini\ndefault_methods: []\n")
    with pytest.raises(UsageError, match="default_methods: expected a non-empty list of method or family names"):
        load_suite_file(empty)


@pytest.mark.parametrize("command", ["run", "tune"])
def test_run_and_tune_without_methods_plan_the_default_and_all_plans_every_method(command, monkeypatch):
    """Both commands hand the same request to the sweep machinery; what it expands is what runs."""
    import peftbench.sweep.run as sweep_run
    import peftbench.tune as tune

    seen = []

    def stop(req, *_):
        seen.append(sweep_methods(req))
        raise UsageError("stop here")

    monkeypatch.setattr(sweep_run, "plan_sweep", stop)
    monkeypatch.setattr(tune, "sweep_methods", lambda req: seen.append(sweep_methods(req)) or [])
    monkeypatch.setattr(tune, "run_sweep", lambda req, rep: stop(req))
    assert main([command, "--out", "/nonexistent/runs", "--no-report"]) == 2
    assert main([command, "--out", "/nonexistent/runs", "--no-report", "--methods", "all"]) == 2
    assert seen[0] == MINI_DEFAULT and seen[-1] == available_methods()
