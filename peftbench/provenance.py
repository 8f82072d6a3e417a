"""Where a record came from: versions, git state, device, host, command line."""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .repro import numerics

PACKAGE_DIR = Path(__file__).resolve().parent
# `name = "peftbench"` inside the [project] table (before the next table header)
PROJECT_NAME = re.compile(r'^\[project\][ \t]*$(?:(?!^\[).)*?^name\s*=\s*["\']peftbench["\']', re.MULTILINE | re.DOTALL)


def source_repo(package_dir: Path | None = None) -> Path | None:
    """The git work tree this package runs from in development mode, or None.

    Only a work tree whose top holds this project's pyproject.toml (``name = "peftbench"``) counts:
    an installed copy inside some other repository (a user's project, a virtualenv kept in git)
    must not record that repository's commit as ours. None means: the package version says it all.
    """
    package_dir = package_dir if package_dir is not None else PACKAGE_DIR
    try:
        top = subprocess.run(["git", "-C", str(package_dir), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if top.returncode != 0 or not top.stdout.strip():
        return None
    root = Path(top.stdout.strip())
    try:
        text = (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return None
    ours = PROJECT_NAME.search(text) is not None  # a regex, not tomllib: Python 3.10 has none
    return root if ours and package_dir.parent == root else None


def _git_state(repo: Path | None = None) -> tuple[str | None, bool | None]:
    repo = repo if repo is not None else source_repo()
    if repo is None:
        return None, None
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5)
        if commit.returncode != 0:
            return None, None
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return commit.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def provenance(device: torch.device) -> dict[str, Any]:
    import numpy
    import timm

    commit, dirty = _git_state()
    if device.type == "cuda":
        dev = f"cuda:{torch.cuda.get_device_name(device)}"
    else:
        cpu = platform.processor() or platform.machine()
        dev = f"cpu:{cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    return {"versions": {"peftbench": __version__, "torch": torch.__version__, "timm": timm.__version__,
                         "numpy": numpy.__version__, "python": platform.python_version()},
            "git_commit": commit, "git_dirty": dirty, "device": dev, "hostname": socket.gethostname(),
            "argv": sys.argv[1:], "numerics": numerics()}
