"""The commands that only read records stay light: `peftbench report` must not import torch (~2 s)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RECORD = {
    "run_id": "linear-dtd-0", "schema": 1, "status": "complete", "reason": None, "method": "linear",
    "task": "dtd", "suite": "vtab1k", "seed": 0, "created": "2025-01-01T00:00:00Z",
    "config": {"train": {"protocol": "final", "epochs": 1, "precision": "fp32"}, "method": {}},
    "backbone": {"name": "vit_tiny", "weights": "none", "img_size": [32, 32]}, "data": {"checksum": "d"},
    "metrics": {"test_top1": 12.5, "trainable_params": 1000, "head_params": 100}, "provenance": {"device": "cpu"},
}


def test_report_command_does_not_import_torch(tmp_path: Path):
    runs = tmp_path / "runs"
    (runs / "linear" / "dtd").mkdir(parents=True)
    (runs / "linear" / "dtd" / "seed0.json").write_text(json.dumps(RECORD))
    code = ("import sys; from peftbench.cli import main; rc = main(['report', sys.argv[1], '--out', sys.argv[2]]); "
            "heavy = sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules); "
            "print('rc', rc, 'heavy', heavy)")
    out = subprocess.run([sys.executable, "-c", code, str(runs), str(tmp_path / "out")], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "rc 0 heavy []", out.stdout + out.stderr
    assert (tmp_path / "out" / "summary.md").is_file()
