"""Contract: `peftbench tune` works for every registered method, its search values reaching the method typed.

One trial and one final run per method on the mini suite's digits task (budget 1, one epoch). The registry
is iterated, so a method added later (built-in or peft_*) is covered without editing this file.
"""

from __future__ import annotations

import pytest

from peftbench.records import load_records
from peftbench.registry import available_methods, get_method
from peftbench.sweep.request import SweepRequest
from peftbench.tune import TuneRequest, run_tune

TINY = ["epochs=1", "warmup_epochs=0", "bench_steps=0", "batch_size=64", "eval_batch_size=200"]


@pytest.mark.slow
def test_one_trial_and_one_final_for_every_registered_method(tmp_path):
    methods = available_methods()
    assert {"lora", "ship", "peft_lora"} <= set(methods)  # built-ins and the peft family are registered
    out = tmp_path / "runs"
    sweep = SweepRequest(methods=list(methods), tasks="digits", suite="mini", out=out, sets=list(TINY),
                         cache_dir=tmp_path / "cache")
    result = run_tune(TuneRequest(sweep, budget=1, final_seeds=1))
    records, problems = load_records(out)
    assert problems == []
    by_role = {(r["method"], r["tune"]["role"]): r for r in records}
    assert len(records) == 2 * len(methods)
    for name in methods:
        trial, final = by_role[(name, "trial")], by_role[(name, "final")]
        assert trial["status"] == "complete" and final["status"] == "complete", (name, trial["reason"],
                                                                                 final["reason"])
        assert result.chosen[(name, "digits")]["run_id"] == trial["run_id"]
        # every searched knob reached the method with the type and value it was searched with
        knobs = get_method(name).search_space()
        for key, value in trial["tune"]["search"].items():
            section = "method" if key in knobs else "train"
            for rec in (trial, final):
                assert rec["config"][section][key] == value, (name, key, rec["config"][section][key], value)
        assert final["tune"]["search"] == trial["tune"]["search"]
    assert result.trials.statuses == {"complete": len(methods)}
    assert result.finals.statuses == {"complete": len(methods)}
