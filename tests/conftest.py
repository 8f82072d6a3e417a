"""Shared fixtures: generated VTAB-layout folders and tiny timm ViTs, all in temporary folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from peftbench.data.synthetic import write_task

REPO = Path(__file__).resolve().parent.parent
SMALL = {"train800": 24, "val200": 8, "test": 16}
# The tests' models are tiny: one thread avoids OpenMP's spin-waiting when the CPU is shared
# (a tiny training step took ~1 s with 2 threads on a busy 2-core machine, 12 ms with 1).
torch.set_num_threads(1)


def tiny_vit(num_classes: int = 5, img_size: int = 32, **kw) -> torch.nn.Module:
    """A 2-block, width-32 ViT with patch 8: milliseconds per forward on a CPU."""
    args = dict(img_size=img_size, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                num_classes=num_classes)
    args.update(kw)
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **args)


@pytest.fixture(autouse=True)
def _one_thread():
    """A run may pin its own thread count (--threads): every test starts from one thread again."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own decoded-image cache (never the user's ~/.cache)."""
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(autouse=True)
def _in_process_sweeps(monkeypatch):
    """`run` / `tune` in this process unless a test asks for workers (the default, --launcher auto, starts one
    worker process per core on a CPU machine: tests patch and plug in code that workers would not see)."""
    monkeypatch.setenv("PEFTBENCH_LAUNCHER", "none")


@pytest.fixture(autouse=True)
def _registry_restored():
    """Methods a test registers (plugin files, probes) leave with it: the registry is per process, and a later
    test iterating every registered method must see only the built-ins (plus entry points)."""
    from peftbench import registry

    plugins = dict(registry._plugins)
    before = set(registry._METHODS)
    yield
    for name in set(registry._METHODS) - before:
        if not registry._METHODS[name].build.__module__.startswith("peftbench.methods"):
            del registry._METHODS[name]
    registry._plugins.clear()
    registry._plugins.update(plugins)


@pytest.fixture
def vtab_root(tmp_path: Path) -> Path:
    """Two VTAB tasks under alias folder names, mixed formats and modes, CRLF lists."""
    root = tmp_path / "vtab-1k"
    write_task(root / "cifar", 100, SMALL, seed=1, formats=("png", "jpg"), modes=("RGB", "L", "RGBA", "P"),
               crlf=True)
    write_task(root / "eurosat", 10, SMALL, hw=(16, 16), seed=2, formats=("jpg", "png"))
    return root


def _concurrent_workers(cli_args: list[str], workers: int, cache: Path) -> dict[str, list[str]]:
    """Start ``workers`` ``peftbench`` processes on the same command line at once; every one must succeed.

    Returns each run label that was trained (its ``label: top-1`` line) with the workers that trained it.
    """
    env = {**os.environ, "PEFTBENCH_CACHE": str(cache), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    args = [sys.executable, "-m", "peftbench.cli", *cli_args]
    procs = {f"w{i}": subprocess.Popen([*args, "--worker-id", f"w{i}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True) for i in range(workers)}
    texts = {w: p.communicate(timeout=600)[0] for w, p in procs.items()}
    assert all(p.returncode == 0 for p in procs.values()), texts
    trained: dict[str, list[str]] = {}
    for worker, text in texts.items():
        for line in text.splitlines():
            if ": top-1 " in line:
                trained.setdefault(line.split(":")[0].strip(), []).append(worker)
    return trained


@pytest.fixture
def concurrent_workers():
    """The ``_concurrent_workers`` helper as a fixture: ``concurrent_workers(cli_args, workers, cache)``."""
    return _concurrent_workers


@pytest.fixture
def split_sizes() -> dict[str, int]:
    """The image count of each split that ``vtab_root`` writes per task."""
    return dict(SMALL)


@pytest.fixture
def make_tiny_vit():
    """The ``tiny_vit`` factory as a fixture: ``make_tiny_vit(num_classes, img_size=32, **timm_kwargs)``."""
    return tiny_vit


# a two-epoch run of a tiny random-init ViT on vtab_root's eurosat: seconds on a CPU
TINY_RUN = ["--suite", "vtab1k", "--backbone", "vit_tiny_patch16_224", "--weights", "none", "--img-size", "32",
            "--set", "epochs=2", "--set", "warmup_epochs=1", "--set", "bench_steps=1", "--set", "bench_warmup=0",
            "--no-report"]


def _tiny_run_argv(vtab_root: Path, out: Path, *extra: str, methods: str = "full") -> list[str]:
    return ["run", *TINY_RUN, "--methods", methods, "--tasks", "eurosat", "--data-root", str(vtab_root),
            "--out", str(out), *extra]


@pytest.fixture
def tiny_run_argv():
    """``peftbench run`` arguments for a tiny run: ``tiny_run_argv(vtab_root, out, *extra, methods="full")``;
    ``tiny_run_argv.options`` are the options alone (suite, backbone, two epochs, no report)."""
    _tiny_run_argv.options = list(TINY_RUN)
    return _tiny_run_argv
