"""The shape of a suite YAML file, checked before anything reads it: one error naming the file and key path.

A suite is a mapping of sections; ``default_methods`` lists what `run` and `tune` do without ``--methods``;
``defaults`` maps training keys to values, ``methods`` maps a method
to its overrides, ``recipes`` maps a named recipe to its ``note``, ``methods`` and ``tasks`` (a task to
methods to overrides), ``tune`` holds ``budget``, ``grid`` and ``methods`` (lists of values). Values
are scalars or lists of scalars (e.g. ``ship.layers: [0, 2, 4]``). Which keys exist is checked later, where the method's
knobs are known (config.resolve).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import UsageError

SCALAR = (str, int, float, bool, type(None))


def _got(value: Any) -> str:
    kind = {dict: "a mapping", list: "a list"}.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"


def _fail(path: Path, where: str, expected: str, value: Any) -> UsageError:
    return UsageError(f"suite file {path}: {where}: expected {expected}, got {_got(value)}")


def _overrides(path: Path, where: str, value: Any) -> None:
    """``{key: scalar | [scalars]}`` or nothing."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise _fail(path, where, "a mapping of KEY: VALUE", value)
    for key, val in value.items():
        if not isinstance(key, str):
            raise _fail(path, f"{where}.{key}", "a key name (text)", key)
        if isinstance(val, list):
            bad = next((v for v in val if not isinstance(v, SCALAR)), None)
            if bad is not None:
                raise _fail(path, f"{where}.{key}", "a value or a list of plain values", val)
        elif not isinstance(val, SCALAR):
            raise _fail(path, f"{where}.{key}", "a value or a list of plain values", val)


def _nested(path: Path, where: str, value: Any, inner: str, check) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise _fail(path, where, f"a mapping of {inner}", value)
    for key, val in value.items():
        if not isinstance(key, str):
            raise _fail(path, f"{where}.{key}", "a name (text)", key)
        check(path, f"{where}.{key}", val)


def check_suite_shape(raw: dict, path: Path) -> None:
    """Raise one UsageError naming the first key whose value has the wrong shape."""
    for key in ("suite", "description", "backbone", "weights"):
        if key in raw and not isinstance(raw[key], (str, type(None))):
            raise _fail(path, key, "text", raw[key])
    methods = raw.get("default_methods")
    if methods is not None and (not isinstance(methods, list) or not methods
                                or not all(isinstance(m, str) and m for m in methods)):
        raise _fail(path, "default_methods", "a non-empty list of method or family names", methods)
    _overrides(path, "defaults", raw.get("defaults"))
    _nested(path, "methods", raw.get("methods"), "METHOD: {KEY: VALUE}", _overrides)
    _nested(path, "recipes", raw.get("recipes"), "NAME: {note, methods, tasks}", _recipe)
    _tune(path, raw.get("tune"))


def _recipe(path: Path, where: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise _fail(path, where, "a mapping with note, methods, tasks", value)
    if not isinstance(value.get("note", ""), str):
        raise _fail(path, f"{where}.note", "text", value["note"])
    _nested(path, f"{where}.methods", value.get("methods"), "METHOD: {KEY: VALUE}", _overrides)
    _nested(path, f"{where}.tasks", value.get("tasks"), "TASK: {METHOD: {KEY: VALUE}}",
            lambda p, w, v: _nested(p, w, v, "METHOD: {KEY: VALUE}", _overrides))


def _tune(path: Path, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise _fail(path, "tune", "a mapping with budget, grid, methods", value)
    budget = value.get("budget")
    if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 1):
        raise _fail(path, "tune.budget", "a whole number of trials, at least 1", budget)
    _overrides(path, "tune.grid", value.get("grid"))
    _nested(path, "tune.methods", value.get("methods"), "METHOD: {KNOB: [VALUES]}", _overrides)
