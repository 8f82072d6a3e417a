"""Where a record came from: versions, git state, device, host, command line."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .repro import numerics

REPO_ROOT = Path(__file__).resolve().parent.parent


def _git_state() -> tuple[str | None, bool | None]:
    try:
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5)
        if commit.returncode != 0:
            return None, None
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
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
