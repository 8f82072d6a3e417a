"""TensorFlow Datasets stays optional: `import peftbench` (and its CLI) never imports it, and the TFDS
route says how to install it when it is missing. Runs without TFDS (the main test environment)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from peftbench.errors import UsageError


def test_plain_import_does_not_import_tensorflow():
    code = ("import sys; import peftbench, peftbench.cli, peftbench.data.vtab_tfds; "
            "print(sorted(m for m in ('tensorflow', 'tensorflow_datasets', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def test_missing_tfds_names_the_extra(tmp_path, monkeypatch):
    from peftbench.data.vtab_tfds import build_vtab1k_from_tfds

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # as if not installed
    with pytest.raises(UsageError, match=r"pip install 'peftbench\[tfds\]'"):
        build_vtab1k_from_tfds(tmp_path / "out", tasks=["cifar100"])
    assert not (tmp_path / "out").exists()
