"""Fault injection: interruption, bad records, divergence, OOM, full disks, concurrent workers, untrusted files.

Every protection here has a test that fails without it. Runs use timm's 300k-parameter
``test_vit`` at 32 px on the generated ``vtab_root`` data: about a second per run.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from peftbench import records as records_mod
from peftbench import train as train_mod
from peftbench.checkpoint import Checkpointer
from peftbench.claims import Claims
from peftbench.cli import main
from peftbench.config import TrainConfig, load_suite_file
from peftbench.errors import UsageError
from peftbench.records import find_record, load_records, validate, write_record
from peftbench.sweep import execute as execute_mod
from peftbench.sweep import plan as plan_mod
from peftbench.sweep.request import SweepRequest
from peftbench.sweep.run import run_sweep
from peftbench.train import autocast_factory, make_optimizer, make_step

REPO = Path(__file__).resolve().parent.parent
FAST = ["epochs=1", "bench_steps=0", "batch_size=8", "eval_batch_size=8"]
BACKBONE = ["--backbone", "test_vit", "--weights", "none", "--img-size", "32"]



def sweep(root: Path, out: Path, methods=("linear",), tasks="cifar", seeds=(0,), sets=(), **kw):
    req = SweepRequest(methods=list(methods), tasks=tasks, seeds=list(seeds), suite="vtab1k", data_root=root, out=out,
                       backbone="test_vit", weights="none", img_size=32, sets=[*FAST, *sets], **kw)
    return run_sweep(req)


def json_files(out: Path) -> list[Path]:
    return sorted(out.rglob("*.json"))


def assert_clean(out: Path) -> list[dict]:
    """No temporary file, no claim left, every JSON file a whole record; returns the records."""
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not list(out.glob(".claims/*"))
    recs = [json.loads(p.read_text()) for p in json_files(out)]
    assert all(validate(r) is None for r in recs)
    return recs


def only_record(out: Path) -> dict:
    recs = assert_clean(out)
    assert len(recs) == 1
    return recs[0]


# --- records: atomic, strict JSON -------------------------------------------------------------------------------

def _record(**metrics) -> dict:
    return {"run_id": "abc", "status": "complete", "method": "linear", "task": "t", "seed": 0, "config": {},
            "backbone": {}, "data": {}, "metrics": metrics, "provenance": {}}


def test_full_disk_while_writing_leaves_no_file(tmp_path, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(records_mod.os, "fsync", no_space)
    target = tmp_path / "m" / "t" / "seed0-abc.json"
    with pytest.raises(OSError, match="No space left"):
        write_record(target, _record(test_top1=50.0))
    assert list(target.parent.iterdir()) == []


def test_full_disk_in_a_sweep_is_one_clear_error(vtab_root, tmp_path, monkeypatch, capsys):
    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(records_mod.os, "fsync", no_space)
    out = tmp_path / "runs"
    rc = main(["run", "--suite", "vtab1k", "--methods", "linear", "--tasks", "cifar",
               "--data-root", str(vtab_root), "--out", str(out),
               *BACKBONE, *[a for s in FAST for a in ("--set", s)], "--no-report"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "cannot write the record of linear/cifar100/seed0" in err and "No space left on device" in err
    assert json_files(out) == []
    assert_clean(out)


def test_non_finite_metrics_are_stored_as_null(tmp_path):
    path = write_record(tmp_path / "r.json", _record(loss=float("nan"), top=float("inf"), lst=[1.0, float("-inf")]))

    def refuse(name):
        raise AssertionError(f"{name} in a record")

    rec = json.loads(path.read_text(), parse_constant=refuse)  # strict JSON: no NaN / Infinity tokens
    assert rec["metrics"] == {"loss": None, "top": None, "lst": [1.0, None]}


# --- interruption -------------------------------------------------------------------------------------------------

def _kill_after(calls: int):
    count = [0]

    def hook(*args, **kwargs):
        count[0] += 1
        if count[0] >= calls:
            raise KeyboardInterrupt
    return hook


KILL_POINTS = {
    "decode": (plan_mod, "load_split"),
    "build": (execute_mod, "inference_gflops"),
    "train": (train_mod, "loss_fn"),
    "evaluate": (execute_mod, "evaluate"),
    "measure": (execute_mod, "measure_throughput"),
}


@pytest.mark.parametrize("point", [*KILL_POINTS, "record"])
def test_kill_at_each_point_leaves_no_partial_record_and_resumes(point, vtab_root, tmp_path, monkeypatch):
    out = tmp_path / "runs"
    with monkeypatch.context() as m:
        if point == "record":
            real_replace = os.replace

            def replace(src, dst):
                if str(dst).endswith(".json"):
                    raise KeyboardInterrupt
                return real_replace(src, dst)

            m.setattr(records_mod.os, "replace", replace)
        else:
            module, name = KILL_POINTS[point]
            original = getattr(module, name)
            kill = _kill_after(2 if point == "train" else 1)
            m.setattr(module, name, lambda *a, **k: (kill(), original(*a, **k))[1])
        with pytest.raises(KeyboardInterrupt):
            sweep(vtab_root, out)
    assert (not out.exists()) or assert_clean(out) == []
    result = sweep(vtab_root, out)
    assert result.statuses == {"complete": 1}
    assert only_record(out)["status"] == "complete"


def _cli_run(out: Path, root: Path, cache: Path, *extra: str, sets=()) -> subprocess.Popen:
    env = {**os.environ, "PEFTBENCH_CACHE": str(cache), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    args = [sys.executable, "-m", "peftbench.cli", "run", "--suite", "vtab1k",
            "--methods", "full", "--tasks", "cifar,eurosat",
            "--data-root", str(root), "--out", str(out), *BACKBONE, "--no-report",
            *[a for s in [*FAST, *sets] for a in ("--set", s)], *extra]
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_sigterm_in_a_real_process_keeps_only_whole_records(vtab_root, tmp_path):
    out, cache = tmp_path / "runs", tmp_path / "cache"
    sets = ["epochs=40"]
    proc = _cli_run(out, vtab_root, cache, "--checkpoint-every", "1", sets=sets)
    deadline = time.monotonic() + 240
    while not list(out.glob(".checkpoints/*.pt")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[0]  # still training: the signal lands mid-run
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, text
    assert "interrupted: the run in progress was discarded" in text and "training checkpoint(s) kept" in text
    before = assert_clean(out)
    assert all(r["status"] == "complete" for r in before)
    assert len(before) < 2

    proc = _cli_run(out, vtab_root, cache, "--checkpoint-every", "1", sets=sets)
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, text
    after = assert_clean(out)
    assert sorted(r["task"] for r in after) == ["cifar100", "eurosat"]  # each run once, nothing duplicated
    assert all(r["status"] == "complete" and r["metrics"]["epochs_done"] == 40 for r in after)
    assert any(r["provenance"]["resumed_from_epoch"] > 0 for r in after)
    assert not list(out.glob(".checkpoints/*"))


def test_resumed_run_equals_an_uninterrupted_one(vtab_root, tmp_path, monkeypatch):
    # drop_path draws from the torch RNG, the shuffle from its generator, warm-up + cosine from the schedule
    sets = ["epochs=4", "warmup_epochs=1", "drop_path=0.2", "lr=0.01"]
    whole = sweep(vtab_root, tmp_path / "a", methods=("full",), sets=sets, checkpoint_every=1)
    assert whole.statuses == {"complete": 1}
    expected = only_record(tmp_path / "a")
    assert expected["provenance"]["resumed_from_epoch"] == 0

    out = tmp_path / "b"
    real_save = Checkpointer.save

    def save_then_die(self, state):
        real_save(self, state)
        if state["epochs_done"] == 2:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Checkpointer, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            sweep(vtab_root, out, methods=("full",), sets=sets, checkpoint_every=1)
    assert json_files(out) == [] and len(list(out.glob(".checkpoints/*.pt"))) == 1
    sweep(vtab_root, out, methods=("full",), sets=sets, checkpoint_every=1)
    resumed = only_record(out)
    assert resumed["provenance"]["resumed_from_epoch"] == 2
    assert resumed["run_id"] == expected["run_id"]  # --checkpoint-every is not part of the run id
    for key in ("final_train_loss", "test_top1", "epochs_done"):
        assert resumed["metrics"][key] == expected["metrics"][key], key  # bit for bit on the CPU
    assert not list(out.glob(".checkpoints/*"))  # deleted once the record is written


def test_damaged_or_pickled_checkpoint_is_ignored_not_executed(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("payload ran",))

    notes = []
    ckpt = Checkpointer(tmp_path / "x.pt", note=notes.append)
    ckpt.path.write_bytes(pickle.dumps({"format": 1, "model": Payload()}, protocol=2))
    assert ckpt.load({}) is None
    ckpt.path.write_bytes(b"\x80\x02truncat")
    assert ckpt.load({}) is None
    assert "payload ran" not in capsys.readouterr().out
    assert len(notes) == 2 and all("ignored (unreadable" in n for n in notes)
    ckpt.save({"epochs": 3})
    assert ckpt.load({"epochs": 4}) is None and "does not match" in notes[-1]
    assert ckpt.load({"epochs": 3})["epochs"] == 3


# --- divergence, OOM, failures, gradient accumulation ---------------------------------------------------------------

def test_nan_loss_ends_the_run_as_diverged_at_once(vtab_root, tmp_path, monkeypatch):
    calls = [0]
    original = train_mod.loss_fn

    def nan_on_second_step(*args):
        calls[0] += 1
        loss = original(*args)
        return loss * float("nan") if calls[0] == 2 else loss

    monkeypatch.setattr(train_mod, "loss_fn", nan_on_second_step)
    result = sweep(vtab_root, tmp_path / "runs", sets=["epochs=2"])
    assert result.statuses == {"diverged": 1}
    rec = only_record(tmp_path / "runs")
    assert rec["status"] == "diverged" and "non-finite training loss at step 2 (epoch 1)" in rec["reason"]
    assert calls[0] == 2  # stopped at the step that diverged: no batch trained on NaN weights
    assert "final_train_loss" not in rec["metrics"] and rec["metrics"]["trainable_params"] > 0
    again = sweep(vtab_root, tmp_path / "runs", sets=["epochs=2"])  # final: not retried
    assert again.skipped == ["linear/cifar100/seed0"] and not again.written


@pytest.mark.parametrize("phase, target", [("train", (train_mod, "loss_fn")),
                                           ("evaluation", (execute_mod, "evaluate"))])
def test_simulated_cuda_oom_is_recorded_never_retried_smaller(phase, target, vtab_root, tmp_path, monkeypatch):
    calls = []

    def oom(*args, **kwargs):
        calls.append(args)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore detail")

    monkeypatch.setattr(*target, oom)
    result = sweep(vtab_root, tmp_path / "runs", sets=["grad_accum=2"])
    assert result.statuses == {"oom": 1}
    rec = only_record(tmp_path / "runs")
    assert rec["reason"] == (f"CUDA out of memory during {phase} at batch 8 (grad_accum 2): "
                             "CUDA out of memory. Tried to allocate 20.00 GiB")
    assert len(calls) == 1  # no second attempt with a smaller batch
    assert rec["config"]["train"]["batch_size"] == 8 and rec["config"]["train"]["grad_accum"] == 2


def test_failed_run_is_recorded_with_reason_and_provenance_is_complete(vtab_root, tmp_path, monkeypatch):
    original = execute_mod.evaluate
    calls = [0]

    def fail_first(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("boom in evaluation")
        return original(*args, **kwargs)

    monkeypatch.setattr(execute_mod, "evaluate", fail_first)
    result = sweep(vtab_root, tmp_path / "runs", seeds=(0, 1), worker_id="w-test")
    assert result.statuses == {"failed": 1, "complete": 1}  # the sweep went on after the failure
    recs = {r["seed"]: r for r in assert_clean(tmp_path / "runs")}
    assert recs[0]["status"] == "failed" and recs[0]["reason"] == "RuntimeError: boom in evaluation"
    done = recs[1]
    prov = done["provenance"]
    assert set(prov["versions"]) >= {"peftbench", "torch", "timm", "numpy", "python"}
    assert {"git_commit", "git_dirty", "device", "hostname", "argv"} <= set(prov)
    assert prov["worker"] == "w-test" and prov["device"].startswith("cpu")
    assert len(done["backbone"]["checksum"]) == 64 and len(done["data"]["checksum"]) == 64
    assert done["seed"] == 1 and done["config"]["train"]["epochs"] == 1


def test_grad_accum_gives_the_same_gradients(make_tiny_vit):
    torch.manual_seed(1)
    x, y = torch.randn(7, 3, 32, 32), torch.randint(0, 5, (7,))  # 7 = uneven micro-batches (4 + 3)
    grads = []
    for accum in (1, 2, 3):
        model = make_tiny_vit()
        cfg = TrainConfig(grad_accum=accum, lr=1e-3)
        step = make_step(model, make_optimizer(model, cfg, torch.device("cpu")), cfg, autocast_factory("fp32", "cpu"))
        loss = step(x, y)
        grads.append((float(loss), [p.grad.clone() for p in model.parameters()]))
    (loss1, g1) = grads[0]
    for loss, g in grads[1:]:
        assert loss == pytest.approx(loss1, rel=1e-5)
        for a, b in zip(g1, g):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# --- records on disk: truncated, foreign --------------------------------------------------------------------------

def test_truncated_record_is_reported_rerun_and_replaced(vtab_root, tmp_path):
    out = tmp_path / "runs"
    sweep(vtab_root, out)
    (path,) = json_files(out)
    rid = json.loads(path.read_text())["run_id"]
    path.write_text(path.read_text()[:200])
    (out / "notes.json").write_text('{"hello": "not a record"}')
    recs, problems = load_records(out)
    assert recs == []
    assert any(str(path) in p and "not a readable record" in p for p in problems)
    assert any(str(out / "notes.json") in p and "not a peftbench record" in p for p in problems)
    assert find_record(out, rid) is None  # a truncated record counts as absent
    result = sweep(vtab_root, out)
    assert result.written == [path] and result.skipped == []
    assert validate(json.loads(path.read_text())) is None
    assert len(load_records(out)[0]) == 1


# --- concurrent workers ---------------------------------------------------------------------------------------------

def test_claims_are_exclusive_and_released(tmp_path):
    a, b = Claims(tmp_path, "a"), Claims(tmp_path, "b")
    claim = a.acquire("r1")
    assert claim is not None and b.acquire("r1") is None
    assert b.owner("r1")["worker"] == "a" and b.owner("r1")["pid"] == os.getpid()
    claim.release()
    assert not a.path("r1").exists()
    again = b.acquire("r1")
    assert again is not None and a.owner("r1")["worker"] == "b"
    again.release()


def _poll(check, timeout: float = 10.0) -> None:
    """Return as soon as ``check()`` holds, or after ``timeout`` s (the caller's assert then fails).

    A deadline instead of a fixed sleep: fast when the heartbeat thread is prompt, no false failure
    when a loaded machine delays it by more than a few intervals.
    """
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_heartbeat_keeps_a_claim_alive(tmp_path):
    claims = Claims(tmp_path, "a", timeout=0.4)  # heartbeat every 0.1 s
    claim = claims.acquire("r1")
    os.utime(claims.path("r1"), (time.time() - 100, time.time() - 100))
    _poll(lambda: time.time() - claims.path("r1").stat().st_mtime < 0.4)  # the heartbeat touched it
    assert time.time() - claims.path("r1").stat().st_mtime < 0.4
    assert Claims(tmp_path, "b", timeout=0.4).acquire("r1") is None
    claim.release()


def test_a_worker_that_lost_its_claim_notices_and_leaves_the_new_one(tmp_path):
    claims = Claims(tmp_path, "slow", timeout=0.4)
    claim = claims.acquire("r1")
    _plant_claim(claims, "r1", age=0)  # what a takeover leaves: another file at the same path
    _poll(lambda: claim.lost)  # the next heartbeat (every 0.1 s) sees the other file
    assert claim.lost
    claim.release()
    assert claims.owner("r1")["worker"] == "ghost"


def _plant_claim(claims: Claims, run_id: str, age: float, host: str = "elsewhere", pid: int = 1) -> None:
    claims.folder.mkdir(parents=True, exist_ok=True)
    path, tmp = claims.path(run_id), claims.folder / "planting"
    tmp.write_text(json.dumps({"worker": "ghost", "pid": pid, "host": host, "time": 0}))
    os.replace(tmp, path)  # a new file, as a takeover makes
    os.utime(path, (time.time() - age, time.time() - age))


def test_stale_claim_is_taken_over_by_exactly_one_worker(tmp_path):
    claims = Claims(tmp_path, "probe", timeout=60)
    _plant_claim(claims, "fresh", age=5)
    assert claims.acquire("fresh") is None  # alive elsewhere: left alone

    _plant_claim(claims, "stale", age=600)
    won, barrier = [], threading.Barrier(8)

    def take(i: int) -> None:
        barrier.wait()
        claim = Claims(tmp_path, f"w{i}", timeout=60).acquire("stale")
        if claim is not None:
            won.append((i, claim))

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    assert claims.owner("stale")["worker"] == f"w{won[0][0]}"
    assert sorted(p.name for p in claims.folder.iterdir()) == ["fresh.claim", "stale.claim"]  # no lock, no temp
    won[0][1].release()


def test_claim_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    claims = Claims(tmp_path, "me", timeout=600)
    _plant_claim(claims, "r1", age=0, host=socket.gethostname(), pid=dead.pid)
    claim = claims.acquire("r1")
    assert claim is not None and claims.owner("r1")["worker"] == "me"
    claim.release()


def test_runs_claimed_by_live_workers_are_left_to_them(vtab_root, tmp_path):
    out = tmp_path / "runs"
    other = Claims(out, "other-worker").acquire
    result = sweep(vtab_root, out, seeds=(0, 1), claim_timeout=60)  # first learn the run ids
    ids = sorted(r["run_id"] for r in assert_clean(out))
    for p in json_files(out):
        p.unlink()
    held = other(ids[0])
    result = sweep(vtab_root, out, seeds=(0, 1), claim_timeout=60)
    held.release()
    assert len(result.written) == 1 and len(result.left_to_others) == 1
    assert [r["run_id"] for r in assert_clean(out)] == [ids[1]]


def test_run_finished_by_another_worker_just_before_our_claim_is_not_rerun(vtab_root, tmp_path, monkeypatch):
    out = tmp_path / "runs"
    sweep(vtab_root, out)
    (path,) = json_files(out)
    text = path.read_text()
    path.unlink()
    real_acquire = Claims.acquire

    def finish_elsewhere_then_acquire(self, run_id):
        path.write_text(text)  # the other worker wrote its record and released its claim a moment ago
        return real_acquire(self, run_id)

    monkeypatch.setattr(Claims, "acquire", finish_elsewhere_then_acquire)
    result = sweep(vtab_root, out)
    assert result.written == [] and result.skipped == ["linear/cifar100/seed0"]


@pytest.mark.slow
def test_four_workers_share_one_sweep_each_run_trained_once(concurrent_workers, vtab_root, tmp_path):
    out = tmp_path / "runs"
    trained = concurrent_workers(["run", "--suite", "vtab1k", "--methods", "linear,full", "--tasks", "cifar,eurosat",
                                  "--seeds", "0,1", "--data-root", str(vtab_root), "--out", str(out), *BACKBONE,
                                  "--no-report", *[a for s in FAST for a in ("--set", s)]], 4, tmp_path / "cache")
    assert len(trained) == 8 and all(len(ws) == 1 for ws in trained.values()), trained  # each run trained once
    recs = assert_clean(out)
    assert len(recs) == 8 and len({r["run_id"] for r in recs}) == 8
    for r in recs:
        assert [r["provenance"]["worker"]] == trained[f"{r['method']}/{r['task']}/seed{r['seed']}"]


# --- untrusted files ------------------------------------------------------------------------------------------------

def test_suite_yaml_with_python_tag_is_refused(tmp_path):
    suite = tmp_path / "evil.yaml"
    suite.write_text("defaults:\n  epochs: !!python/object/apply:os.system ['echo pwned > pwned.txt']\n")
    with pytest.raises(UsageError, match=f"suite file {suite}.*python/object"):
        load_suite_file(suite)
    assert not Path("pwned.txt").exists()

