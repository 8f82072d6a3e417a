"""``<root>/MANIFEST.json``: which data a folder holds, verified once, checked cheaply on every run.

Written by ``peftbench prepare`` through :func:`verify_and_write_manifest`, the one entry point
every route shares (the NOAH folder or zip, TFDS, FGVC): it checks each task completely — the
split lists against the task table (sizes, labels, train ∩ val = ∅, train ∪ val = trainval, no
training image in the test split), every listed image present and decodable — and records, per
task and split, the image count, the sha256 of the split file and the sha256 of the images'
bytes concatenated in list order, plus the route's source tag (``noah-jpeg``, ``tfds-png``,
``fgvc-vpt``). Each task entry carries its own digest (``sha256``, over everything but the
file stats), which runs record as ``data.manifest_sha256``.

``peftbench run --data-root`` does not re-hash anything: :func:`attach_provenance` compares the
sizes and modification times of the split files and of every listed image with the ones the
manifest stored. A task that matches is recorded with the manifest's source and digest; a
folder without a manifest, a task it does not list or a task whose files changed since is
recorded as ``unverified`` (one warning line each). ``peftbench prepare --verify ROOT``
(:func:`reverify`) re-hashes everything, compares with the manifest and refreshes the stats.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..atomic import atomic_write
from ..errors import UsageError
from ..util import file_sha256
from .limits import DEFAULT_MAX_IMAGE_PIXELS, pil_bomb_check_off
from .splits import SPLITS, Entry, TaskLists, collect_task_lists, expected_sizes
from .tasks import TaskSpec, resolve_tasks

MANIFEST_NAME = "MANIFEST.json"
FORMAT = "peftbench-data-manifest"
VERSION = 1
UNVERIFIED = "unverified"  # data.source of a run on a folder (or task) without a valid manifest entry
SOURCES = {"noah-jpeg": "the NOAH folder (every image re-encoded as JPEG, quality 75)",
           "tfds-png": "TensorFlow Datasets with the VTAB slices, images stored as PNG (lossless)",
           "fgvc-vpt": "the data sets' own images with the VPT authors' train/val/test.json splits"}
SHOWN = 10  # problems listed per task by the CLI; the rest are counted

Progress = Callable[[str, int], Callable[[int], None]]  # (label, total) -> advance(n), as Reporter.decode


@dataclass
class VerifyReport:
    """What :func:`verify_and_write_manifest` found: the tasks verified and written, the ones that failed."""

    root: Path
    source: str | None
    manifest: Path | None  # the manifest written (None: nothing to write)
    verified: dict[str, int] = field(default_factory=dict)  # task -> distinct images checked
    failed: dict[str, list[str]] = field(default_factory=dict)  # task -> its problems (file:line: ...)

    @property
    def ok(self) -> bool:
        return not self.failed


def manifest_path(root: Path) -> Path:
    return Path(root) / MANIFEST_NAME


def read_manifest(root: Path) -> dict | None:
    """The manifest of ``root``, or None when there is none or it is not one of ours."""
    try:
        data = json.loads(manifest_path(root).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("tasks"), dict):
        return None
    return data


# ----------------------------------------------------------------------------------------------
# writing: the full check of every task, then one atomic write


def verify_and_write_manifest(root: Path, source: str, tasks: Sequence[str] | None = None,
                              extra: Mapping[str, Any] | None = None, *, suite: str = "vtab1k",
                              task_extra: Mapping[str, Mapping[str, Any]] | None = None,
                              progress: Progress | None = None, threads: int | None = None,
                              max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> VerifyReport:
    """Check every task of ``suite`` in ``root`` (or the named ``tasks``) and write ``root/MANIFEST.json``.

    ``root``: one folder per task (any alias of its name), the NOAH layout or, for FGVC, the
    VPT split files. ``source``: the tag runs record as ``data.source`` (``noah-jpeg``,
    ``tfds-png``, ``fgvc-vpt``). ``extra``: JSON values stored in every task entry this call
    verifies (e.g. ``{"tfds_builder": ...}``); ``task_extra[task]`` adds per-task values (e.g. the
    builder version). Both are part of the task's digest. A task that fails is left out of the
    manifest (an older entry of it is removed) and reported with its problems; the others are
    written. Entries of tasks not checked in this call are kept. Never raises for bad data: the
    report says what failed; raises UsageError only for a bad ``suite`` / ``tasks`` / ``root``.

    The expected split sizes come from the suite's task table (``tasks.SUITES[suite]``: ``train_val``
    and ``test_size``); a test with small generated splits replaces that table for its duration, e.g.
    ``monkeypatch.setitem(SUITES, "vtab1k", tuple(dataclasses.replace(t, test_size=30) for t in VTAB1K))``.
    ``progress(label, total)`` returns ``advance(n)`` (the CLI passes rich progress bars).
    """
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root}: no such folder")
    specs = resolve_tasks(",".join(tasks) if tasks else "all", suite)
    report = VerifyReport(root=root, source=source, manifest=None)
    entries: dict[str, dict] = {}
    for spec in specs:
        entry, problems = check_task(root, spec, progress, threads, max_pixels)
        if problems:
            report.failed[spec.name] = problems
            continue
        assert entry is not None
        entry.update(suite=suite, source=source)
        merged = {**(extra or {}), **((task_extra or {}).get(spec.name) or {})}
        if merged:
            entry["extra"] = json.loads(json.dumps(merged, default=str))
        entries[spec.name] = _sealed(entry)
        report.verified[spec.name] = entry["images"]
    report.manifest = _write(root, entries, drop=report.failed)
    return report


def reverify(root: Path, tasks: Sequence[str] | None = None, progress: Progress | None = None,
             threads: int | None = None, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> VerifyReport:
    """``peftbench prepare --verify ROOT``: re-hash every task of the manifest and compare.

    A task whose counts and hashes still match gets its stored file stats refreshed (so a copied
    folder verifies again); one that differs is named with the splits that changed and removed
    from the manifest (its runs are then recorded as unverified)."""
    root = Path(root)
    manifest = read_manifest(root)
    if manifest is None:
        raise UsageError(f"{manifest_path(root)}: no manifest (write one with `peftbench prepare SUITE --from "
                         f"{root}`)")
    names = list(manifest["tasks"]) if not tasks else list(tasks)
    unknown = [n for n in names if n not in manifest["tasks"]]
    if unknown:
        raise UsageError(f"{manifest_path(root)}: no entry for task(s) {', '.join(unknown)} "
                         f"(it lists {', '.join(manifest['tasks']) or 'none'})")
    report = VerifyReport(root=root, source=None, manifest=None)
    entries: dict[str, dict] = {}
    for name in names:
        old = manifest["tasks"][name]
        spec = resolve_tasks(name, old.get("suite", "vtab1k"))[0]
        entry, problems = check_task(root, spec, progress, threads, max_pixels)
        if entry is not None and not problems:
            problems = _differences(old, entry, manifest_path(root))
        if problems:
            report.failed[name] = problems
            continue
        assert entry is not None
        fresh = {**{k: v for k, v in old.items() if k not in ("stat", "sha256")}, "stat": entry["stat"]}
        entries[name] = _sealed(fresh)
        report.verified[name] = entry["images"]
    report.manifest = _write(root, entries, drop=report.failed)
    return report


def _differences(old: dict, new: dict, where: Path) -> list[str]:
    out = []
    if old.get("folder") != new.get("folder"):
        out.append(f"{where}: task folder was '{old.get('folder')}', now '{new.get('folder')}'")
    for split, was in (old.get("splits") or {}).items():
        now = new["splits"].get(split)
        if now is None:
            out.append(f"{where}: split {split} is gone")
            continue
        for key, what in (("images", "image count"), ("list_sha256", "split file"), ("images_sha256", "image bytes")):
            if was.get(key) != now.get(key):
                out.append(f"{new['folder']}/{now['file']}: {what} changed since the manifest was written "
                           f"({_short(was.get(key))} -> {_short(now.get(key))})")
    return out


def _short(value: Any) -> str:
    return value[:12] if isinstance(value, str) else str(value)


def _write(root: Path, entries: dict[str, dict], drop: Iterable[str]) -> Path | None:
    old = read_manifest(root)
    tasks = {k: v for k, v in ((old or {}).get("tasks") or {}).items() if k not in set(drop)}
    tasks.update(entries)
    if old is None and not tasks:
        return None
    data = {"format": FORMAT, "version": VERSION,
            "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "tasks": dict(sorted(tasks.items()))}
    path = manifest_path(root)
    try:
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}; the folder was verified but nothing "
                         "was recorded (make it writable and run the same command again)") from exc
    return path


def _sealed(entry: dict) -> dict:
    """The entry with its digest: sha256 of its canonical JSON without the file stats."""
    body = {k: v for k, v in entry.items() if k not in ("stat", "sha256")}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return {**body, "sha256": digest, "stat": entry["stat"]}


# ----------------------------------------------------------------------------------------------
# one task: lists, sizes, every image decoded, hashes


def manifest_splits(lists: TaskLists) -> list[tuple[str, str, str]]:
    """(name in the manifest, file name, our split) for each split file of the task's layout."""
    if lists.task.layout == "fgvc":
        from .fgvc import FILES

        return [(FILES[s][:-len(".json")], FILES[s], s) for s in ("train800", "val200", "test")]
    return [(s, f"{s}.txt", s) for s in SPLITS]


def check_task(root: Path, spec: TaskSpec, progress: Progress | None = None, threads: int | None = None,
               max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[dict | None, list[str]]:
    """The manifest entry of one task (without source and digest) and its problems (file:line: ...)."""
    lists, problems = collect_task_lists(root, spec)
    if lists is None:
        return None, problems
    for split, n in expected_sizes(spec).items():
        where = lists.where(split)
        if any(p.startswith(where + ":") for p in problems):
            continue  # a split with bad lines: those are named, its count would only repeat them
        if split in lists.splits and len(lists.splits[split]) != n and not (
                split == "train800val200" and spec.layout == "fgvc"):
            problems.append(f"{where}: {len(lists.splits[split])} image(s) listed, expected {n} "
                            f"(task table: {spec.name})")
    problems += _decode_all(lists, progress, threads, max_pixels)
    if problems:
        return None, problems
    splits, stat = {}, {"files": {}, "images": {}}
    for name, file, split in manifest_splits(lists):
        path = lists.folder / file
        entries = lists.splits[split]
        splits[name] = {"file": file, "images": len(entries), "list_sha256": file_sha256(path),
                        "images_sha256": _images_sha256(entries)}
        stat["files"][file] = _stat(path)
        stat["images"][name] = images_stat_digest(entries)
    distinct = len({e.path for entries in lists.splits.values() for e in entries})
    entry = {"folder": lists.folder.name, "layout": spec.layout, "classes": spec.num_classes, "images": distinct,
             "splits": splits, "stat": stat}
    return entry, []


def _decode_all(lists: TaskLists, progress: Progress | None, threads: int | None, max_pixels: int) -> list[str]:
    """Open and fully decode every listed image once, in parallel; a problem per image that fails."""
    first: dict[Path, tuple[str, Entry]] = {}
    for split, entries in lists.splits.items():
        for e in entries:
            first.setdefault(e.path, (lists.where(split), e))
    items = list(first.values())
    advance = progress(f"{lists.task.name}: decode", len(items)) if progress else (lambda n: None)

    def check(item: tuple[str, Entry]) -> str | None:
        where, e = item
        try:
            with Image.open(e.path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    return (f"{where}:{e.line}: image {e.rel} is {width}×{height} pixels, over the limit of "
                            f"{max_pixels:,} (a decompression bomb?)")
                img.load()
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else ""
            return f"{where}:{e.line}: cannot decode image {e.rel} ({type(exc).__name__}: {reason or 'damaged'})"
        finally:
            advance(1)
        return None

    with pil_bomb_check_off(), ThreadPoolExecutor(threads or min(16, (os.cpu_count() or 2) * 2)) as pool:
        return [p for p in pool.map(check, items) if p]






def _images_sha256(entries: Sequence[Entry]) -> str:
    """sha256 of the images' bytes, concatenated in list order."""
    h = hashlib.sha256()
    for e in entries:
        with open(e.path, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _stat(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def images_stat_digest(entries: Sequence[Entry]) -> str:
    """sha256 of each image's path, size and modification time, in list order: the cheap check."""
    h = hashlib.sha256()
    for e in entries:
        st = os.stat(e.path)
        h.update(f"{e.rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# reading at run time: cheap, no hashing of image bytes


def task_provenance(root: Path, lists: TaskLists, manifest: dict | None) -> tuple[dict[str, Any], str | None]:
    """(``{"source", "manifest_sha256"}`` for the record, a warning or None) for one task."""
    unverified = {"source": UNVERIFIED, "manifest_sha256": None}
    if manifest is None:
        return unverified, None  # the caller says it once for the folder
    entry = manifest["tasks"].get(lists.task.name)
    where = manifest_path(root)
    if not isinstance(entry, dict):
        return unverified, (f"{where} has no entry for task '{lists.task.name}': its runs are recorded as data "
                            f"source '{UNVERIFIED}'")
    changed = _changed(lists, entry)
    if changed:
        return unverified, (f"task '{lists.task.name}': {changed} since {where} was written: its runs are "
                            f"recorded as data source '{UNVERIFIED}'; `peftbench prepare --verify {root}` "
                            "re-checks it")
    return {"source": entry.get("source") or UNVERIFIED, "manifest_sha256": entry.get("sha256")}, None


def _changed(lists: TaskLists, entry: dict) -> str | None:
    stat = entry.get("stat") or {}
    if entry.get("folder") != lists.folder.name:
        return f"the task folder is '{lists.folder.name}', the manifest's '{entry.get('folder')}'"
    try:
        for name, file, split in manifest_splits(lists):
            if (stat.get("files") or {}).get(file) != _stat(lists.folder / file):
                return f"{file} changed (size or modification time)"
            if split not in lists.splits or (stat.get("images") or {}).get(name) != images_stat_digest(
                    lists.splits[split]):
                return f"images of {file} changed (size or modification time)"
    except OSError as exc:
        return f"a file cannot be read ({exc})"
    return None


def attach_provenance(root: Path, lists: Mapping[str, TaskLists], builtin: bool = False) -> list[str]:
    """Set ``TaskLists.provenance`` of every task from ``root/MANIFEST.json``; return the warnings.

    A folder without a manifest gives one warning line (none for peftbench's own generated data,
    ``builtin``: the mini suite and ``make-synthetic`` folders, which say what they are elsewhere)."""
    manifest = read_manifest(root)
    warnings = []
    for tl in lists.values():
        tl.provenance, warning = task_provenance(root, tl, manifest)
        if warning:
            warnings.append(warning)
    if manifest is None and lists and not builtin:
        state = "an unreadable" if manifest_path(root).exists() else "no"
        warnings.append(f"{root} has {state} {MANIFEST_NAME}: runs are recorded as data source '{UNVERIFIED}' "
                        "(`peftbench prepare vtab1k --from FOLDER` verifies a folder and writes one)")
    return warnings
