"""Launchers (local workers, a real Slurm job array) and ``peftbench status``, end to end.

The Slurm tests need a running cluster: ``.ci/slurm_up.sh`` starts a single-node one (CI does, then
exports PEFTBENCH_SLURM=up or the reason it could not). Without one they are skipped with that reason.
Workers are real processes over one ``--out`` folder: timm's ``test_vit`` at 32 px, random weights.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peftbench.claims import Claims
from peftbench.cli import main
from peftbench.records import SCHEMA_VERSION, TOOL, write_record
from peftbench.status import sweep_status, write_manifest
from peftbench.sweep.launch import local_worker_envs, worker_argv

REPO = Path(__file__).resolve().parent.parent
SWEEP8 = ["--methods", "linear,full", "--tasks", "cifar,eurosat", "--seeds", "0,1"]  # 2 x 2 x 2 = 8 runs
FAST = ["epochs=1", "bench_steps=0", "batch_size=8", "eval_batch_size=8"]


def cli_args(root: Path, out: Path, sweep: list[str], sets: list[str] = FAST, *extra: str) -> list[str]:
    return ["run", "--suite", "vtab1k", *sweep, "--data-root", str(root), "--out", str(out), "--backbone", "test_vit",
            "--weights", "none", "--img-size", "32", "--claim-timeout", "10",
            *[a for s in sets for a in ("--set", s)], *extra]


def cli(args: list[str], timeout: float) -> tuple[int, str]:
    """The CLI in its own process group, killed whole if it overruns: a hung worker fails the test, never hangs it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "peftbench.cli", *args], cwd=REPO, env=env, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        text = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"peftbench did not finish within {timeout} s: {proc.communicate()[0]}") from None
    return proc.returncode, text


def status(out: Path) -> dict:
    return json.loads(json.dumps(sweep_status(out)))  # what `peftbench status --json` prints


def trained_once(out: Path, logs: list[Path], n: int) -> None:
    """Every planned run trained by exactly one worker (its "label: top-1" line appears once in all logs)
    and recorded once."""
    lines = [m.group(1) for log in logs for m in re.finditer(r"^(\S+/\S+/seed\d+): top-1 ", log.read_text(), re.M)]
    assert len(lines) == n and len(set(lines)) == n, lines
    recs = [json.loads(p.read_text()) for p in out.glob("*/*/*.json")]
    assert len(recs) == n and len({r["run_id"] for r in recs}) == n
    assert all(r["status"] == "complete" for r in recs)
    assert not list(out.glob(".claims/*"))


def all_complete(out: Path, n: int, report: bool = True) -> None:
    st = status(out)
    assert st["counts"] == {"complete": n, "running": 0, "stale": 0, "failed": 0, "diverged": 0, "oom": 0,
                            "not_started": 0}, st
    assert (out / "report" / "summary.md").is_file() == report


def wait_for(what: str, check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.1)


def kill_worker_mid_run(out: Path, alive) -> dict:
    """Wait until a worker is training (a checkpoint exists), kill -9 the process that holds the claim."""
    wait_for("a worker mid-run", lambda: list(out.glob(".checkpoints/*.pt")) or not alive(), 240)
    assert alive(), "the worker ended before it could be killed"
    (claim,) = out.glob(".claims/*.claim")
    owner = json.loads(claim.read_text())
    os.kill(owner["pid"], signal.SIGKILL)
    return {"run_id": claim.stem, **owner}


def assert_stale_claim_shown(out: Path, killed: dict, planned: int, capsys) -> None:
    st = status(out)
    stale = [r for r in st["runs"] if r["state"] == "stale"]
    assert [r["run_id"] for r in stale] == [killed["run_id"]], st
    assert stale[0]["claim"]["worker"] == killed["worker"]
    assert st["counts"]["complete"] + st["counts"]["not_started"] == planned - 1
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "stale claims 1" in text, text
    assert f"worker {killed['worker']} (pid {killed['pid']}" in text and "; stale: " in text, text


# --- the worker command line, defaults, bad options -----------------------------------------------------------------

def test_worker_command_line_drops_the_launcher_options():
    argv = ["--plugin", "p.py", "run", "--methods", "linear", "--launcher=slurm", "--jobs", "3", "--slurm-arg",
            "mem=4G", "--wait", "--set", "lr=0.1", "--slurm-time", "1:00:00", "--worker-id", "w",
            "--slurm-gpus-per-job", "0", "--out", "r"]
    assert worker_argv(argv, reports=True) == ["--plugin", "p.py", "run", "--methods", "linear", "--set", "lr=0.1",
                                               "--worker-id", "w", "--out", "r", "--no-report", "--launcher", "none"]
    assert worker_argv(["run", "--workers", "2", "--launcher", "local"], reports=False) == ["run", "--launcher",
                                                                                            "none"]


def test_local_workers_get_a_gpu_each_or_a_share_of_the_cores(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert local_worker_envs(None) == [{"CUDA_VISIBLE_DEVICES": "3"}, {"CUDA_VISIBLE_DEVICES": "5"}]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in local_worker_envs(3)] == ["3", "5", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert local_worker_envs(None) == [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "8"}]
    assert local_worker_envs(4)[0]["OMP_NUM_THREADS"] == "2"


@pytest.mark.parametrize("args, message", [
    (["--workers", "2"], "error: --workers needs --launcher local"),
    (["--launcher", "local", "--workers", "0"], "error: --workers 0: must be at least 1"),
    (["--launcher", "slurm", "--slurm-arg", "mem"],
     "error: --slurm-arg 'mem': expected KEY=VALUE, e.g. --slurm-arg mem=32G"),
    (["--launcher", "local", "--slurm-qos", "high"], "error: --slurm-qos needs --launcher slurm"),
    (["--wait"], "error: --wait needs --launcher slurm"),
    (["--launcher", "local", "--device", "cuda:1"], "error: --device cuda:1 with --launcher local: each worker sees "
                                                    "only its own GPU (as cuda:0); leave --device auto, or set "
                                                    "CUDA_VISIBLE_DEVICES to the GPUs the workers may use"),
])
def test_launcher_misuse_is_one_clear_error(args, message, tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "runs"), *args]) == 2
    assert capsys.readouterr().err.strip() == message
    assert not (tmp_path / "runs").exists()


def test_tune_takes_the_launcher_options_too(tmp_path, capsys):
    assert main(["tune", "--out", str(tmp_path / "runs"), "--workers", "2"]) == 2
    assert capsys.readouterr().err.strip() == "error: --workers needs --launcher local"
    assert worker_argv(["tune", "--budget", "2", "--launcher", "local", "--workers", "2"], reports=True) == [
        "tune", "--budget", "2", "--no-report", "--launcher", "none"]


def test_slurm_launcher_without_sbatch_is_one_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["run", "--out", str(tmp_path / "runs"), "--launcher", "slurm"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --launcher slurm: sbatch is not on PATH (run this on a Slurm "
                                               "login node)")


# --- status ---------------------------------------------------------------------------------------------------------

def _rec(run_id: str, status: str, seed: int, reason: str | None = None) -> dict:
    return {"tool": TOOL, "schema": SCHEMA_VERSION, "run_id": run_id, "status": status, "reason": reason,
            "method": "m", "task": "t", "seed": seed,
            "config": {}, "backbone": {}, "data": {}, "metrics": {}, "provenance": {}}


def test_status_counts_every_state_with_workers_and_reasons(tmp_path, capsys):
    out = tmp_path / "runs"
    ids = [f"r{i}" for i in range(8)]
    write_manifest(out, {r: f"m/t/seed{i}" for i, r in enumerate(ids)}, claim_timeout=60)
    for i, (status_, reason) in enumerate([("complete", None), ("failed", "RuntimeError: boom"),
                                           ("diverged", "non-finite training loss at step 2 (epoch 1)"),
                                           ("oom", "CUDA out of memory during train at batch 64")]):
        write_record(out / "m" / "t" / f"seed{i}-r{i}.json", _rec(f"r{i}", status_, i, reason))
    live = Claims(out, "gpu-worker-1", timeout=60).acquire("r4")  # this process: alive
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    Claims(out, "dead-worker").acquire("r5").release()  # make the folder, then plant a dead process's claim
    (out / ".claims" / "r5.claim").write_text(json.dumps({"worker": "dead-worker", "pid": dead.pid,
                                                          "host": os.uname().nodename, "time": time.time() - 30}))
    old = Claims(out, "x").path("r6")
    old.write_text(json.dumps({"worker": "far-away", "pid": 1, "host": "elsewhere", "time": 0}))
    os.utime(old, (time.time() - 100, time.time() - 100))  # no heartbeat for 100 s > the sweep's 60 s
    Claims(out, "x").path("r8").write_text("")  # a phantom: names no owner (not in the manifest either)
    try:
        st = sweep_status(out)
        assert st["counts"] == {"complete": 1, "running": 1, "stale": 3, "failed": 1, "diverged": 1, "oom": 1,
                                "not_started": 1}
        assert main(["status", str(out)]) == 0
        text = capsys.readouterr().out
    finally:
        live.release()
    assert "running (live claims):\n  m/t/seed4  worker gpu-worker-1" in text
    assert f"m/t/seed5  worker dead-worker (pid {dead.pid}" in text and "is gone" in text
    assert "m/t/seed6  worker far-away (pid 1, host elsewhere)" in text and "stale: no heartbeat for 100 s" in text
    assert "failed: m/t/seed1: RuntimeError: boom" in text and "oom: m/t/seed3: CUDA out of memory" in text
    assert "run r8  worker unknown (pid None, host None)" in text and "names no owner (empty or unreadable)" in text
    assert "not started  1" in text and "stale claims 3" in text


def test_status_without_manifest_says_not_started_is_unknown(tmp_path, capsys):
    out = tmp_path / "runs"
    write_record(out / "m" / "t" / "seed0-a.json", _rec("a", "complete", 0))
    assert main(["status", str(out), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["counts"]["complete"] == 1 and st["counts"]["not_started"] is None
    assert main(["status", str(out)]) == 0
    assert "no sweep manifest in" in capsys.readouterr().out
    assert main(["status", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nowhere'}: no such folder"


def test_status_command_does_not_import_torch(tmp_path):
    """Checking on a sweep from a login node should take a moment, not torch's import time."""
    out = tmp_path / "runs"
    write_record(out / "m" / "t" / "seed0-a.json", _rec("a", "complete", 0))
    code = ("import sys; from peftbench.cli import main; rc = main(['status', sys.argv[1]]); "
            "print('rc', rc, 'heavy', sorted(m for m in ('torch', 'timm') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.stdout.strip().splitlines()[-1] == "rc 0 heavy []", done.stdout + done.stderr


# --- local workers --------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_local_workers_share_a_sweep_each_run_once(vtab_root, tmp_path):
    out = tmp_path / "runs"
    rc, text = cli(cli_args(vtab_root, out, SWEEP8, FAST, "--launcher", "local", "--workers", "2"), 420)
    assert rc == 0, text
    assert "local worker 1: pid" in text
    trained_once(out, sorted((out / "_local").glob("worker*.log")), 8)
    all_complete(out, 8)


@pytest.mark.slow
def test_local_worker_killed_mid_run_is_taken_over_by_one_more_worker(vtab_root, tmp_path):
    out = tmp_path / "runs"
    sweep, sets = ["--methods", "full", "--tasks", "cifar,eurosat"], [*FAST, "epochs=40"]
    args = cli_args(vtab_root, out, sweep, sets, "--checkpoint-every", "1")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launcher = subprocess.Popen([sys.executable, "-m", "peftbench.cli", *args, "--launcher", "local", "--workers", "1"],
                                cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        kill_worker_mid_run(out, lambda: launcher.poll() is None)
        text = launcher.communicate(timeout=420)[0]
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    # the launcher saw its worker die with the run's claim, started one more worker, which took the stale
    # claim over and finished both runs
    assert "local worker 0 exited with code -9" in text, text
    assert "one more local worker takes them over" in text and "local worker 1: pid" in text, text
    assert launcher.returncode == 0 and "every planned run of the sweep is complete" in text, text
    trained_once(out, sorted((out / "_local").glob("worker*.log")), 2)
    recs = [json.loads(p.read_text()) for p in out.glob("*/*/*.json")]
    assert any(r["provenance"]["resumed_from_epoch"] > 0 for r in recs)  # the killed run went on from its checkpoint
    all_complete(out, 2, report=True)


# --- a real Slurm cluster -------------------------------------------------------------------------------------------

def slurm_missing() -> str | None:
    """Why the Slurm tests cannot run here, or None when a cluster answers."""
    flag = os.environ.get("PEFTBENCH_SLURM")
    if flag and flag != "up":
        return f"no Slurm cluster: {flag}"
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no Slurm cluster: sinfo/sbatch not on PATH (bash .ci/slurm_up.sh --install starts one, as root)"
    try:
        probe = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return "no Slurm cluster: sinfo did not answer within 10 s"
    if not re.search(r"^(idle|mix|alloc)", probe.stdout, re.M):
        return f"no Slurm cluster: no usable node ({(probe.stdout + probe.stderr).strip() or 'sinfo printed nothing'})"
    return None


SLURM_MISSING = slurm_missing()
needs_slurm = pytest.mark.skipif(SLURM_MISSING is not None, reason=SLURM_MISSING or "")
SLURM = ["--launcher", "slurm", "--slurm-gpus-per-job", "0", "--slurm-time", "15"]


def slurm_logs(out: Path) -> list[Path]:
    return sorted((out / "_slurm").glob("*_log.out"))


@needs_slurm
@pytest.mark.slow
def test_slurm_array_of_3_runs_a_sweep_of_8_each_run_once(vtab_root, tmp_path):
    out = tmp_path / "runs"
    rc, text = cli(cli_args(vtab_root, out, SWEEP8, FAST, *SLURM, "--jobs", "3", "--wait"), 480)
    assert rc == 0, text + "".join(p.read_text() for p in (out / "_slurm").glob("*"))
    (job,) = re.findall(r"^job id: (\d+)$", text, re.M)
    logs = slurm_logs(out)
    assert sorted(p.name for p in logs) == [f"{job}_{i}_0_log.out" for i in range(3)]
    assert {f"slurm-{job}_{i}@{os.uname().nodename}" for i in range(3)} >= {
        json.loads(p.read_text())["provenance"]["worker"] for p in out.glob("*/*/*.json")}
    trained_once(out, logs, 8)
    all_complete(out, 8)


@needs_slurm
@pytest.mark.slow
def test_slurm_element_killed_mid_run_leaves_a_stale_claim_that_a_rerun_finishes(vtab_root, tmp_path, capsys):
    out = tmp_path / "runs"
    sweep, sets = ["--methods", "full", "--tasks", "cifar,eurosat"], [*FAST, "epochs=40"]
    args = cli_args(vtab_root, out, sweep, sets, "--checkpoint-every", "1", *SLURM)
    rc, text = cli([*args, "--jobs", "1"], 60)  # submits and returns
    assert rc == 0, text
    (job,) = re.findall(r"^job id: (\d+)$", text, re.M)
    queued = lambda: subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True,
                                    timeout=10).stdout.strip() != ""
    try:
        killed = kill_worker_mid_run(out, queued)
        assert killed["worker"] == f"slurm-{job}@{os.uname().nodename}"  # an array of one is a plain job
        wait_for(f"job {job} to leave the queue", lambda: not queued(), 60)
    finally:
        subprocess.run(["scancel", job], timeout=10)
    assert_stale_claim_shown(out, killed, 2, capsys)
    rc, text = cli([*args, "--jobs", "2", "--wait", "--no-report"], 420)
    assert rc == 0, text
    trained_once(out, [p for p in slurm_logs(out) if not p.name.startswith(f"{job}_")], 2)
    all_complete(out, 2, report=False)


def test_a_sweep_writes_its_manifest_so_status_counts_runs_not_started(vtab_root, tmp_path, monkeypatch):
    from peftbench.sweep.request import SweepRequest
    from peftbench.sweep.run import run_sweep

    out = tmp_path / "runs"
    real_acquire = Claims.acquire
    monkeypatch.setattr(Claims, "acquire", lambda self, run_id: None if run_id == skipped[0] else
                        real_acquire(self, run_id))
    skipped = [None]
    req = SweepRequest(methods=["linear"], tasks="cifar", seeds=[0, 1], suite="vtab1k", data_root=vtab_root, out=out,
                       backbone="test_vit", weights="none", img_size=32, sets=FAST, claim_timeout=42)
    run_sweep(req)
    ids = sorted(json.loads(p.read_text())["run_id"] for p in out.glob("*/*/*.json"))
    assert sweep_status(out)["counts"]["complete"] == 2
    for p in out.glob("*/*/*.json"):
        p.unlink()
    skipped[0] = ids[0]  # now one run is held elsewhere, never started here
    result = run_sweep(req)
    assert len(result.written) == 1  # the other is "held" by nobody: never started
    st = sweep_status(out)
    assert st["counts"]["complete"] == 1 and st["counts"]["not_started"] == 1 and st["claim_timeout"] == 42
    assert [r["run_id"] for r in st["runs"] if r["state"] == "not_started"] == [ids[0]]
    (manifest,) = (out / ".sweeps").iterdir()
    assert sorted(json.loads(manifest.read_text())["runs"]) == ids


@needs_slurm
def test_a_job_array_that_sbatch_refuses_is_one_clear_error(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "runs"), "--launcher", "slurm", "--slurm-partition", "nosuch",
                 "--slurm-gpus-per-job", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --launcher slurm: sbatch refused the job array: sbatch: error: Batch job submission failed: "
        "Invalid partition name specified")


def test_workers_run_this_peftbench_whatever_the_working_directory_holds(tmp_path):
    """Started inside another checkout, `python -m peftbench.cli` would import that checkout's peftbench."""
    import subprocess
    import sys

    from peftbench.sweep.launch import worker_command

    decoy = tmp_path / "peftbench"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise SystemExit('imported the peftbench of the working directory')\n")
    old_way = subprocess.run([sys.executable, "-m", "peftbench.cli", "tasks"], cwd=tmp_path, capture_output=True,
                             text=True)
    assert "imported the peftbench of the working directory" in old_way.stderr  # the trap is real
    ours = subprocess.run(worker_command(["tasks"]), cwd=tmp_path, capture_output=True, text=True)
    assert ours.returncode == 0, ours.stderr
    assert "digits" in ours.stdout  # the mini suite's task table, from this peftbench
