"""VTAB-1k split lists in the NOAH layout and the pre-flight check.

``<root>/<task or alias>/{train800,val200,train800val200,test}.txt`` with lines
``<relative image path> <label>``. Every problem is collected with its file and line so the
user fixes them all in one go, before any training starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from .fgvc import read_fgvc_folder
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
    files: dict[str, str] = field(default_factory=dict)  # split -> the file it comes from, when not <split>.txt
    provenance: dict = field(default_factory=dict)  # data.source / data.manifest_sha256 (data/manifest.py)

    def where(self, split: str) -> str:
        """The file a split comes from, for messages (file:line)."""
        return self.files.get(split) or str(self.folder / f"{split}.txt")


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


def expected_sizes(task: TaskSpec) -> dict[str, int]:
    """The size of each split the task table promises (VTAB-1k: 800 / 200 / 1000 / its test size)."""
    train, val = task.train_val
    return {"train800": train, "val200": val, "train800val200": train + val, "test": task.test_size}


def _shown(paths: set[str]) -> str:
    items = sorted(paths)
    return ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5 else "")


def collect_task_lists(root: Path, task: TaskSpec) -> tuple[TaskLists | None, list[str]]:
    """The task's split lists and every problem found in them (file:line), without raising.

    ``None`` when the task has no folder. The lists hold only the good lines of each file."""
    try:
        folder = find_task_folder(Path(root), task)
    except DataError as exc:
        return None, [str(exc)]
    if task.layout == "fgvc":
        items, files, problems = read_fgvc_folder(folder, task)
        lists = TaskLists(task=task, folder=folder, files=files,
                          splits={s: [Entry(*item) for item in found] for s, found in items.items()})
        return lists, problems + cross_split_problems(lists, set())
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
    lists = TaskLists(task=task, folder=folder, splits=splits)
    problems += cross_split_problems(lists, clean)
    return lists, problems


def cross_split_problems(lists: TaskLists, clean: set[str]) -> list[str]:
    """train800 ∩ val200 = ∅, train800 ∪ val200 = train800val200, no training image in the test split."""
    splits, problems = lists.splits, []
    rels = {name: {e.rel for e in entries} for name, entries in splits.items()}
    in_train = {e.rel: e.line for e in splits.get("train800", [])}
    both = [e for e in splits.get("val200", []) if e.rel in in_train]
    for e in both[:5]:
        problems.append(f"{lists.where('val200')}:{e.line}: image {e.rel} is also in "
                        f"{lists.where('train800')}:{in_train[e.rel]} (train800 and val200 must not share images)")
    if len(both) > 5:
        problems.append(f"{lists.where('val200')}: ... {len(both)} images in all are also in train800")
    if {"train800", "val200", "train800val200"} <= clean:  # else the skipped bad line itself would differ
        union = rels["train800"] | rels["val200"]
        if union != rels["train800val200"]:
            problems.append(f"{lists.folder}: train800 ∪ val200 differs from train800val200 "
                            f"({_shown(union ^ rels['train800val200'])})")
    if "test" in splits:
        reported = False
        for split in ("train800", "val200", "train800val200"):
            overlap = rels["test"] & rels.get(split, set())
            if overlap and not (split == "train800val200" and reported):  # already named for train800 / val200
                problems.append(f"{lists.folder}: {split} overlaps the test split ({_shown(overlap)})")
                reported = True
    return problems


def read_task_lists(root: Path, task: TaskSpec) -> TaskLists:
    """Parse the four split lists and check them against each other; raise one DataError listing all."""
    lists, problems = collect_task_lists(root, task)
    if problems or lists is None:
        where = f" in {lists.folder}" if lists is not None else ""
        if lists is None and len(problems) == 1:
            raise DataError(problems[0])
        raise DataError(f"task '{task.name}': {len(problems)} problem(s){where}:\n  " + "\n  ".join(problems))
    odd = [f"{s} {len(lists.splits[s])} (expected {n})" for s, n in expected_sizes(task).items()
           if len(lists.splits[s]) != n]
    if odd:
        lists.warnings.append(f"{lists.folder}: split sizes differ from the task table: {', '.join(odd)}")
    return lists
