"""The result record: one JSON file per run, written atomically; the folder is the database.

Schema (``SCHEMA_VERSION``)::

    tool ("peftbench"), run_id, schema, status ("complete" | "diverged" | "oom" | "failed"), reason,
    method, task, suite, seed, created,
    config   {train {...}, method {...}}                fully resolved
    backbone {name, weights, checksum, img_size, interpolation, mean, std}
    data     {root, folder, checksum, splits {name: size}, train_split, eval_split}
    metrics  {test_top1 | val_top1, trainable_params, stored_per_task_params, head_params, total_params, gflops,
              train_img_per_s, infer_img_per_s, peak_mem_bytes, peak_mem_kind, wall_s {phase: s},
              final_train_loss, epochs_done, merged (gflops / infer_img_per_s measured on the
              model with the adaptation folded into the backbone's weights)}
    method_info {...}                                   what the method chose (e.g. SHIP layers)
    provenance {versions {...}, git_commit, git_dirty, device, hostname, argv, worker, resumed_from_epoch}

An interrupted run writes no record (at most a training checkpoint under ``.checkpoints/``), so
the same command picks it up again; there is deliberately no "interrupted" status.
"""

from __future__ import annotations

import json
import math
import os  # noqa: F401  (tests patch records.os.fsync / .replace: the same os module atomic.py uses)
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .atomic import atomic_write  # records.atomic_write stays importable for older callers
from .errors import PeftbenchError
from .layout import NOT_RECORDS, RunsFolder

SCHEMA_VERSION = 1
NEWER = "written by a newer peftbench"  # how validate() words a record of a later schema
TOOL = "peftbench"  # every record says who wrote it (records before this field are read by their shape)
STATUSES = ("complete", "diverged", "oom", "failed")
REQUIRED = ("run_id", "status", "method", "task", "seed", "config", "backbone", "data", "metrics", "provenance")
# a run with one of these statuses is not run again by the same command
FINAL_STATUSES = ("complete", "diverged")


class RecordError(PeftbenchError):
    """A record could not be written (e.g. a full disk): nothing partial was left behind."""


def finite(obj: Any) -> Any:
    """NaN / Infinity are not JSON: store them as null (the status says what happened)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def record_path(out: Path, record: dict) -> Path:
    return RunsFolder(out).record(record["method"], record["task"], record["seed"], record["run_id"])


def write_record(path: Path, record: dict) -> Path:
    """A record is whole or absent (atomic, fsynced); JSON without NaN / Infinity."""
    text = json.dumps(finite(record), indent=2, sort_keys=True, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _accuracy(value: Any) -> bool:
    return _number(value) and 0 <= value <= 100


def _count(value: Any) -> bool:
    return _number(value) and value >= 0 and float(value).is_integer()


def _amount(value: Any) -> bool:  # seconds, GFLOPs, images per second
    return _number(value) and value >= 0


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _sizes(value: Any) -> bool:
    return isinstance(value, list) and all(_count(v) for v in value)


def _phase_times(value: Any) -> bool:
    return isinstance(value, dict) and all(_amount(v) or v is None for v in value.values())


# what the report computes with: (section, key) -> (test, what it must be). None is always allowed (not measured).
FIELDS: dict[tuple[str | None, str], tuple[Callable[[Any], bool], str]] = {
    **{("metrics", k): (_accuracy, "an accuracy in [0, 100]") for k in ("test_top1", "val_top1")},
    **{("metrics", k): (_count, "a count (a finite non-negative integer)")
       for k in ("trainable_params", "head_params", "total_params", "stored_per_task_params", "peak_mem_bytes",
                 "epochs_done")},
    **{("metrics", k): (_amount, "a finite non-negative number")
       for k in ("gflops", "train_img_per_s", "infer_img_per_s", "first_step_s")},
    ("metrics", "final_train_loss"): (_number, "a finite number"),
    ("metrics", "wall_s"): (_phase_times, "an object of seconds per phase"),
    **{("metrics", k): (_text, "text") for k in ("precision", "peak_mem_kind", "eval_split")},
    **{(None, k): (_text, "text") for k in ("suite", "reason", "created")},
    **{("backbone", k): (_text, "text") for k in ("name", "weights", "checksum")},
    ("backbone", "img_size"): (_sizes, "a list of sizes"),
    **{("train", k): (_text, "text") for k in ("protocol", "precision")},
    ("train", "epochs"): (_count, "a count (a finite non-negative integer)"),
    ("provenance", "device"): (_text, "text"),
}


def _section(record: dict, name: str | None) -> Any:
    if name is None:
        return record
    if name == "train":
        return record["config"].get("train", {})
    return record[name]


def validate(record: Any) -> str | None:
    """None if the record has the schema's shape and believable values, else what is wrong (naming the field).

    A record is data from disk: hand-edited, written by another version, or damaged. The report computes
    means and plots from it, so NaN, 1e308 or a string where a number belongs must not get that far.
    Records carry ``tool: "peftbench"``; older ones (before the marker) are recognised by their shape."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if record.get("tool", TOOL) != TOOL:
        return f"written by {record['tool']!r}, not {TOOL}"
    if (newer := newer_schema(record)) is not None:
        return newer
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        return "missing key(s): " + ", ".join(missing)
    if record["status"] not in STATUSES:
        return f"unknown status {record['status']!r}"
    for key in ("metrics", "config", "backbone", "data", "provenance"):
        if not isinstance(record[key], dict):
            return f"{key} must be an object"
    if not all(isinstance(record[k], str) for k in ("run_id", "method", "task")):
        return "run_id, method and task must be strings"
    if not isinstance(record["seed"], int) or isinstance(record["seed"], bool):
        return f"seed = {record['seed']!r}: must be an integer"
    if not isinstance(record["config"].get("train", {}), dict):
        return "config.train must be an object"
    for (section, key), (ok, what) in FIELDS.items():
        value = _section(record, section).get(key)
        if value is not None and not ok(value):
            where = key if section is None else f"{'config.train' if section == 'train' else section}.{key}"
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            return f"{where} = {shown}: must be {what}"
    return _tune_problem(record.get("tune"))


def newer_schema(record: dict) -> str | None:
    """Why a record of a later schema than this version's cannot be read (None: it can)."""
    schema = record.get("schema", SCHEMA_VERSION)
    if not isinstance(schema, int) or isinstance(schema, bool):
        return f"schema = {schema!r}: must be an integer"
    if schema > SCHEMA_VERSION:
        return (f"{NEWER} (record schema {schema}; this version reads up to "
                f"{SCHEMA_VERSION}): upgrade peftbench to use it")
    return None


def _tune_problem(tune: Any) -> str | None:
    """The ``tune`` block of a trial or final (absent on plain runs): what its readers index into."""
    if tune is None:
        return None
    if not isinstance(tune, dict):
        return "tune must be an object"
    if tune.get("role") not in ("trial", "final"):
        return f"tune.role = {tune.get('role')!r}: must be 'trial' or 'final'"
    if not isinstance(tune.get("search"), dict):
        return "tune.search must be an object (the searched settings)"
    for key in ("grid_index", "grid_size"):
        if key in tune and not (_count(tune[key]) and isinstance(tune[key], int)):
            return f"tune.{key} = {tune[key]!r}: must be a count"
    if "chosen_at" in tune and not isinstance(tune["chosen_at"], str):
        return "tune.chosen_at must be text (a time)"
    if "trials" in tune and not (isinstance(tune["trials"], list) and all(isinstance(t, str) for t in tune["trials"])):
        return "tune.trials must be a list of run ids"
    return None


RECORD_NAME = re.compile(r"seed-?\d+(-[0-9a-zA-Z_.-]*)?\.json")  # record_path writes seedN-RUNID.json
MAX_DEPTH = 5  # records sit 3 folders down (method/task/file); 5 allows a folder of runs folders
MAX_RECORD_BYTES = 1 << 20  # a record is a few kB: a bigger JSON file is another tool's and is not read
_NOT_SEARCHED = {*NOT_RECORDS, "__pycache__", "node_modules", "site-packages"}


def iter_record_files(root: Path) -> list[Path]:
    """The JSON files a runs folder can hold records in: not in hidden folders (checkpoints, claims),
    report or package folders, nor deeper than ``MAX_DEPTH`` folders (``report /`` stays shallow)."""
    root = Path(root)
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        depth = len(Path(folder).relative_to(root).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _NOT_SEARCHED and depth < MAX_DEPTH)
        found += [Path(folder) / n for n in sorted(files) if n.endswith(".json") and not n.startswith(".")]
    return found


def _read(path: Path) -> tuple[Any, str | None]:
    """(the parsed file, None) or (None, why it is not a peftbench record at all)."""
    try:
        if path.stat().st_size > MAX_RECORD_BYTES:
            return None, "larger than a record (1 MB)"
        return json.loads(path.read_text()), None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"unreadable JSON ({type(exc).__name__})"


def load_records(root: Path) -> tuple[list[dict], list[str]]:
    """The valid records under ``root``, and what was skipped: one message per damaged record (named
    like one, or saying it is one: ``tool`` / ``schema``), one summary for other JSON files by reason."""
    records, problems = [], []
    skipped: dict[str, list[Path]] = {}
    for path in iter_record_files(root):
        rec, unread = _read(path)
        ours = isinstance(rec, dict) and ("tool" in rec or "schema" in rec)
        if unread and RECORD_NAME.fullmatch(path.name):
            problems.append(f"{path}: not a readable record ({unread})")
        elif unread or not ours:
            skipped.setdefault(unread or "no 'tool' or 'schema' field", []).append(path)
        elif why := validate(rec):
            problems.append(f"{path}: not a peftbench record ({why})")
        else:
            rec["_path"] = str(path)
            records.append(rec)
    if skipped:
        total = sum(map(len, skipped.values()))
        examples = [p for ps in skipped.values() for p in ps][:3]
        problems.append(f"{total} JSON file(s), each not a peftbench record ("
                        + "; ".join(f"{why}: {len(ps)}" for why, ps in skipped.items())
                        + "), e.g. " + ", ".join(map(str, examples)))
    return records, problems


def find_record(root: Path, run_id: str, problems: list[tuple[Path, str]] | None = None) -> dict | None:
    """The valid record of a run, if one exists anywhere under ``root``. Files named like its record
    that are not valid records are appended to ``problems`` as (path, why) when it is given."""
    for path in sorted(Path(root).rglob(f"*-{run_id}.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            if problems is not None:
                problems.append((path, f"unreadable JSON ({type(exc).__name__})"))
            continue
        why = validate(rec)
        if why is None and rec.get("run_id") == run_id:
            return rec
        if why is not None and problems is not None:
            problems.append((path, why))
    return None


def flatten(record: dict) -> dict:
    """One flat row per run for DataFrames and records.csv."""
    row = {k: record.get(k) for k in ("run_id", "status", "reason", "method", "task", "suite", "seed")}
    bb = record.get("backbone", {})
    row.update({"backbone": bb.get("name"), "weights": bb.get("weights"), "weights_checksum": bb.get("checksum"),
                "img_size": "x".join(str(s) for s in bb.get("img_size") or [])})
    train = record.get("config", {}).get("train", {})
    row.update({"protocol": train.get("protocol"), "epochs": train.get("epochs"),
                "precision": record.get("metrics", {}).get("precision", train.get("precision"))})
    for key, val in (record.get("metrics") or {}).items():
        if key == "wall_s" and isinstance(val, dict):
            for phase, secs in val.items():
                row[f"wall_{phase}_s"] = secs
        elif key == "throughput_windows":  # the per-window rates stay in the record; the CSV has their medians
            continue
        else:
            row[key] = val
    row["device"] = record.get("provenance", {}).get("device")
    return row


def to_dataframe(records: list[dict]):
    import pandas as pd

    return pd.DataFrame([flatten(r) for r in records])
