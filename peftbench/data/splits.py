"""VTAB-1k split lists in the NOAH layout and the pre-flight check.

``<root>/<task or alias>/{train800,val200,train800val200,test}.txt`` with lines
``<relative image path> <label>``. Every problem is collected with its file and line so the
user fixes them all in one go, before any training starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from .tasks import TaskSpec

SPLITS = ("train800", "val200", "train800val200", "test")
EXPECTED_SIZES = {"train800": 800, "val200": 200, "train800val200": 1000}
# protocol -> (training split, evaluation split)
PROTOCOL_SPLITS = {"final": ("train800val200", "test"), "val": ("train800", "val200")}


@dataclass(frozen=True)
class Entry:
    path: Path  # absolute, inside the task folder
    rel: str
    label: int
    line: int


@dataclass
class TaskLists:
    task: TaskSpec
    folder: Path
    splits: dict[str, list[Entry]]
    warnings: list[str] = field(default_factory=list)


def find_task_folder(root: Path, task: TaskSpec) -> Path:
    for name in task.folder_names:
        if (root / name).is_dir():
            return root / name
    tried = ", ".join(task.folder_names)
    raise DataError(f"{root}: no folder for task '{task.name}' (looked for: {tried})")


def _read_list(list_file: Path, folder: Path, num_classes: int, problems: list[str]) -> list[Entry]:
    entries: list[Entry] = []
    root = folder.resolve()
    data = list_file.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        lineno = data.count(b"\n", 0, exc.start) + 1
        problems.append(f"{list_file}:{lineno}: not UTF-8 text (byte 0x{data[exc.start]:02x}: {exc.reason})")
        return entries
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.rsplit(maxsplit=1)
        where = f"{list_file}:{lineno}"
        if len(parts) != 2:
            problems.append(f"{where}: expected '<image path> <label>', got {line!r}")
            continue
        rel, label_text = parts
        try:
            label = int(label_text)
        except ValueError:
            problems.append(f"{where}: label {label_text!r} is not an integer")
            continue
        if not 0 <= label < num_classes:
            problems.append(f"{where}: label {label} outside [0, {num_classes})")
            continue
        rel_path = Path(rel)
        path = (folder / rel_path).resolve()
        if rel_path.is_absolute() or not path.is_relative_to(root):
            problems.append(f"{where}: image path {rel!r} leaves the task folder")
            continue
        if not path.is_file():
            problems.append(f"{where}: missing image {rel}")
            continue
        entries.append(Entry(path=path, rel=rel_path.as_posix(), label=label, line=lineno))
    return entries


def read_task_lists(root: Path, task: TaskSpec) -> TaskLists:
    """Parse the four split lists and check them against each other; raise one DataError listing all."""
    folder = find_task_folder(Path(root), task)
    problems: list[str] = []
    splits: dict[str, list[Entry]] = {}
    clean: set[str] = set()  # lists without a bad line: only these are compared for equality
    for split in SPLITS:
        list_file = folder / f"{split}.txt"
        if not list_file.is_file():
            problems.append(f"{list_file}: missing split file")
            continue
        before = len(problems)
        splits[split] = _read_list(list_file, folder, task.num_classes, problems)
        if len(problems) == before:
            clean.add(split)
    warnings: list[str] = []
    if {"train800", "val200", "train800val200"} <= clean:  # else the skipped bad line itself would differ
        union = {e.rel for e in splits["train800"]} | {e.rel for e in splits["val200"]}
        combined = {e.rel for e in splits["train800val200"]}
        if union != combined:
            diff = sorted(union ^ combined)
            shown = ", ".join(diff[:5]) + (f", ... ({len(diff)} in all)" if len(diff) > 5 else "")
            problems.append(f"{folder}: train800 ∪ val200 differs from train800val200 ({shown})")
    if "test" in splits:
        test = {e.rel for e in splits["test"]}
        for split in ("train800", "val200", "train800val200"):
            overlap = sorted(test & {e.rel for e in splits.get(split, [])})
            if overlap:
                shown = ", ".join(overlap[:5]) + (f", ... ({len(overlap)} in all)" if len(overlap) > 5 else "")
                problems.append(f"{folder}: {split} overlaps the test split ({shown})")
    if problems:
        raise DataError(f"task '{task.name}': {len(problems)} problem(s) in {folder}:\n  " + "\n  ".join(problems))
    expected = {**EXPECTED_SIZES, "test": task.test_size}
    odd = [f"{s} {len(splits[s])} (expected {n})" for s, n in expected.items() if len(splits[s]) != n]
    if odd:
        warnings.append(f"{folder}: split sizes differ from the task table: {', '.join(odd)}")
    return TaskLists(task=task, folder=folder, splits=splits, warnings=warnings)
