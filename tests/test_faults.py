"""Error paths under faults (issue 18): phantom claims, records that lie, suite files of the wrong shape,
full disks, settings that cannot work on the data, pre-flight noise.

Disk-full tests run on a real tiny tmpfs when this process may mount one (root), and through a patched
writer otherwise, so each protection is exercised everywhere.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from peftbench import claims as claims_mod
from peftbench.claims import ClaimError, Claims
from peftbench.cli import main

FAST = ["epochs=1", "bench_steps=0", "batch_size=8", "eval_batch_size=8"]
BACKBONE = ["--backbone", "test_vit", "--weights", "none", "--img-size", "32"]



def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@contextlib.contextmanager
def tiny_disk(folder: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs mounted at ``folder`` and filled up: creating files works, writing data fails."""
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("needs root to mount a tiny tmpfs; the patched-writer variant of this test covers it")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", f"peftbench-{uuid.uuid4().hex[:8]}",
                           str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the patched-writer variant covers it")
    try:
        with contextlib.suppress(OSError), open(folder / "ballast", "wb") as fh:
            fh.write(b"\0" * (1 << 20))
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def run_cli(root: Path, out: Path, *extra: str, methods: str = "linear", tasks: str = "cifar",
            sets: tuple[str, ...] = ()) -> int:
    return main(["run", "--suite", "vtab1k", "--methods", methods, "--tasks", tasks, "--data-root", str(root),
                 "--out", str(out), *BACKBONE, *[a for s in [*FAST, *sets] for a in ("--set", s)], *extra])


# --- 1. phantom claims ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("debris", ["", "{\"worker\": \"w\"", "[]", "{}"])
def test_empty_or_unreadable_claim_is_stale_at_once(tmp_path, debris):
    claims = Claims(tmp_path, "me", timeout=600)
    claims.folder.mkdir(parents=True)
    claims.path("r1").write_text(debris)  # what a crash or a full disk left while the claim was written
    claim = claims.acquire("r1")  # at once: its mtime is fresh, the timeout far away
    assert claim is not None and claims.owner("r1")["worker"] == "me"
    assert claims.live("r1")
    claim.release()
    claims.path("r1").write_text(debris)
    assert not claims.live("r1")


def test_phantom_claim_does_not_stop_the_sweep(vtab_root, tmp_path, capsys):
    out = tmp_path / "runs"
    assert run_cli(vtab_root, out, "--no-report") == 0
    (record,) = out.rglob("*.json")
    rid = json.loads(record.read_text())["run_id"]
    record.unlink()
    (out / ".claims").mkdir(exist_ok=True)
    (out / ".claims" / f"{rid}.claim").write_text("")  # the phantom
    capsys.readouterr()
    assert run_cli(vtab_root, out, "--no-report") == 0
    text = capsys.readouterr().out
    assert "1 complete" in text and "left to" not in text
    assert len(list(out.rglob("*.json"))) == 1 and not list((out / ".claims").iterdir())


@pytest.mark.parametrize("how", ["tmpfs", "patched"])
def test_claim_on_a_full_disk_is_one_error_and_leaves_nothing(tmp_path, monkeypatch, how):
    with contextlib.ExitStack() as stack:
        if how == "tmpfs":
            disk = stack.enter_context(tiny_disk(tmp_path / "disk"))
        else:
            disk = tmp_path / "disk"
            monkeypatch.setattr(claims_mod.json, "dump", _no_space)
        claims = Claims(disk, "me")
        with pytest.raises(ClaimError, match=r"cannot write a claim in .*: No space left on device: free some space; "
                                             r"no claim was"):
            claims.acquire("r1")
        assert [p.name for p in claims.folder.iterdir()] == []  # no phantom, no temporary file


@pytest.mark.parametrize("how", ["tmpfs", "patched"])
def test_full_disk_at_claim_time_in_a_sweep_is_one_error_line(vtab_root, tmp_path, monkeypatch, capsys, how):
    with contextlib.ExitStack() as stack:
        if how == "tmpfs":
            out = stack.enter_context(tiny_disk(tmp_path / "disk")) / "runs"
        else:
            out = tmp_path / "runs"
            monkeypatch.setattr(claims_mod.json, "dump", _no_space)
        assert run_cli(vtab_root, out, "--no-report") == 2
        err = capsys.readouterr().err
        assert err.startswith("error: cannot write a claim in ") and "No space left on device" in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not list((out / ".claims").iterdir())  # no phantom for the next run to trip over


def test_runs_left_to_a_dead_worker_make_the_sweep_fail(vtab_root, tmp_path, monkeypatch, capsys):
    """A claim that nobody can take over (here: the takeover always loses) and no live worker behind it."""
    out = tmp_path / "runs"
    monkeypatch.setattr(Claims, "acquire", lambda self, run_id: None)
    assert run_cli(vtab_root, out, "--no-report") == 1
    text = capsys.readouterr().out
    assert "which is not alive; not run" in text
    assert "warning: 1 run(s) not done: claimed by workers that are no longer alive" in text


def test_runs_left_to_a_live_worker_say_so_and_succeed(vtab_root, tmp_path, capsys):
    out = tmp_path / "runs"
    assert run_cli(vtab_root, out, "--no-report") == 0
    (record,) = out.rglob("*.json")
    rid = json.loads(record.read_text())["run_id"]
    record.unlink()
    held = Claims(out, "busy-worker").acquire(rid)  # alive: this very process, heartbeat running
    capsys.readouterr()
    try:
        assert run_cli(vtab_root, out, "--no-report") == 0
    finally:
        held.release()
    text = capsys.readouterr().out
    assert "claimed by busy-worker, left to it" in text and "1 run(s) left to other live workers" in text


# --- 4. a checkpoint that cannot be saved; 7. the resume line --------------------------------------------------------

@pytest.mark.parametrize("how", ["tmpfs", "patched"])
def test_checkpoint_on_a_full_disk_warns_and_training_goes_on(vtab_root, tmp_path, monkeypatch, capsys, how):
    from peftbench import checkpoint as checkpoint_mod

    out = tmp_path / "runs"
    with contextlib.ExitStack() as stack:
        if how == "tmpfs":  # only the checkpoints' folder is full: records still fit
            stack.enter_context(tiny_disk(out / ".checkpoints"))
        else:
            monkeypatch.setattr(checkpoint_mod.torch, "save", _no_space)
        rc = run_cli(vtab_root, out, "--no-report", "--checkpoint-every", "1", sets=("epochs=3",))
        text = capsys.readouterr().out
        assert rc == 0, text
        assert "warning: cannot save the training checkpoint" in text and "No space left on device" in text
        assert text.count("cannot save the training checkpoint") == 1  # once, then checkpointing stops
        assert "1 complete" in text
        (record,) = [p for p in out.rglob("*.json")]
        rec = json.loads(record.read_text())
        assert rec["status"] == "complete" and rec["metrics"]["epochs_done"] == 3
        assert not [p for p in (out / ".checkpoints").iterdir() if p.name != "ballast"]  # no temporary file


def test_resumed_run_says_from_which_epoch(vtab_root, tmp_path, monkeypatch, capsys):
    from peftbench.checkpoint import Checkpointer

    out = tmp_path / "runs"
    real_save = Checkpointer.save

    def save_then_die(self, state):
        real_save(self, state)
        if state["epochs_done"] == 2:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Checkpointer, "save", save_then_die)
        assert run_cli(vtab_root, out, "--no-report", "--checkpoint-every", "1", methods="full",
                       sets=("epochs=3",)) == 130
    capsys.readouterr()
    assert run_cli(vtab_root, out, "--no-report", "--checkpoint-every", "1", methods="full", sets=("epochs=3",)) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "resuming" in ln]
    assert len(lines) == 1 and lines[0].startswith("full/cifar100/seed0: resuming from epoch 2 of 3 (checkpoint ")


def test_ctrl_c_while_a_checkpoint_is_written_stops_the_sweep(vtab_root, tmp_path, monkeypatch, capsys):
    """torch.save writes through C++: a Ctrl-C landing inside its write callback came out as a RuntimeError,
    read as a failed save, and the sweep trained on (a SIGTERM'd worker finished every run)."""
    import signal

    from peftbench import checkpoint as checkpoint_mod

    real_save = checkpoint_mod.torch.save

    class SignalOnWrite:  # the file object torch.save writes to: Ctrl-C arrives mid-write
        def __init__(self, fh):
            self.fh, self.writes = fh, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 2:
                os.kill(os.getpid(), signal.SIGINT)
            return self.fh.write(data)

        def flush(self):
            return self.fh.flush()

    monkeypatch.setattr(checkpoint_mod.torch, "save", lambda obj, fh: real_save(obj, SignalOnWrite(fh)))
    out = tmp_path / "runs"
    rc = run_cli(vtab_root, out, "--no-report", "--checkpoint-every", "1", methods="full", sets=("epochs=3",))
    text = capsys.readouterr().out
    assert rc == 130, text
    assert "cannot save the training checkpoint" not in text
    assert not list(out.rglob("*.json"))  # the run in progress wrote no record
    (kept,) = list((out / ".checkpoints").iterdir())  # the checkpoint being written finished whole
    assert checkpoint_mod.torch.load(kept, weights_only=True)["epochs_done"] == 1


# --- 5. settings that cannot work: refused for every job before the first run starts ---------------------------------

def test_ship_settings_that_cannot_work_are_refused_before_any_run(vtab_root, tmp_path, capsys):
    out = tmp_path / "runs"
    rc = run_cli(vtab_root, out, "--no-report", methods="linear,ship", tasks="cifar,eurosat",
                 sets=("ship.num_prototypes=500", "ship.matching_warmup=0", "ship.matching_topk=400",
                       "ship.attr_tokens=5"))
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.startswith("error: 4 setting(s) cannot work on the data; nothing was run")
    for task in ("cifar100", "eurosat"):
        assert f"ship/{task}: ship.num_prototypes=500 k-means clusters, but the training split has 32 images" in err
        assert f"ship/{task}: ship.matching_topk=400, but at 32x32 px there are only" in err
    assert not list(out.rglob("*.json"))  # linear/cifar100 was not trained first


def test_ship_check_passes_workable_settings():
    from peftbench.method_api import RunFacts
    from peftbench.methods.ship import ShipConfig

    facts = RunFacts(task="t", num_classes=10, train_size=1000, img_size=(224, 224), image_tokens=196,
                     prefix_tokens=1, depth=12, epochs=100)
    assert ShipConfig().check(facts) == []
    # explicit layers [0] take no attribute prompt, and a matching loss that never switches on needs no tokens
    small = RunFacts(**{**facts.__dict__, "image_tokens": 4, "epochs": 10})
    assert ShipConfig(layers=(0,), matching_warmup=10).check(small) == []
    assert ShipConfig(num_prototypes=1000, prototypes="bank.npy").check(facts) == []  # a bank: no k-means


@pytest.mark.parametrize("option, value, message", [
    ("--set", "lr=nan", "lr=nan: must be a finite number"),
    ("--set", "lr=inf", "lr=inf: must be a finite number"),
    ("--set", "lr=0", "lr > 0"),
    ("--set", "weight_decay=.nan", "weight_decay=nan: must be a finite number"),
    ("--claim-timeout", "0", "--claim-timeout 0: must be a positive number of seconds"),
    ("--claim-timeout", "nan", "--claim-timeout nan: must be a positive number of seconds"),
])
def test_unworkable_options_are_one_error_before_anything_runs(vtab_root, tmp_path, capsys, option, value, message):
    out = tmp_path / "runs"
    assert run_cli(vtab_root, out, "--no-report", option, value) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not list(out.rglob("*.json"))


# --- 3. suite files of the wrong shape -------------------------------------------------------------------------------

@pytest.mark.parametrize("body, where", [
    ("methods: {linear: 5}", "methods.linear: expected a mapping of KEY: VALUE, got int 5"),
    ("recipes: {r: {tasks: {cifar100: [1, 2]}}}",
     "recipes.r.tasks.cifar100: expected a mapping of METHOD: {KEY: VALUE}, got a list [1, 2]"),
    ("recipes: {r: {tasks: {cifar100: {linear: 3}}}}",
     "recipes.r.tasks.cifar100.linear: expected a mapping of KEY: VALUE, got int 3"),
    ("methods: [linear, full]", "methods: expected a mapping of METHOD: {KEY: VALUE}, got a list"),
    ("defaults: [epochs, 3]", "defaults: expected a mapping of KEY: VALUE, got a list"),
    ("defaults: {epochs: {a: 1}}", "defaults.epochs: expected a value or a list of plain values, got a mapping"),
    ("recipes: {r: {tasks: {cifar100: {linear: {lr: [[1]]}}}}}",
     "recipes.r.tasks.cifar100.linear.lr: expected a value or a list of plain"),
    ("methods: {1: {lr: 0.1}}", "methods.1: expected a name (text), got int 1"),
    ("backbone: [vit]", "backbone: expected text, got a list"),
    ("recipes: 7", "recipes: expected a mapping of NAME: {note, methods, tasks}, got int 7"),
    ("recipes: {r: {tasks: 7}}", "recipes.r.tasks: expected a mapping of TASK: {METHOD: {KEY: VALUE}}, got int 7"),
    ("tune: {budget: 0}", "tune.budget: expected a whole number of trials, at least 1, got int 0"),
    ("tune: {grid: {lr: {a: 1}}}", "tune.grid.lr: expected a value or a list of plain values, got a mapping"),
    ("tasks: {cifar100: {linear: {lr: 0.1}}}", "a top-level 'tasks' section (per-task settings) belongs under a "
                                               "named recipe"),
])
def test_suite_file_of_the_wrong_shape_names_the_key(vtab_root, tmp_path, capsys, body, where):
    suite = tmp_path / "suite.yaml"
    suite.write_text(body + "\n")
    assert run_cli(vtab_root, tmp_path / "runs", "--no-report", "--suite-file", str(suite)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: suite file {suite}: {where}"), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("body, where", [
    ("defaults: {warmup_epochs: [1, 2]}", "defaults.warmup_epochs: [1, 2] is not a valid int"),
    ("methods: {linear: {lr: fast}}", "methods.linear.lr: 'fast' is not a valid float"),
])
def test_suite_value_of_the_wrong_type_names_file_and_key(vtab_root, tmp_path, capsys, body, where):
    suite = tmp_path / "suite.yaml"
    suite.write_text(body + "\n")
    assert run_cli(vtab_root, tmp_path / "runs", "--no-report", "--suite-file", str(suite)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {suite}: {where}"), err


# --- 6. pre-flight noise ---------------------------------------------------------------------------------------------

def _preflight_problems(root: Path, task: str = "eurosat") -> list[str]:
    from peftbench.data.splits import read_task_lists
    from peftbench.data.tasks import resolve_tasks
    from peftbench.errors import DataError

    with pytest.raises(DataError) as info:
        read_task_lists(root, resolve_tasks(task, "vtab1k")[0])
    return [line.strip() for line in str(info.value).splitlines()[1:]]


@pytest.mark.parametrize("split", ["train800", "val200", "train800val200"])
def test_a_bad_line_is_one_problem_not_two(vtab_root, split):
    folder = vtab_root / "eurosat"
    lines = (folder / f"{split}.txt").read_text().splitlines()
    lines[1] = lines[1].rsplit(" ", 1)[0] + " ten"
    (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
    assert _preflight_problems(vtab_root) == [f"{folder / f'{split}.txt'}:2: label 'ten' is not an integer"]


def test_non_utf8_list_names_the_line(vtab_root):
    path = vtab_root / "eurosat" / "val200.txt"
    lines = path.read_bytes().splitlines()
    lines[2] = lines[2].replace(b".", b"\xe9.", 1)  # a Latin-1 é in an image path
    path.write_bytes(b"\n".join(lines) + b"\n")
    (problem,) = _preflight_problems(vtab_root)
    assert problem.startswith(f"{path}:3: not UTF-8 text (byte 0xe9")


# --- 2. a report that does not trust its records, written whole or not at all -----------------------------------------

def _write_raw(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))  # allow_nan: NaN / Infinity tokens, as a foreign writer may leave


BAD_VALUES = [
    ("metrics", "test_top1", float("nan"), "metrics.test_top1 = nan: must be an accuracy in [0, 100]"),
    ("metrics", "test_top1", float("inf"), "metrics.test_top1 = inf: must be an accuracy in [0, 100]"),
    ("metrics", "test_top1", 1e308, "metrics.test_top1 = 1e+308: must be an accuracy in [0, 100]"),
    ("metrics", "test_top1", 250, "metrics.test_top1 = 250: must be an accuracy in [0, 100]"),
    ("metrics", "test_top1", -1.0, "metrics.test_top1 = -1.0: must be an accuracy in [0, 100]"),
    ("metrics", "test_top1", "87.5", "metrics.test_top1 = '87.5': must be an accuracy in [0, 100]"),
    ("metrics", "test_top1", True, "metrics.test_top1 = True: must be an accuracy in [0, 100]"),
    ("metrics", "trainable_params", float("nan"), "metrics.trainable_params = nan: must be a count"),
    ("metrics", "trainable_params", -5, "metrics.trainable_params = -5: must be a count"),
    ("metrics", "trainable_params", 2.5, "metrics.trainable_params = 2.5: must be a count"),
    ("metrics", "gflops", "fast", "metrics.gflops = 'fast': must be a finite non-negative number"),
    ("metrics", "peak_mem_bytes", float("inf"), "metrics.peak_mem_bytes = inf: must be a count"),
    ("metrics", "wall_s", {"train": "ten"}, "metrics.wall_s = {'train': 'ten'}: must be an object of seconds"),
    ("backbone", "img_size", 224, "backbone.img_size = 224: must be a list of sizes"),
    ("backbone", "name", ["vit"], "backbone.name = ['vit']: must be text"),
    ("config", "train", {"epochs": [1]}, "config.train.epochs = [1]: must be a count"),
    (None, "seed", "0", "seed = '0': must be an integer"),
    (None, "metrics", [], "metrics must be an object"),
]


def _bad_record(section, key, value, seed: int = 1) -> dict:
    from test_report import make_record

    bad = make_record("linear", "cifar100", seed, 70.0)
    (bad if section is None else bad[section])[key] = value
    return bad


@pytest.mark.parametrize("section, key, value, why", BAD_VALUES, ids=[f"{k}={v!r}" for _, k, v, _ in BAD_VALUES])
def test_a_record_with_an_unbelievable_value_is_skipped_naming_the_field(tmp_path, section, key, value, why):
    from peftbench.records import load_records

    _write_raw(tmp_path / "bad.json", _bad_record(section, key, value))
    records, problems = load_records(tmp_path)
    assert records == []
    assert len(problems) == 1 and problems[0].startswith(f"{tmp_path / 'bad.json'}: not a peftbench record ({why}")


def test_report_leaves_bad_records_out_of_its_means(tmp_path, capsys):
    from test_report import make_record

    runs = tmp_path / "runs"
    _write_raw(runs / "good.json", make_record("linear", "cifar100", 0, 60.0))
    for i, (section, key, value, _) in enumerate(BAD_VALUES[:8]):
        _write_raw(runs / f"bad{i}.json", _bad_record(section, key, value, seed=i + 1))
    assert main(["report", str(runs), "--no-reference"]) == 0
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("warning: skipped ")]
    assert len(warnings) == 8 and all(f"{runs}/bad" in w and "metrics." in w for w in warnings)
    (row,) = [line for line in (runs / "report" / "summary.md").read_text().splitlines()
              if line.startswith("| linear |")]
    assert row.startswith("| linear | 60.0 | 60.0 (1/19) |") and row.endswith("| 1 |")  # one seed: the good one


def _tiny_report_runs(root: Path) -> Path:
    from test_report import make_record

    for seed, acc in ((0, 60.0), (1, 62.0)):
        _write_raw(root / f"r{seed}.json", make_record("linear", "cifar100", seed, acc))
    return root


@pytest.mark.parametrize("how", ["tmpfs", "patched"])
def test_report_on_a_full_disk_is_one_error_and_changes_nothing(tmp_path, monkeypatch, capsys, how):
    import matplotlib.figure

    runs = _tiny_report_runs(tmp_path / "runs")
    with contextlib.ExitStack() as stack:
        if how == "tmpfs":
            out = stack.enter_context(tiny_disk(tmp_path / "disk")) / "report"
        else:
            out = tmp_path / "report"
            out.mkdir()
            (out / "summary.md").write_text("the previous report\n")
            monkeypatch.setattr(matplotlib.figure.Figure, "savefig", _no_space)  # text files written, plots fail
        before = sorted(p.name for p in out.parent.iterdir())
        rc = main(["report", str(runs), "--out", str(out), "--no-reference"])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err
        assert err == f"error: cannot write the report to {out}: No space left on device: free some space; nothing " \
                      "in it was changed; then run `peftbench report` again\n"
        assert sorted(p.name for p in out.parent.iterdir()) == before  # no temporary folder left
        if how == "patched":  # the old report stays whole: no new markdown linking plots that were never made
            assert [p.name for p in out.iterdir()] == ["summary.md"]
            assert (out / "summary.md").read_text() == "the previous report\n"
