"""The default launcher (auto), the local launcher's exit code after a takeover, Slurm's default GPUs per job."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peftbench.errors import UsageError
from peftbench.sweep import launch
from peftbench.sweep.launch import add_launcher_args, default_gpus_per_job, resolve_launcher, sbatch_refusal

REPO = Path(__file__).resolve().parent.parent
FAST = ["epochs=1", "bench_steps=0", "batch_size=8", "eval_batch_size=8"]


def parsed(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int)
    p.add_argument("--worker-id")
    p.add_argument("--device", default="auto")
    add_launcher_args(p)
    return p.parse_args(argv)


@pytest.fixture
def cpu_machine(monkeypatch):
    """2 usable cores, plenty of memory, no GPU, no launcher from the environment."""
    monkeypatch.delenv("PEFTBENCH_LAUNCHER", raising=False)
    monkeypatch.setattr(launch, "usable_cores", lambda: 2)
    monkeypatch.setattr(launch, "available_memory", lambda: 64 << 30)
    monkeypatch.setattr(launch, "visible_gpus", lambda: [])
    return monkeypatch


def test_auto_starts_one_single_thread_worker_per_core_on_a_cpu_machine(cpu_machine):
    args = parsed()
    note = resolve_launcher(args)
    assert (args.launcher, args.workers) == ("local", 2) and note.startswith("2 local worker processes")
    cpu_machine.setattr(launch, "usable_cores", lambda: 8)
    cpu_machine.setattr(launch, "available_memory", lambda: 5 << 30)  # 2 GiB a worker: 2 fit
    args = parsed()
    resolve_launcher(args)
    assert (args.launcher, args.workers) == ("local", 2)


@pytest.mark.parametrize("argv, why", [
    (["--threads", "2"], "threads chosen: one process"),
    (["--worker-id", "w1"], "already a worker"),
    (["--device", "cuda"], "a GPU device"),
    (["--launcher", "none"], "asked for"),
])
def test_auto_keeps_one_process_when_asked_or_when_workers_would_not_help(argv, why, cpu_machine):
    args = parsed(*argv)
    assert resolve_launcher(args) is None and args.launcher == "none", why


def test_auto_keeps_one_process_with_a_gpu_or_one_core(cpu_machine):
    cpu_machine.setattr(launch, "visible_gpus", lambda: ["0"])
    args = parsed()
    assert resolve_launcher(args) is None and args.launcher == "none"
    cpu_machine.setattr(launch, "visible_gpus", lambda: [])
    cpu_machine.setattr(launch, "usable_cores", lambda: 1)
    args = parsed()
    assert resolve_launcher(args) is None and args.launcher == "none"


def test_workers_alone_means_local_and_the_environment_sets_the_default(cpu_machine):
    args = parsed("--workers", "3")
    resolve_launcher(args)
    assert (args.launcher, args.workers) == ("local", 3)
    cpu_machine.setenv("PEFTBENCH_LAUNCHER", "none")
    args = parsed()
    resolve_launcher(args)
    assert args.launcher == "none"
    cpu_machine.setenv("PEFTBENCH_LAUNCHER", "lokal")
    with pytest.raises(UsageError, match=r"^\$PEFTBENCH_LAUNCHER=lokal: expected auto, none, local or slurm$"):
        resolve_launcher(parsed())


# The first build of dies_once kills its worker (right after leaving a marker); every later build waits for that
# marker, so the other worker is still running, with runs left to take over, when the first one is gone.
DIES_ONCE = """
import os
import signal
import time
from dataclasses import dataclass

from peftbench.registry import get_method, register_method


@dataclass
class Cfg:
    pass


@register_method("dies_once", config=Cfg, description="kills its worker the first time it is built")
def build(backbone, num_classes, cfg, ctx):
    try:
        os.close(os.open({marker!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        time.sleep(1.0)  # the marker's writer kills itself at once
        linear = get_method("linear")
        return linear.build(backbone, num_classes, linear.config_cls(), ctx)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_local_launcher_exits_0_when_a_dead_workers_run_was_taken_over(vtab_root, tmp_path):
    plugin = tmp_path / "dies_once.py"
    plugin.write_text(DIES_ONCE.format(marker=str(tmp_path / "died")))
    out = tmp_path / "runs"
    args = ["--plugin", str(plugin), "run", "--methods", "dies_once,linear", "--tasks", "cifar,eurosat",
            "--data-root", str(vtab_root), "--backbone", "test_vit", "--weights", "none", "--img-size", "32",
            "--out", str(out), "--claim-timeout", "10", *[a for s in FAST for a in ("--set", s)],
            "--launcher", "local", "--workers", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "peftbench.cli", *args], cwd=REPO, env=env, text=True,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=600)
    text = done.stdout + done.stderr
    assert "exited with code -9" in text, text  # one worker did die
    assert "every planned run of the sweep is complete" in text, text
    assert done.returncode == 0, text
    recs = [json.loads(p.read_text()) for p in out.glob("*/*/*.json")]
    assert len(recs) == 4 and all(r["status"] == "complete" for r in recs)


SINFO = "debug*|(null)\ngpu|gpu:a100:4(S:0-1)\ngpu|(null)\ncpu|(null)\n"


def test_slurm_asks_no_gpu_where_the_partition_has_none():
    assert default_gpus_per_job(SINFO, None) == 0  # the default partition (debug*) has no GPU
    assert default_gpus_per_job(SINFO, "cpu") == 0
    assert default_gpus_per_job(SINFO, "gpu") == 1  # one node with GPUs is enough
    assert default_gpus_per_job(SINFO, "nosuch") == 1  # sbatch names an unknown partition itself
    assert default_gpus_per_job(None, None) == 1  # sinfo did not answer: the old default


def test_sbatchs_bare_gres_refusal_says_how_to_run_cpu_only():
    refusal = "sbatch: error: Invalid generic resource (gres) specification"
    assert sbatch_refusal(refusal, 1) == (
        "--launcher slurm: sbatch refused the job array: sbatch: error: Invalid generic resource (gres) "
        "specification (each job asked for 1 GPU(s); on a partition without GPUs, --slurm-gpus-per-job 0 runs "
        "CPU-only jobs)")
    assert sbatch_refusal("sbatch: error: Invalid partition name specified", 1).endswith("name specified")
