"""Small helpers with no project imports, usable from every layer (errors, suggestions)."""

from __future__ import annotations

import difflib
import hashlib
from pathlib import Path


def did_you_mean(name: str, choices: list[str]) -> str:
    """'; did you mean 'x', 'y'?' for the closest of ``choices`` to ``name``, or '' when none is close."""
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    close += [c for c in choices if c.startswith(name) and c not in close]
    if not close:
        return ""
    return "; did you mean " + ", ".join(f"'{c}'" for c in sorted(close)[:3]) + "?"


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
