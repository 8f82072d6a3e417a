"""Choosing a tuned configuration from trial records: the one rule `tune` and `report` both apply.

Torch-free on purpose: the report recomputes every choice from the records alone, so a table can
never show a choice the records do not support.
"""

from __future__ import annotations

from typing import Any


def trial_key(record: dict) -> tuple[str, str]:
    return record["method"], record["task"]


def is_tune_record(record: dict, role: str) -> bool:
    return (record.get("tune") or {}).get("role") == role


def val_top1(record: dict) -> float | None:
    if record.get("status") != "complete":
        return None
    value = (record.get("metrics") or {}).get("val_top1")
    return None if value is None else float(value)


def rank_key(record: dict) -> tuple[float, int, int]:
    """Sort key, best first: highest last-epoch val200 top-1, then fewer trainable parameters, then
    grid order (lr ascending in the shipped grids: ties go to the smaller lr, as in the VPT authors'
    tune_vtab.py)."""
    metrics = record.get("metrics") or {}
    return (-(val_top1(record) or 0.0), int(metrics.get("trainable_params") or 0),
            int((record.get("tune") or {}).get("grid_index", 0)))


def choose(trials: list[dict]) -> dict | None:
    """The winning trial record among complete ones with a val200 accuracy; None if there is none.

    Only ``val_top1`` (train800 -> val200, evaluated after the last epoch) is read: a trial record
    holds no test number, and nothing here looks for one.
    """
    scored = [r for r in trials if val_top1(r) is not None]
    return min(scored, key=rank_key) if scored else None


def search_values(record: dict) -> dict[str, Any]:
    """The searched settings of a trial or final record (training keys and method knobs)."""
    return dict((record.get("tune") or {}).get("search") or {})


def fmt_value(value: Any) -> str:
    """A searched value as a user writes it in --set: 0.001, q,k,v (not ['q', 'k', 'v'])."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(fmt_value, value))
    return f"{value:g}" if isinstance(value, float) else str(value)
