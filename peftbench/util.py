"""Small helpers with no project imports, usable from every layer (errors, suggestions)."""

from __future__ import annotations

import difflib


def did_you_mean(name: str, choices: list[str]) -> str:
    """'; did you mean 'x', 'y'?' for the closest of ``choices`` to ``name``, or '' when none is close."""
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    close += [c for c in choices if c.startswith(name) and c not in close]
    if not close:
        return ""
    return "; did you mean " + ", ".join(f"'{c}'" for c in sorted(close)[:3]) + "?"
