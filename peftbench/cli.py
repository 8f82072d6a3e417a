"""`peftbench` command line: thin argparse + rich over the Python API. ``main(argv)`` runs in-process."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .data.limits import DEFAULT_MAX_IMAGE_PIXELS
from .data.tasks import DEFAULT_SUITE
from .errors import PeftbenchError, UsageError
from .layout import RunsFolder
from .progress import RichReporter
from .registry import load_plugin
from .sweep.launch import add_launcher_args, check_launcher_args, resolve_launcher


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def check_values(args: argparse.Namespace) -> None:
    """Values argparse accepts but no command can use: one UsageError naming the option, before any work."""
    if getattr(args, "methods", None) == []:
        raise UsageError("--methods '': no method given (a comma list of methods or families, or 'all')")
    seeds = getattr(args, "seeds", None)
    if seeds == []:
        raise UsageError("--seeds '': no seed given (a comma list of integers, e.g. 0,1,2)")
    repeated = sorted({s for s in seeds or [] if seeds.count(s) > 1})
    if repeated:
        raise UsageError(f"--seeds {','.join(map(str, seeds))}: seed {', '.join(map(str, repeated))} given more "
                         "than once (each seed is one run)")
    if getattr(args, "img_size", None) is not None and args.img_size < 1:
        raise UsageError(f"--img-size {args.img_size}: must be a positive number of pixels")
    if getattr(args, "num_classes", None) is not None and args.num_classes < 1:
        raise UsageError(f"--num-classes {args.num_classes}: must be at least 1")


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="peftbench", description="Fair, fast PEFT benchmarks for vision transformers.")
    _plugin_arg(p, "plugin")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run a sweep: methods x tasks x seeds, one record per run")
    _sweep_args(r)
    r.add_argument("--seeds", type=_seeds, default=[0], help="comma list of seeds (default 0)")
    r.add_argument("--recipe", default="shared",
                   help="shared (default: one recipe for every method and task) or a named recipe of the suite, "
                        "e.g. official (the authors' published per-task settings, a labelled reproduction)")

    tu = sub.add_parser("tune", help="tune every method with the same budget on train800 -> val200, then final "
                                     "runs of the chosen settings on train800val200 -> test")
    _sweep_args(tu)
    tu.add_argument("--budget", type=int, default=None, metavar="N",
                    help="trials per method and task (default: the suite's tune.budget; vtab1k 8, mini 4)")
    tu.add_argument("--final-seeds", type=int, default=3, metavar="S", help="seeds of the final runs (default 3)")

    st = sub.add_parser("status", help="where a sweep stands: complete / running / stale claims / failed / "
                                       "diverged / oom / not started, with failure reasons")
    st.add_argument("runs_dir", type=Path, help="folder of a sweep (`peftbench run/tune --out`)")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.add_argument("--claim-timeout", type=float, default=None, metavar="SECONDS",
                    help="judge claims stale after this long without heartbeat (default: the sweep's own)")

    m = sub.add_parser("methods", help="list registered methods, their knobs and the training keys")
    _suite_arg(m, "whose recipe gives the defaults shown")
    t = sub.add_parser("tasks", help="list the tasks of a suite")
    _suite_arg(t, "whose tasks to list")
    b = sub.add_parser("backbones", help="backbone presets the PEFT literature uses (timm name, input size, "
                                         "normalisation, prefix tokens, pre-norm)")
    b.add_argument("--json", action="store_true", help="print JSON")

    i = sub.add_parser("inspect", help="parameters and inference GFLOPs of a method, without data")
    i.add_argument("--method", required=True, help="a registered method (see `peftbench methods`)")
    i.add_argument("--suite", default=None, help="the suite whose backbone and recipe are the defaults (default: "
                                                 f"the suite of --task, else {DEFAULT_SUITE})")
    i.add_argument("--task", default=None, metavar="NAME",
                   help="inspect with this task's classes and recipe (SHIP: its published prompt layers)")
    i.add_argument("--recipe", default="shared",
                   help="shared (default) or a named recipe of the suite, e.g. official (SHIP's per-task thresholds)")
    _backbone_args(i, weights_default="none")
    i.add_argument("--num-classes", type=int, default=None, help="classifier size (default: the task's, else 100)")
    i.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training key or a method knob (METHOD.KNOB=VALUE); repeatable")
    i.add_argument("--json", action="store_true", help="print JSON")

    syn = sub.add_parser("make-synthetic", help="a full-size stand-in for a suite: real split sizes and "
                                                "native resolutions, random JPEG content (for timing)")
    syn.add_argument("--like", default="vtab1k", help="the suite to imitate (default vtab1k)")
    syn.add_argument("--out", type=Path, required=True, help="data root to create (VTAB-1k layout)")
    syn.add_argument("--tasks", default="all", help="'all' or a comma list of task names (default all)")
    syn.add_argument("--scale", type=float, default=1.0, help="fraction of each split's size (default 1.0)")
    syn.add_argument("--seed", type=int, default=0, help="seed of the random content (default 0)")

    prep = sub.add_parser("prepare", help="unpack and verify a data folder, write its MANIFEST.json (the data "
                                          "source every run records)")
    prep.add_argument("suite", nargs="?", default=None, help="vtab1k or fgvc")
    prep.add_argument("--from", dest="source", default=None, metavar="PATH",
                      help="vtab1k: the NOAH folder or its zip, or 'tfds' (build it from TensorFlow Datasets with "
                           "the VTAB slices, PNG); fgvc: the folder of the five data sets with the VPT split files")
    prep.add_argument("--out", type=Path, default=None,
                      help="where a zip is unpacked (default: beside it, without .zip); with --from tfds: the folder "
                           "to build the tasks in (required)")
    prep.add_argument("--tfds-dir", type=Path, default=None, metavar="DIR",
                      help="--from tfds: TFDS's data folder (default: TFDS's own, ~/tensorflow_datasets)")
    prep.add_argument("--manual-dir", type=Path, default=None, metavar="DIR",
                      help="--from tfds: where the manual downloads (resisc45, diabetic_retinopathy) lie "
                           "(default: TFDS_DIR/downloads/manual)")
    prep.add_argument("--tasks", default="all", help="'all' or a comma list of task names / aliases")
    prep.add_argument("--verify", type=Path, default=None, metavar="ROOT",
                      help="re-hash a prepared folder and compare it with its MANIFEST.json")
    prep.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                      help="decoding threads (default: twice the CPU cores, at most 16)")
    prep.add_argument("--max-image-pixels", type=_positive_int, default=DEFAULT_MAX_IMAGE_PIXELS, metavar="N",
                      help=f"refuse images with more pixels (default {DEFAULT_MAX_IMAGE_PIXELS:,})")

    rep = sub.add_parser("report", help="tables and plots from the records of a runs folder")
    rep.add_argument("runs_dir", type=Path, help="folder of records written by `peftbench run --out`")
    rep.add_argument("--out", type=Path, default=None, help="output folder (default RUNS_DIR/report)")
    rep.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                     help="show published VTAB-1k accuracies as labelled reference rows")
    rep.add_argument("--latex", action="store_true",
                     help="also write summary.tex: the tables in the VTAB-1k papers' layout (booktabs)")
    cmp = sub.add_parser("compare", help="two methods side by side: per-task differences with intervals, "
                         "P(A > B), a Wilcoxon test and a verdict")
    cmp.add_argument("method_a", help="first method")
    cmp.add_argument("method_b", help="second method")
    cmp.add_argument("--runs", type=Path, default=Path("runs"), help="runs folder (default ./runs)")
    for command in sub.choices.values():
        _plugin_arg(command, "plugin_after")
    return p


def _sweep_args(r: argparse.ArgumentParser) -> None:
    """The options `run` and `tune` share."""
    r.add_argument("--methods", type=_csv, default=None,
                   help="comma list of methods or families, e.g. vpt,ship, or 'all' (every registered method); "
                        "default: the suite's default_methods (mini: 7 methods, see `peftbench methods`), else all")
    r.add_argument("--tasks", default="all", help="'all' or a comma list of task names / aliases (without --suite: "
                                                  "their suite)")
    r.add_argument("--suite", default=None,
                   help="task suite: mini (built in, generated on first use; the default without --data-root) or "
                        "vtab1k (the default with --data-root)")
    r.add_argument("--suite-file", type=Path, default=None,
                   help="YAML with recipe overrides (default: the suite's own, peftbench/suites/SUITE.yaml)")
    r.add_argument("--data-root", type=Path, default=None, help="folder with one sub-folder per task (VTAB-1k layout)")
    r.add_argument("--out", type=Path, default=Path("runs"), help="where records go (default runs/)")
    _backbone_args(r, weights_default=None)
    r.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training key (lr=0.01) or a method knob (vpt_deep.prompt_length=50); repeatable")
    r.add_argument("--cache-dir", type=Path, default=None,
                   help="decoded-image and method cache (default ~/.cache/peftbench)")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    r.add_argument("--no-report", action="store_true", help="do not write the report after the sweep")
    r.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                   help="save a training checkpoint every N epochs, so an interrupted run resumes (default 0: off)")
    r.add_argument("--claim-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="workers sharing --out: a claimed run with no heartbeat for this long is taken over "
                        "(default 600)")
    r.add_argument("--worker-id", default=None, help="this worker's name in claims and records (default host:pid)")
    r.add_argument("--max-image-pixels", type=_positive_int, default=DEFAULT_MAX_IMAGE_PIXELS, metavar="N",
                   help="refuse images with more pixels (decompression bombs); default "
                        f"{DEFAULT_MAX_IMAGE_PIXELS:,} (12000×12000 passes)")
    r.add_argument("--threads", type=int, default=None, metavar="N",
                   help="intra-op CPU threads, recorded in each record (default on a CPU: 1, so that the same run "
                        "gives the same numbers on any machine; on CUDA: torch's default)")

    add_launcher_args(r)  # run and tune alike: workers re-run the same command line


def _suite_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--suite", default=DEFAULT_SUITE, help=f"the suite {what} (default {DEFAULT_SUITE}, as for `run`)")


def _plugin_arg(p: argparse.ArgumentParser, dest: str) -> None:
    p.add_argument("--plugin", dest=dest, action="append", default=[], metavar="FILE.py",
                   help="import a Python file that registers methods (runs its code: only files you trust); "
                        "repeatable, before or after the command")


def _backbone_args(p: argparse.ArgumentParser, weights_default: str | None = "pretrained") -> None:
    from .backbones_meta import DEFAULT_BACKBONE

    p.add_argument("--backbone", default=None,
                   help=f"timm ViT name (default: the suite's; vtab1k: {DEFAULT_BACKBONE})")
    p.add_argument("--weights", default=weights_default,
                   help="'pretrained' (timm / Hugging Face cache), 'none' (random init) or a checkpoint file "
                        "(.npz such as ViT-B_16.npz, .safetensors, .pth, .bin)"
                        + (" (default: the suite's; vtab1k: pretrained)" if weights_default is None else ""))
    p.add_argument("--img-size", type=int, default=None, help="input size (default: the model's)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow a checkpoint that needs pickled code to load (only for files you trust)")


def _sweep_request(args: argparse.Namespace):
    from .sweep.request import SweepRequest

    return SweepRequest(methods=args.methods, tasks=args.tasks,
                        seeds=getattr(args, "seeds", [0]), suite=args.suite, recipe=getattr(args, "recipe", "shared"),
                        suite_file=args.suite_file, data_root=args.data_root, out=args.out,
                        backbone=args.backbone, weights=args.weights, img_size=args.img_size, sets=args.sets,
                        cache_dir=args.cache_dir, device=args.device, trust_checkpoint=args.trust_checkpoint,
                        checkpoint_every=args.checkpoint_every, claim_timeout=args.claim_timeout,
                        worker_id=args.worker_id, max_image_pixels=args.max_image_pixels,
                        threads=args.threads)


def _interrupted(args: argparse.Namespace, console: Console) -> int:
    from .records import iter_record_files

    kept = len(list(iter_record_files(args.out))) if args.out.is_dir() else 0
    ckpts = len(list(RunsFolder(args.out).checkpoints.glob("*.pt")))
    console.print(f"interrupted: the run in progress was discarded; {kept} record(s) kept in {args.out}"
                  + (f", {ckpts} training checkpoint(s) kept" if ckpts else "")
                  + "; run the same command again to resume", markup=False)
    return 130


def _cmd_tune(args: argparse.Namespace, console: Console) -> int:
    from .tune import TuneRequest, run_tune

    req = TuneRequest(_sweep_request(args), budget=args.budget, final_seeds=args.final_seeds)
    try:
        with RichReporter(console) as reporter:
            result = run_tune(req, reporter)
    except KeyboardInterrupt:
        return _interrupted(args, console)
    for name, res in (("trials", result.trials), ("finals", result.finals)):
        counts = ", ".join(f"{n} {s}" for s, n in sorted(res.statuses.items())) or "nothing new"
        console.print(f"{name}: {counts}; {len(res.skipped)} skipped (already done)", markup=False)
    console.print(f"done: budget {result.budget} trial(s) per method and task; records in {args.out}", markup=False)
    if not args.no_report:
        _write_report(args.out, RunsFolder(args.out).report, True, console)
    orphaned = result.trials.orphaned + result.finals.orphaned
    if orphaned:
        console.print(f"warning: {len(orphaned)} run(s) not done: claimed by workers that are no longer alive; "
                      "run the same command again", markup=False)
    statuses = set(result.trials.statuses) | set(result.finals.statuses)
    return 0 if statuses <= {"complete"} and all(result.chosen.values()) and not orphaned else 1


def _cmd_run(args: argparse.Namespace, console: Console) -> int:
    from .sweep.run import run_sweep

    req = _sweep_request(args)
    try:
        with RichReporter(console) as reporter:
            result = run_sweep(req, reporter)
    except KeyboardInterrupt:
        return _interrupted(args, console)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(result.statuses.items())) or "nothing new"
    others = (f"; {len(result.left_to_others)} run(s) left to other live workers, still running"
              if result.left_to_others else "")
    console.print(f"done: {counts}; {len(result.skipped)} skipped (already done){others}; records in {args.out}",
                  markup=False)
    if not args.no_report:
        report_dir = RunsFolder(args.out).report
        _write_report(args.out, report_dir, True, console)
    if result.orphaned:
        console.print(f"warning: {len(result.orphaned)} run(s) not done: claimed by workers that are no longer "
                      "alive (no heartbeat or a dead process); run the same command again", markup=False)
    return 0 if set(result.statuses) <= {"complete"} and not result.orphaned else 1


def _cmd_launch(args: argparse.Namespace, argv: list[str], console: Console) -> int:
    """Hand the command to its workers (sweep/launch.py); once they have all ended, the status and the report."""
    from .sweep.launch import launch

    code = launch(args, argv, args.out, note=lambda text: console.print(text, markup=False))
    if code is None:  # submitted, not waited for
        return 0
    _print_status(args.out, console)
    if not getattr(args, "no_report", True):
        _write_report(args.out, RunsFolder(args.out).report, True, console)
    return code


def _print_status(runs_dir: Path, console: Console, as_json: bool = False, claim_timeout: float | None = None
                  ) -> None:
    from .status import format_status, sweep_status

    if not runs_dir.is_dir():
        raise UsageError(f"{runs_dir}: no such folder")
    st = sweep_status(runs_dir, claim_timeout)
    if as_json:
        print(json.dumps(st, indent=2))
        return
    for line in format_status(st):
        console.print(line, markup=False)


def _write_report(runs_dir: Path, out: Path, reference: bool, console: Console, latex: bool = False) -> None:
    from .report import write_report

    written = write_report(runs_dir, out, reference=reference,
                           on_problem=lambda msg: console.print(f"warning: skipped {msg}", markup=False),
                           latex=latex, on_notice=lambda msg: console.print(msg, markup=False))
    summary = next((p for p in written if p.name == "summary.md"), None)
    console.print(f"report: {len(written)} file(s) in {out}" + (f"; start with {summary}" if summary else ""),
                  markup=False)


def _cmd_compare(args: argparse.Namespace, console: Console) -> int:
    from .report import read_tables
    from .report.compare import compare_lines, of_tuned
    from .report.tuned import tuned_tables

    tables, records, _ = read_tables(args.runs, reference=False,
                                     on_problem=lambda msg: console.print(f"warning: skipped {msg}", markup=False))
    views = [*tables, *(of_tuned(t, n) for n, t in enumerate(tuned_tables(records), start=1))]
    for line in compare_lines(views, args.method_a, args.method_b):
        console.print(line, markup=False, highlight=False)
    return 0


def _cmd_make_synthetic(args: argparse.Namespace, console: Console) -> int:
    from .data.synthetic import make_synthetic
    from .data.tasks import resolve_tasks

    if not 0 < args.scale <= 1:
        raise UsageError(f"--scale {args.scale}: must be in (0, 1]")
    tasks = resolve_tasks(args.tasks, args.like)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        bar = progress.add_task(f"make-synthetic --like {args.like}", total=len(tasks))
        make_synthetic(args.out, tasks, scale=args.scale, seed=args.seed,
                       on_task=lambda name: progress.update(bar, advance=1, description=f"wrote {name}"))
    console.print(f"{len(tasks)} synthetic task(s) in {args.out} (random content: timing only, not accuracy)",
                  markup=False)
    return 0


def _cmd_prepare(args: argparse.Namespace, console: Console, err: Console) -> int:
    from .data.manifest import SHOWN, reverify
    from .data.prepare import SOURCE_TAGS, prepare_folder

    tasks = None if args.tasks.strip() in ("", "all") else _csv(args.tasks)
    if args.verify is not None and (args.source is not None or args.suite is not None):
        raise UsageError("--verify ROOT re-checks a prepared folder on its own (no SUITE, no --from)")
    if args.verify is None:
        if args.suite is None or args.source is None:
            raise UsageError("usage: peftbench prepare SUITE --from PATH (SUITE: " + ", ".join(SOURCE_TAGS)
                             + "), or peftbench prepare --verify ROOT")
        if args.suite not in SOURCE_TAGS:
            from .util import did_you_mean

            raise UsageError(f"prepare: unknown suite '{args.suite}'" + did_you_mean(args.suite, list(SOURCE_TAGS))
                             + f" (suites: {', '.join(SOURCE_TAGS)})")
    refused: list[str] = []
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        def bar(label: str, total: int):
            handle = progress.add_task(label, total=total)
            return lambda n: progress.update(handle, advance=n)

        if args.verify is not None:
            result = reverify(args.verify, tasks, bar, args.threads, args.max_image_pixels)
        else:
            if args.source == "tfds":
                result, refused = _prepare_tfds(args, tasks, bar, console), []
            else:
                prepared = prepare_folder(args.suite, Path(args.source), args.out, tasks, bar, args.threads,
                                          args.max_image_pixels)
                result, refused = prepared.verify, prepared.refused
    for name, images in result.verified.items():
        console.print(f"verified {name}: {images:,} images", markup=False)
    for line in refused[:SHOWN]:
        err.print(f"error: {line}", markup=False)
    if len(refused) > SHOWN:
        err.print(f"error: ... and {len(refused) - SHOWN} more zip entries refused", markup=False)
    for name, problems in result.failed.items():
        more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        err.print(f"error: task '{name}' failed ({len(problems)} problem(s)); not in the manifest:\n  "
                  + "\n  ".join(problems[:SHOWN]) + more, markup=False)
    written = f"{result.manifest}" if result.manifest else "no manifest written"
    console.print(f"{written}: {len(result.verified)} task(s) verified"
                  + (f" (data source {result.source})" if result.source else "")
                  + (f", {len(result.failed)} failed: {', '.join(result.failed)}" if result.failed else "")
                  + (f", {len(refused)} zip entr{'y' if len(refused) == 1 else 'ies'} refused" if refused else ""),
                  markup=False)
    return 0 if result.ok and not refused else 1


def _prepare_tfds(args: argparse.Namespace, tasks: list[str] | None, bar, console: Console):
    """--from tfds: build the tasks from TensorFlow Datasets (data/vtab_tfds.py), then the common manifest."""
    from .data.manifest import VerifyReport
    from .data.vtab_tfds import SOURCE_TAG, prepare_vtab1k_from_tfds

    if args.suite != "vtab1k":
        raise UsageError(f"prepare {args.suite} --from tfds: the TFDS route builds vtab1k only")
    if args.out is None:
        raise UsageError("prepare vtab1k --from tfds needs --out ROOT (the folder to build the tasks in)")
    build, result = prepare_vtab1k_from_tfds(
        args.out, args.tfds_dir, args.manual_dir, tasks, progress=bar, threads=args.threads,
        on_task=lambda task, state: console.print(f"{state} {task}", markup=False) if state != "failed" else None)
    result = result or VerifyReport(root=args.out, source=SOURCE_TAG, manifest=None)
    result.failed = {**{name: [line] for name, line in build.failed.items()}, **result.failed}  # printed as one
    return result


def _suite_line(suite: str, source: str) -> str:
    return f"defaults from suite {suite} ({source}); --suite NAME for another"


def _cmd_methods(args: argparse.Namespace, console: Console) -> int:
    from .catalog import method_table, train_keys
    from .data.tasks import check_suite
    from .registry import families
    from .sweep.resolve import load_suite, suite_source

    suite = load_suite(check_suite(args.suite), None)
    console.print(_suite_line(suite.name, suite_source(suite)), markup=False)
    for family, members in sorted(families().items()):
        console.print(f"[bold]family {family}[/bold] = {', '.join(members)}  (--methods {family} runs them all)")
    for m in method_table(suite):
        fam = f"  (family {m['family']})" if m["family"] != m["name"] else ""
        console.print(f"[bold]{m['name']}[/bold] v{m['version']}{fam}  {m['description']}")
        for k in m["knobs"]:
            searched = f"  (tune searches {k['search']})" if k.get("search") else ""
            console.print(f"    {m['name']}.{k['name']} = {k['default']!r}  {k['help']}{searched}", markup=False)
    console.print("\n[bold]training keys[/bold] (--set KEY=VALUE, or METHOD.KEY=VALUE for one method)")
    for k in train_keys(suite):
        console.print(f"    {k['name']} = {k['default']!r}  {k['help']}", markup=False)
    return 0


def _cmd_tasks(args: argparse.Namespace, console: Console) -> int:
    from .data.tasks import suite_tasks

    table = Table(title=f"suite {args.suite}" + (" (the default; --suite NAME for another)"
                                                 if args.suite == DEFAULT_SUITE else ""))
    for col in ("task", "group", "classes", "test images", "native", "aliases"):
        table.add_column(col)
    for t in suite_tasks(args.suite):
        table.add_row(t.name, t.group, str(t.num_classes), f"{t.test_size:,}", t.native_resolution,
                      ", ".join(t.aliases))
    console.print(table)
    return 0


def _cmd_backbones(args: argparse.Namespace, console: Console) -> int:
    from .presets import backbone_table

    rows = backbone_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(box=None, pad_edge=False)
    for col in ("backbone (timm name.tag)", "input", "mean / std", "prefix", "pre-norm", "act", "weights"):
        table.add_column(col)
    for r in rows:
        size, native = ("x".join(map(str, r[k])) for k in ("img_size", "pretrained_img_size"))
        size += f" (pretrained {native})" if r["img_size"] != r["pretrained_img_size"] else ""
        prefix = "cls" + (f" + {r['register_tokens']} reg" if r["register_tokens"] else "")
        norm = "/".join(f"{v:.3g}" for v in r["mean"]) + " / " + "/".join(f"{v:.3g}" for v in r["std"])
        table.add_row(r["name"], size, norm, prefix if r["class_token"] else str(r["prefix_tokens"]),
                      "yes" if r["pre_norm"] else "no", r["act"], r["weights"])
    console.print(table)
    for r in rows:
        console.print(f"  {r['name']}: {r['label']}", markup=False)
    return 0


def _cmd_inspect(args: argparse.Namespace, console: Console) -> int:
    from .catalog import InspectRequest, inspect_method

    info = inspect_method(InspectRequest(args.method, args.backbone, args.weights, args.num_classes, args.img_size,
                                         args.sets, suite=args.suite, task=args.task, recipe=args.recipe,
                                         trust_checkpoint=args.trust_checkpoint))
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    console.print(_suite_line(info["suite"], info["suite_source"]), markup=False)
    console.print(f"{info['method']} on {info['backbone']} (weights: {info['weights']}), "
                  + (f"task {info['task']}, " if info["task"] else "")
                  + f"{info['num_classes']} classes, {info['img_size'][0]}x{info['img_size'][1]} px", markup=False)
    console.print(f"  trainable parameters: {info['trainable_params']:,} (classifier {info['head_params']:,})")
    console.print(f"  stored per task:      {info['stored_per_task_params']:,} (trainable + per-task buffers)")
    console.print(f"  total parameters:     {info['total_params']:,}")
    merged = f" (merged; {info['gflops_unmerged']:.2f} unmerged)" if info.get("merged") else ""
    console.print(f"  inference GFLOPs:     {info['gflops']:.2f} per image{merged}")
    for note in info["notices"]:
        console.print(f"  note: {note}", markup=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    # no terminal (a log file, a pipe, a test): wide enough that tables are never truncated
    console = Console(stderr=False, highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv:
        parser.print_help()  # a bare `peftbench`: what it can do, not an error (exit 0)
        return 0
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed its one-line usage error
        return int(exc.code or 0)
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM behaves like Ctrl-C
    except ValueError:
        pass  # not the main thread: leave signals alone
    try:
        for plugin in [*args.plugin, *args.plugin_after]:
            load_plugin(plugin)
        check_values(args)
        if hasattr(args, "launcher"):
            chose = resolve_launcher(args)
            check_launcher_args(args)
            if chose:
                console.print(f"launcher auto: {chose}", markup=False)
            if args.launcher != "none":
                return _cmd_launch(args, argv, console)
        if args.command == "run":
            return _cmd_run(args, console)
        if args.command == "tune":
            return _cmd_tune(args, console)
        if args.command == "methods":
            return _cmd_methods(args, console)
        if args.command == "tasks":
            return _cmd_tasks(args, console)
        if args.command == "backbones":
            return _cmd_backbones(args, console)
        if args.command == "inspect":
            return _cmd_inspect(args, console)
        if args.command == "make-synthetic":
            return _cmd_make_synthetic(args, console)
        if args.command == "prepare":
            return _cmd_prepare(args, console, err)
        if args.command == "status":
            _print_status(args.runs_dir, console, args.json, args.claim_timeout)
            return 0
        if args.command == "report":
            _write_report(args.runs_dir, args.out or RunsFolder(args.runs_dir).report, args.reference, console,
                          latex=args.latex)
            return 0
        if args.command == "compare":
            return _cmd_compare(args, console)
        raise AssertionError(args.command)
    except PeftbenchError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
