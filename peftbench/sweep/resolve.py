"""How the names in a request resolve: suite and its recipe file, methods, device, built-in data, weights."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import Suite, load_suite_file
from ..data.tasks import infer_suite
from ..errors import UsageError
from ..registry import ALL_METHODS, expand_methods
from .request import SweepRequest

PACKAGE = Path(__file__).resolve().parents[1]  # peftbench/: its resources/ and suites/


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"--device {name}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    return dev


def builtin_data_root(suite: str) -> Path | None:
    """The data of a suite that peftbench generates itself (created on first use), else None."""
    if suite == "mini":
        from ..data.mini import ensure_mini_suite

        return ensure_mini_suite()
    return None


def resolve_weights(weights: str) -> str:
    """'package:FILE' names a checkpoint shipped inside peftbench (resources/FILE)."""
    if weights.startswith("package:"):
        return str(PACKAGE / "resources" / weights.split(":", 1)[1])
    return weights


def default_suite_file(suite: str) -> Path | None:
    """The recipe shipped for a built-in suite (package data, so non-editable installs have it too)."""
    path = PACKAGE / "suites" / f"{suite}.yaml"
    return path if path.is_file() else None


def suite_source(suite: Suite) -> str:
    """Where a suite's recipe comes from, short: the shipped file by its package path."""
    source = suite.source
    if source != "built-in defaults" and Path(source).resolve().parent == PACKAGE / "suites":
        return f"recipe peftbench/suites/{Path(source).name}"
    return source if source == "built-in defaults" else f"recipe {source}"


def load_suite(name: str, path: Path | None) -> Suite:
    path = path or default_suite_file(name)
    return load_suite_file(path) if path else Suite(name=name)


def suite_of(req: SweepRequest) -> str:
    """--suite; else the one suite that holds the named --tasks; else vtab1k when a --data-root is given
    (the user's own VTAB-1k copy), else mini."""
    if req.suite is not None:
        return req.suite
    return infer_suite(req.tasks, "vtab1k" if req.data_root is not None else "mini")


def sweep_methods(req: SweepRequest) -> list[str]:
    """The request's methods, expanded; without any, the suite's ``default_methods`` (else every method)."""
    if req.methods is not None:
        return expand_methods(req.methods)
    suite = load_suite(suite_of(req), req.suite_file)
    if suite.default_methods is None:
        return expand_methods([ALL_METHODS])
    try:
        return expand_methods(suite.default_methods)
    except UsageError as exc:
        raise UsageError(f"{suite.source}: default_methods: {exc}") from None
