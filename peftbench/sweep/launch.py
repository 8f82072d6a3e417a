"""Launchers: spread one sweep over worker processes — local ones (one per GPU) or a Slurm job array.

A launcher schedules nothing. It re-invokes the same peftbench command line, minus the launcher
options, as N workers over the same ``--out`` folder; the run claims (``claims.py``) make every run
execute once and let a worker take over the run of one that died. A subcommand gets launchers by
calling :func:`add_launcher_args` on its parser; the CLI hands any command whose ``--launcher`` is
not ``none`` to :func:`launch`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import UsageError
from ..layout import RunsFolder

# A worker runs the same peftbench as the process that started it: `python -m peftbench.cli` would put the
# working directory first on sys.path, so started inside another checkout of peftbench it would import that
# one (an older version, say). The boot line drops the working directory ('' under -c) and puts the folder
# that holds this peftbench package first instead.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_WORKER_BOOT = ("import sys; sys.path[:] = [sys.argv.pop(1)] + [p for p in sys.path if p]; "
                "from peftbench.cli import main; sys.exit(main(sys.argv[1:]))")


def worker_command(wargv: list[str]) -> list[str]:
    """The command line of a worker process: this peftbench's CLI with ``wargv``, whatever the working
    directory holds."""
    return [sys.executable, "-c", _WORKER_BOOT, _PACKAGE_ROOT, *wargv]


LAUNCHER_ENV = "PEFTBENCH_LAUNCHER"  # the --launcher used when none is given (default auto)
WORKER_MEMORY = 2 << 30  # bytes of available memory that auto asks per local worker (a mini-suite run peaks at ~1 GiB)


def add_launcher_args(p: argparse.ArgumentParser) -> None:
    """The launcher options; the same definitions strip them from a worker's command line."""
    g = p.add_argument_group("workers", "spread the sweep over several worker processes sharing --out (each run "
                                        "executes once; a dead worker's run is taken over)")
    g.add_argument("--launcher", choices=("auto", "none", "local", "slurm"), default=None,
                   help="auto (default, or $%s): local with one worker per CPU core (one thread each) on a machine "
                        "without a GPU, else none; none: this process runs the sweep; local: --workers processes "
                        "on this machine, then the report; slurm: one job array of --jobs workers, submitted "
                        "through submitit" % LAUNCHER_ENV)
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="local: worker processes (default: one per visible GPU, each with its own "
                        "CUDA_VISIBLE_DEVICES; without a GPU one per CPU core, the cores split between workers); "
                        "--workers alone means --launcher local")
    g.add_argument("--jobs", type=int, default=None, metavar="N", help="slurm: workers, i.e. array size (default 1)")
    g.add_argument("--wait", action="store_true",
                   help="slurm: wait for the array to finish, then write the report (default: print the job id "
                        "and return)")
    g.add_argument("--slurm-partition", default=None, metavar="NAME",
                   help="slurm: the partition to submit to (default: the cluster's default)")
    g.add_argument("--slurm-time", default=None, metavar="TIME",
                   help="time limit per array element, in sbatch's format (e.g. 12:00:00, 2-00:00:00; default: "
                        "the partition's)")
    g.add_argument("--slurm-gpus-per-job", type=int, default=None, metavar="N",
                   help="GPUs per array element (0: CPU-only jobs; default 1, or 0 where sinfo shows no GPU in the "
                        "partition)")
    g.add_argument("--slurm-array-parallelism", type=int, default=None, metavar="N",
                   help="at most N elements run at once (default: all --jobs)")
    g.add_argument("--slurm-account", default=None, metavar="NAME", help="slurm: the account to charge")
    g.add_argument("--slurm-qos", default=None, metavar="NAME", help="slurm: the quality of service")
    g.add_argument("--slurm-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. --slurm-arg cpus-per-task=8 --slurm-arg mem=32G; repeatable")


def worker_argv(argv: list[str], reports: bool) -> list[str]:
    """The command line a worker runs: ``argv`` minus the launcher options (and the report, which the
    launcher writes once after all workers; ``reports`` says whether the command has ``--no-report``).

    ``argv`` must already have parsed with the full parser, so every abbreviation in it is unambiguous
    there and therefore means the same option to the launcher-only parser."""
    only = argparse.ArgumentParser(add_help=False)
    add_launcher_args(only)
    _, rest = only.parse_known_args(argv)
    if reports and "--no-report" not in rest:
        rest.append("--no-report")
    return [*rest, "--launcher", "none"]  # a worker runs its share itself, whatever the default launcher


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes of memory available to new processes (Linux's MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def resolve_launcher(args: argparse.Namespace) -> str | None:
    """Turn ``--launcher auto`` (the default) into ``local`` or ``none``; returns a line saying what auto chose.

    auto is local, one worker per usable CPU core (at most one per 2 GiB of available memory), when
    there is no GPU, no --device other than cpu, no --threads and no --worker-id (a worker is itself
    one process), and more than one worker would start: each worker runs one thread, as a single
    process does by default, so the records are the same and the sweep ends sooner."""
    if args.launcher is None:
        args.launcher = os.environ.get(LAUNCHER_ENV) or "auto"
        if args.launcher not in ("auto", "none", "local", "slurm"):
            raise UsageError(f"${LAUNCHER_ENV}={args.launcher}: expected auto, none, local or slurm")
    if args.launcher != "auto":
        return None
    if args.workers is not None:
        args.launcher = "local"
        return None
    args.launcher = "none"
    if args.worker_id is not None or args.threads is not None or getattr(args, "device", "auto") not in ("auto",
                                                                                                           "cpu"):
        return None
    workers = usable_cores()
    memory = available_memory()
    if memory is not None:
        workers = min(workers, max(1, memory // WORKER_MEMORY))
    if workers < 2 or visible_gpus():
        return None
    args.launcher, args.workers = "local", workers
    return (f"{workers} local worker processes, one per CPU core, one thread each "
            "(--launcher none: one process; --workers N: N workers)")


def check_launcher_args(args: argparse.Namespace) -> None:
    """One clear error per misuse, before anything is started."""
    launcher = args.launcher
    for flag, value, needs in (("--workers", args.workers, "local"), ("--jobs", args.jobs, "slurm"),
                               ("--wait", args.wait or None, "slurm")):
        if value is not None and launcher != needs:
            raise UsageError(f"{flag} needs --launcher {needs}")
    for flag in ("workers", "jobs", "slurm_array_parallelism"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} {value}: must be at least 1")
    device = getattr(args, "device", "auto")
    if launcher == "local" and device not in ("auto", "cuda", "cuda:0", "cpu"):
        raise UsageError(f"--device {device} with --launcher local: each worker sees only its own GPU (as cuda:0); "
                         "leave --device auto, or set CUDA_VISIBLE_DEVICES to the GPUs the workers may use")
    if (args.slurm_gpus_per_job or 0) < 0:
        raise UsageError(f"--slurm-gpus-per-job {args.slurm_gpus_per_job}: must be 0 or more")
    slurm_flags = [a for a in ("slurm_partition", "slurm_time", "slurm_gpus_per_job", "slurm_array_parallelism",
                               "slurm_account", "slurm_qos") if getattr(args, a) is not None]
    slurm_flags += ["slurm_arg"] if args.slurm_arg else []
    if slurm_flags and launcher != "slurm":
        raise UsageError(f"--{slurm_flags[0].replace('_', '-')} needs --launcher slurm")
    slurm_args(args.slurm_arg)


def slurm_args(items: list[str]) -> dict[str, str]:
    """``--slurm-arg KEY=VALUE`` → sbatch's ``--KEY=VALUE`` (a leading ``--`` on KEY is accepted)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise UsageError(f"--slurm-arg {item!r}: expected KEY=VALUE, e.g. --slurm-arg mem=32G")
        out[key] = value
    return out


def launch(args: argparse.Namespace, argv: list[str], out: Path, note: Callable[[str], None]) -> int | None:
    """Start the workers. Returns their combined exit code once they have finished, or None when the
    workers were submitted and left running (Slurm without ``--wait``)."""
    check_launcher_args(args)
    wargv = worker_argv(argv, reports=hasattr(args, "no_report"))
    if args.launcher == "local":
        return launch_local(wargv, out, args.workers, note)
    return launch_slurm(args, wargv, out, note)


# --- one machine ----------------------------------------------------------------------------------------------

def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries ([] without CUDA)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def local_worker_envs(workers: int | None) -> list[dict[str, str]]:
    """Per-worker environment additions: a GPU each (round robin when there are more workers than
    GPUs); without a GPU, the CPU cores split evenly so that workers do not oversubscribe them."""
    gpus = visible_gpus()
    n = workers or max(1, len(gpus))
    if gpus:
        return [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} for i in range(n)]
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // n))
    return [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads} for _ in range(n)]


def launch_local(wargv: list[str], out: Path, workers: int | None, note: Callable[[str], None]) -> int:
    """N worker processes on this machine; returns once all have ended (Ctrl-C stops them all cleanly)."""
    envs = local_worker_envs(workers)
    codes = _run_local_workers(wargv, out, envs, note)
    if any(codes) and _lost_runs(out):
        # a worker died and left runs that no one took over (the others had passed them while its claim was
        # live): one more worker, once, takes the stale claims over
        note("a worker died and left runs unfinished: one more local worker takes them over")
        codes[len(codes):] = _run_local_workers(wargv, out, envs[:1], note, first=len(codes))
    if any(codes) and every_run_complete(out):
        note("every planned run of the sweep is complete (the lost runs were taken over)")
        return 0
    return max((abs(c) for c in codes), default=0)


def _lost_runs(out: Path) -> bool:
    """Runs of the sweep held by a dead worker (stale claims) or never started."""
    from ..status import sweep_status

    counts = sweep_status(out)["counts"]
    return bool(counts.get("stale") or counts.get("not_started"))


def _run_local_workers(wargv: list[str], out: Path, envs: list[dict[str, str]], note: Callable[[str], None],
                       first: int = 0) -> list[int]:
    """Start one worker per environment (numbered from ``first``), wait for all; their exit codes."""
    logs = RunsFolder(out).local_logs
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for i, extra in enumerate(envs, start=first):
        with open(logs / f"worker{i}.log", "a") as log:  # appended: a rerun keeps the earlier attempt's log
            log.write(f"=== worker {i} started {time.strftime('%Y-%m-%d %H:%M:%S')}: peftbench {' '.join(wargv)}\n")
            log.flush()  # the child keeps its own descriptor
            procs.append(subprocess.Popen(worker_command(wargv), stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **extra}))
        where = f"GPU {extra['CUDA_VISIBLE_DEVICES']}" if extra["CUDA_VISIBLE_DEVICES"] else \
            f"CPU, {extra['OMP_NUM_THREADS']} thread(s)"
        note(f"local worker {i}: pid {procs[-1].pid}, {where}, log {logs / f'worker{i}.log'}")
    try:
        codes = _wait_reporting(procs, out, note)
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # a worker stops like Ctrl-C: its run in progress writes nothing
        for p in procs:
            p.wait()
        raise
    for i, code in enumerate(codes, start=first):
        if code != 0:
            note(f"local worker {i} exited with code {code}; see {logs / f'worker{i}.log'}")
    return codes


def every_run_complete(out: Path) -> bool:
    """Whether the sweep's manifests list runs and every one has a complete record (no claim, failure or gap)."""
    from ..status import sweep_status

    counts = sweep_status(out)["counts"]
    return bool(counts.get("complete")) and counts.get("not_started") == 0 and not any(
        n for state, n in counts.items() if state != "complete")


def _wait_reporting(procs: list[subprocess.Popen], out: Path, note: Callable[[str], None],
                    every: float = 5.0) -> list[int]:
    """Wait for every worker; meanwhile, every few seconds, one line of counts if the sweep's state changed."""
    from ..status import sweep_status

    last, checked = None, 0.0
    # poll every worker each time (a list, not any()'s short cut): a dead worker is reaped at once, else it stays a
    # zombie whose pid looks alive, and the other workers leave its claimed run to it instead of taking it over
    while any([p.poll() is None for p in procs]):
        if time.monotonic() - checked >= every:
            checked = time.monotonic()
            counts = sweep_status(out)["counts"]
            line = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items() if v)
            if line and line != last:
                note(f"status: {line}")
                last = line
        time.sleep(0.2)
    return [p.returncode for p in procs]


# --- Slurm --------------------------------------------------------------------------------------------------------

def run_worker(argv: list[str], cwd: str) -> int:
    """One array element (runs on the cluster, pickled by reference): the worker as a child process, so
    its command line and exit code are its own. A worker killed by a signal fails the element."""
    env = os.environ
    task = (f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID')}" if "SLURM_ARRAY_JOB_ID" in env
            else env.get("SLURM_JOB_ID", "?"))  # submitit submits an "array" of one as a plain job
    if "--worker-id" not in argv:
        argv = [*argv, "--worker-id", f"slurm-{task}@{socket.gethostname()}"]
    sys.stdout.flush()
    code = subprocess.run(worker_command(argv), cwd=cwd, stdin=subprocess.DEVNULL).returncode
    if code < 0:
        raise RuntimeError(f"worker of array element {task} was killed by signal {-code}")
    return code


def launch_slurm(args: argparse.Namespace, wargv: list[str], out: Path, note: Callable[[str], None]) -> int | None:
    """Submit one job array; with ``--wait``, wait for it. Logs go to ``--out/_slurm/``."""
    if shutil.which("sbatch") is None:
        raise UsageError("--launcher slurm: sbatch is not on PATH (run this on a Slurm login node)")
    import submitit

    jobs = args.jobs or 1
    folder = RunsFolder(Path(out).resolve()).slurm_logs
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=0)
    extra = slurm_args(args.slurm_arg)
    if args.slurm_time is not None:
        extra.setdefault("time", args.slurm_time)  # sbatch parses its own formats
    gpus = args.slurm_gpus_per_job
    if gpus is None:
        gpus = default_gpus_per_job(_sinfo_gres(), args.slurm_partition)
        if gpus == 0:
            note(f"Slurm partition {args.slurm_partition or '(the default)'} has no GPUs: CPU-only jobs "
                 "(--slurm-gpus-per-job N asks for N GPUs per job)")
    executor.update_parameters(
        job_name="peftbench", time=None, partition=args.slurm_partition, account=args.slurm_account,
        qos=args.slurm_qos, gpus_per_node=gpus or None, array_parallelism=args.slurm_array_parallelism or jobs,
        additional_parameters=extra)
    try:
        array = executor.map_array(run_worker, [wargv] * jobs, [os.getcwd()] * jobs)
    except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError, OSError) as exc:
        detail = getattr(exc, "output", None) or getattr(exc, "stderr", None) or exc
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        raise UsageError(sbatch_refusal(str(detail), gpus)) from exc
    array_id = array[0].job_id.split("_")[0]
    note(f"submitted Slurm job array {array_id} ({jobs} worker(s)); logs in {folder}")
    print(f"job id: {array_id}", flush=True)
    if not args.wait:
        note(f"follow it with: peftbench status {out}   (squeue -j {array_id}); the report: peftbench report {out}")
        return None
    code = 0
    for job in array:
        try:
            code = max(code, int(job.result() or 0))
        except KeyboardInterrupt:
            note(f"stopped waiting; job array {array_id} keeps running (scancel {array_id} stops it)")
            raise
        except Exception as exc:  # a failed, killed or cancelled element; its runs were left to the others
            first = (str(exc).strip().splitlines() or ["failed"])[-1]
            note(f"array element {job.job_id}: {first}; log {job.paths.stdout}")
            code = max(code, 1)
    return code


def _sinfo_gres() -> str | None:
    """``sinfo``'s partitions and their generic resources, one ``PARTITION|GRES`` per line; None if it fails."""
    try:
        done = subprocess.run(["sinfo", "-h", "-o", "%P|%G"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def default_gpus_per_job(sinfo_gres: str | None, partition: str | None) -> int:
    """GPUs per array element when --slurm-gpus-per-job is not given: 0 where the partition (the default
    one, marked ``*`` by sinfo, when none is named) has no node with a ``gpu`` resource, else 1; 1 when
    sinfo could not tell."""
    if sinfo_gres is None:
        return 1
    rows = [line.split("|", 1) for line in sinfo_gres.splitlines() if "|" in line]
    if partition is not None:
        mine = [gres for part, gres in rows if part.rstrip("*") == partition]
    else:
        mine = [gres for part, gres in rows if part.endswith("*")] or [gres for _, gres in rows]
    if not mine:
        return 1  # an unknown partition: sbatch says so itself
    return 1 if any("gpu" in gres.lower() for gres in mine) else 0


def sbatch_refusal(detail: str, gpus: int) -> str:
    """sbatch's last line, and what to do when it is the bare complaint about GPUs asked for on a CPU cluster."""
    last = (detail.strip().splitlines() or ["(no message)"])[-1]
    text = f"--launcher slurm: sbatch refused the job array: {last}"
    if gpus and "gres" in last.lower():
        text += (f" (each job asked for {gpus} GPU(s); on a partition without GPUs, --slurm-gpus-per-job 0 runs "
                 "CPU-only jobs)")
    return text

