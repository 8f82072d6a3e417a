"""The sweep's shape: narrow public signatures, "auto" settled in one place, the runs folder's names in one module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

from peftbench.config import TrainConfig
from peftbench.layout import NOT_RECORDS, RunsFolder
from peftbench.train import effective_compile, effective_precision

ROOT = Path(__file__).resolve().parents[1]
SWEEP_MODULES = sorted((ROOT / "peftbench" / "sweep").glob("*.py")) + [ROOT / "peftbench" / "catalog.py",
                                                                       ROOT / "peftbench" / "tune.py"]
MAX_PARAMS = 6


def _params(fn: ast.FunctionDef) -> int:
    a = fn.args
    names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)] + [x.arg for x in (a.vararg, a.kwarg) if x]
    return len([n for n in names if n not in ("self", "cls")])


def wide_public_functions(paths: list[Path], root: Path = ROOT) -> list[str]:
    wide = []
    for path in paths:
        tree = ast.parse(path.read_text(), str(path))
        scopes = [tree] + [n for n in tree.body if isinstance(n, ast.ClassDef) and not n.name.startswith("_")]
        for scope in scopes:
            for fn in scope.body:
                if isinstance(fn, ast.FunctionDef) and not fn.name.startswith("_") and _params(fn) > MAX_PARAMS:
                    wide.append(f"{path.relative_to(root)}:{fn.lineno} {fn.name} ({_params(fn)} parameters)")
    return wide


def test_no_public_function_of_the_sweep_takes_more_than_six_parameters():
    assert wide_public_functions(SWEEP_MODULES) == []


def test_the_signature_check_sees_a_wide_function(tmp_path):
    bad = tmp_path / "wide.py"
    bad.write_text("def ok(a, b, c, d, e, f): pass\n"
                   "def wide(a, b, c, d, e, f, *, g=1): pass\n"
                   "def _private(a, b, c, d, e, f, g): pass\n"
                   "class C:\n    def method(self, a, b, c, d, e, f, g): pass\n")
    assert wide_public_functions([bad], tmp_path) == ["wide.py:2 wide (7 parameters)",
                                                      "wide.py:5 method (7 parameters)"]


@pytest.mark.parametrize("device, precision, compiled", [("cpu", "fp32", "false"), ("cuda", "bf16", "true")])
def test_auto_is_settled_once_for_the_device(device, precision, compiled):
    settled = TrainConfig().settled(device)
    assert (settled.precision, settled.compile) == (precision, compiled)
    assert settled.settled("cpu") is settled  # settled values are kept, whatever the device asked later
    assert TrainConfig(precision="bf16", compile="false").settled("cuda").precision == "bf16"
    # the loop's own helpers (for callers outside a sweep) answer from the same rule
    assert effective_precision(TrainConfig(), torch.device(device)) == precision
    assert effective_compile(TrainConfig(), torch.device(device)) == (compiled == "true")


def test_auto_is_resolved_nowhere_else():
    """Only TrainConfig.settled compares precision or compile with "auto"."""
    hits = []
    for path in sorted((ROOT / "peftbench").rglob("*.py")):
        if path.name == "config.py" or "report" in path.parts:  # report/ reads records that say "auto"
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"(precision|compile)\s*==\s*[\"']auto[\"']", line):
                hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert hits == []


def test_the_runs_folder_names_are_spelled_only_in_layout():
    names = [".claims", ".checkpoints", ".sweeps", "_local", "_slurm"]
    hits = []
    for path in sorted((ROOT / "peftbench").rglob("*.py")):
        if path.name == "layout.py":
            continue
        code = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
        code = re.sub(r'"""[\s\S]*?"""', "", code)  # docstrings may describe the layout
        hits += [f"{path.relative_to(ROOT)}: {name}" for name in names if f'"{name}"' in code or f"'{name}'" in code]
    assert hits == []


def test_runs_folder_paths(tmp_path):
    runs = RunsFolder(tmp_path)
    assert runs.record("lora", "dtd", 2, "abc") == tmp_path / "lora" / "dtd" / "seed2-abc.json"
    assert runs.checkpoint("abc") == tmp_path / ".checkpoints" / "abc.pt"
    assert {runs.report.name, runs.local_logs.name, runs.slurm_logs.name} == set(NOT_RECORDS)
    assert runs.claims.name.startswith(".") and runs.sweeps.name.startswith(".")  # hidden: never searched
