"""FGVC task folders: the VPT authors' ``train.json`` / ``val.json`` / ``test.json`` split files.

Each file maps an image path (relative to the task's image root: ``images/`` for CUB and
NABirds, ``Images/`` for Stanford Dogs, the folder itself for Stanford Cars and Oxford
Flowers) to a class id. The files are read into the same ``TaskLists`` as the VTAB-1k lists, so
the sweep, the tuner, the records and the report need nothing of their own: ``train800`` holds
the train file, ``val200`` the val file, ``train800val200`` both (protocol ``val``: train → val;
``final``: train + val → test) and ``test`` the test file.

Class ids: used as they are when every id lies in ``[0, classes)``; otherwise, when the three
files hold exactly ``classes`` distinct ids, they are numbered in sorted order (what the VPT
loader does with sparse ids); anything else is a problem naming the file and line.
"""

from __future__ import annotations

import json
from pathlib import Path

from .tasks import TaskSpec

FILES = {"train800": "train.json", "val200": "val.json", "test": "test.json"}  # our split name -> VPT file


def _line_finder(text: str):
    """Line number of each key in file order (the keys appear in the text in the order json reads them)."""
    pos = 0

    def line_of(key: str) -> int:
        nonlocal pos
        for encoded in (json.dumps(key, ensure_ascii=False), json.dumps(key)):
            found = text.find(encoded, pos)
            if found >= 0:
                pos = found + len(encoded)
                return text.count("\n", 0, found) + 1
        return text.count("\n", 0, pos) + 1

    return line_of


def _read_json(path: Path, problems: list[str]) -> list[tuple[str, object, int]] | None:
    """(image path, class id, line) in file order, or None when the file cannot be read at all."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problems.append(f"{path}: not UTF-8 text ({exc.reason})")
        return None
    try:
        pairs = json.loads(text, object_pairs_hook=lambda items: items)
    except json.JSONDecodeError as exc:
        problems.append(f"{path}:{exc.lineno}: not JSON ({exc.msg})")
        return None
    if not isinstance(pairs, list) or (pairs and not all(isinstance(p, tuple) for p in pairs)):
        problems.append(f"{path}:1: expected one JSON object mapping image path -> class id")
        return None
    line_of = _line_finder(text)
    out, seen = [], {}
    for key, value in pairs:
        line = line_of(key)
        if key in seen:
            problems.append(f"{path}:{line}: image {key!r} listed twice (first at line {seen[key]})")
            continue
        seen[key] = line
        out.append((key, value, line))
    return out


Item = tuple[Path, str, int, int]  # (absolute image path, path relative to the task folder, label, line)


def read_fgvc_folder(folder: Path, task: TaskSpec) -> tuple[dict[str, list[Item]], dict[str, str], list[str]]:
    """The task folder's split files as items per split (our split names), the file of each split, and every
    problem (file:line). splits.collect_task_lists turns them into ``TaskLists``; see the module doc."""
    problems: list[str] = []
    image_root = folder / task.image_root if task.image_root else folder
    if not image_root.is_dir():
        problems.append(f"{folder}: no image folder '{task.image_root}/' (the {task.name} images live there)")
    raw: dict[str, list[tuple[str, object, int]]] = {}
    for split, name in FILES.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{path}: missing split file")
            continue
        items = _read_json(path, problems)
        if items is not None:
            raw[split] = items
    mapping = _class_map(task, folder, raw, problems)
    resolved_folder = folder.resolve()
    splits: dict[str, list[Item]] = {}
    for split, items in raw.items():
        path, entries = folder / FILES[split], []
        for key, value, line in items:
            where = f"{path}:{line}"
            if isinstance(value, bool) or not isinstance(value, int) or value not in mapping:
                continue  # named by _class_map
            rel_path = Path(task.image_root) / key if task.image_root else Path(key)
            full = (folder / rel_path).resolve()
            if Path(key).is_absolute() or not full.is_relative_to(resolved_folder):
                problems.append(f"{where}: image path {key!r} leaves the task folder")
                continue
            if not full.is_file():
                problems.append(f"{where}: missing image {rel_path.as_posix()}")
                continue
            entries.append((full, rel_path.as_posix(), mapping[value], line))
        splits[split] = entries
    if "train800" in splits and "val200" in splits:
        splits["train800val200"] = splits["train800"] + splits["val200"]
    files = {split: str(folder / name) for split, name in FILES.items()}
    files["train800val200"] = f"{folder / 'train.json'} + val.json"
    return splits, files, problems


def _class_map(task: TaskSpec, folder: Path, raw: dict[str, list[tuple[str, object, int]]],
               problems: list[str]) -> dict:
    """class id in the files -> label in [0, classes); problems name the first lines at fault."""
    bad = [(split, key, value, line) for split, items in raw.items() for key, value, line in items
           if not isinstance(value, int) or isinstance(value, bool)]
    for split, key, value, line in bad[:10]:
        problems.append(f"{folder / FILES[split]}:{line}: class id {value!r} of {key!r} is not an integer")
    ids = {value for items in raw.values() for _, value, _ in items
           if isinstance(value, int) and not isinstance(value, bool)}
    if all(0 <= v < task.num_classes for v in ids):
        return {v: v for v in ids}
    if len(ids) == task.num_classes:  # sparse ids: numbered in sorted order, as the VPT loader does
        return {v: i for i, v in enumerate(sorted(ids))}
    outside = [(split, key, value, line) for split, items in raw.items() for key, value, line in items
               if value in ids and not 0 <= value < task.num_classes]
    for split, key, value, line in outside[:10]:
        problems.append(f"{folder / FILES[split]}:{line}: label {value} of {key!r} outside [0, {task.num_classes})"
                        f" ({len(ids)} distinct class ids in the split files, {task.num_classes} expected)")
    return {v: v for v in ids if 0 <= v < task.num_classes}
