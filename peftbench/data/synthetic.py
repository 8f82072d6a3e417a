"""Generated task folders in the VTAB-1k layout: for tests, and as a full-size stand-in for timing.

The images carry a learnable but noisy signal (a class-dependent colour and stripe pattern),
so accuracy above chance means the pipeline works; the content is otherwise random.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import atomic_folder
from .splits import SPLITS
from .tasks import TaskSpec


def _image(rng: np.random.Generator, label: int, num_classes: int, hw: tuple[int, int], signal: float) -> np.ndarray:
    h, w = hw
    noise = rng.integers(0, 256, size=(h, w, 3), dtype=np.int16)
    hue = np.array([(label * 97) % 256, (label * 53 + 80) % 256, (label * 151 + 160) % 256], dtype=np.float32)
    stripes = ((np.arange(w)[None, :] // max(1, w // (2 + label % 5))) % 2).astype(np.float32)[..., None]
    pattern = hue[None, None, :] * (0.6 + 0.4 * stripes)
    img = (1 - signal) * noise + signal * pattern
    return np.clip(img, 0, 255).astype(np.uint8)


def _save(arr: np.ndarray, path: Path, fmt: str, mode: str) -> None:
    img = Image.fromarray(arr, "RGB")
    if mode == "L":
        img = img.convert("L")
    elif mode == "RGBA":
        img = img.convert("RGBA")
    elif mode == "P":
        img = img.convert("P", palette=Image.ADAPTIVE, colors=64)
    if fmt == "jpg" and mode in ("RGBA", "P"):
        img = img.convert("RGB")
    img.save(path, quality=90) if fmt == "jpg" else img.save(path)


def write_task(folder: Path, num_classes: int, sizes: dict[str, int], hw: tuple[int, int] = (32, 32),
               seed: int = 0, signal: float = 0.7, formats: Sequence[str] = ("png",),
               modes: Sequence[str] = ("RGB",), crlf: bool = False) -> Path:
    """Write one task: ``sizes`` gives train800 / val200 / test counts; train800val200 is their union."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {s: [] for s in SPLITS}
    k = 0
    for split in ("train800", "val200", "test"):
        for i in range(sizes[split]):
            label = int(rng.integers(0, num_classes)) if i >= num_classes else i % num_classes
            fmt = formats[k % len(formats)]
            mode = modes[k % len(modes)]
            rel = f"images/{split}/{i:06d}.{fmt}"
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            _save(_image(rng, label, num_classes, hw, signal), folder / rel, fmt, mode)
            lines[split].append(f"{rel} {label}")
            k += 1
    lines["train800val200"] = lines["train800"] + lines["val200"]
    newline = "\r\n" if crlf else "\n"
    for split, items in lines.items():
        (folder / f"{split}.txt").write_bytes((newline.join(items) + newline).encode())
    return folder


def _native_hw(task: TaskSpec) -> tuple[int, int]:
    if task.native_size is None:
        return 300, 400  # "variable" tasks: a typical photo size
    width, height = task.native_size
    return height, width


SYNTHETIC_MARKER = "SYNTHETIC.json"  # in a data root from make-synthetic: records of it say data.synthetic


def is_synthetic(data_root: Path) -> bool:
    """Whether ``data_root`` was written by ``make-synthetic`` (random images: timing, not accuracy)."""
    return (Path(data_root) / SYNTHETIC_MARKER).is_file()


def make_synthetic(out: Path, tasks: Sequence[TaskSpec], scale: float = 1.0, seed: int = 0,
                   overwrite: bool = False, on_task: Callable[[str], None] | None = None) -> Path:
    """A stand-in for a whole suite: the real split sizes (times ``scale``) and native resolutions, JPEG."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / SYNTHETIC_MARKER).write_text(json.dumps({"synthetic": True, "content": "random (timing only)",
                                                    "scale": scale, "seed": seed}, indent=1) + "\n")
    for n, task in enumerate(tasks):
        folder = out / task.name
        if folder.exists():
            if not overwrite and (folder / "test.txt").is_file():
                if on_task:
                    on_task(task.name)
                continue
            shutil.rmtree(folder)
        sizes = {"train800": max(1, round(800 * scale)), "val200": max(1, round(200 * scale)),
                 "test": max(1, round(task.test_size * scale))}
        atomic_folder(folder, lambda tmp, task=task, sizes=sizes, n=n: write_task(
            tmp, task.num_classes, sizes, _native_hw(task), seed=seed + n, formats=("jpg",)))
        if on_task:
            on_task(task.name)
    return out


# ----------------------------------------------------------------------------------------------
# fixtures for `peftbench prepare`: a NOAH-layout zip and an FGVC folder, with known defects

NOAH_DEFECTS = ("missing_image", "label_out_of_range", "train_799", "train_val_overlap", "truncated_jpeg",
                "symlink")
FGVC_DEFECTS = ("missing_image", "label_out_of_range", "train_short", "train_val_overlap", "truncated_jpeg",
                "symlink")


def _jpeg(rng: np.random.Generator, label: int, num_classes: int, hw: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_image(rng, label, num_classes, hw, 0.7), "RGB").save(buf, format="JPEG", quality=75)
    return buf.getvalue()


def noah_task_files(task: TaskSpec, hw: tuple[int, int] = (8, 8), seed: int = 0,
                    defect: str | None = None) -> tuple[dict[str, bytes], dict[str, str]]:
    """One task in the NOAH layout, in memory: (relative path -> bytes, symlinks: relative path -> target).

    Split sizes come from the task table (``task.train_val``, ``task.test_size``); ``defect`` is one of
    NOAH_DEFECTS, each placed at the line its comment names."""
    rng = np.random.default_rng(seed)
    train, val = task.train_val
    files: dict[str, bytes] = {}
    lines: dict[str, list[str]] = {}
    for split, n in (("train800", train), ("val200", val), ("test", task.test_size)):
        folder = "train800val200" if split != "test" else "test"
        lines[split] = []
        for i in range(n):
            label = i % task.num_classes
            rel = f"images/{folder}/{split}_{i:06d}.jpg"
            files[rel] = _jpeg(rng, label, task.num_classes, hw)
            lines[split].append(f"{rel} {label}")
    links: dict[str, str] = {}
    lines["train800val200"] = lines["train800"] + lines["val200"]  # as written before any defect
    if defect == "missing_image":
        del files[lines["train800"][4].split()[0]]  # train800.txt:5
    elif defect == "label_out_of_range":
        lines["val200"][2] = lines["val200"][2].split()[0] + f" {task.num_classes}"  # val200.txt:3
    elif defect == "train_799":
        lines["train800"] = lines["train800"][:-1]  # 799 lines; train800val200 keeps all 1000
    elif defect == "train_val_overlap":
        lines["val200"][0] = lines["train800"][0]  # val200.txt:1 is train800.txt:1
        lines["train800val200"] = lines["train800"] + lines["val200"]
    elif defect == "truncated_jpeg":
        rel = lines["test"][6].split()[0]  # test.txt:7
        files[rel] = files[rel][: len(files[rel]) // 2]
    elif defect == "symlink":
        rel = lines["test"][1].split()[0]  # test.txt:2: a link to a file outside the folder
        del files[rel]
        links[rel] = "/etc/hostname"
    elif defect is not None:
        raise ValueError(f"unknown defect {defect!r} (one of {', '.join(NOAH_DEFECTS)})")
    for split in SPLITS:
        files[f"{split}.txt"] = ("\n".join(lines[split]) + "\n").encode()
    return files, links


def write_noah_zip(path: Path, tasks: Sequence[TaskSpec], defects: dict[str, str] | None = None,
                   escape: bool = False, top: str = "vtab-1k", hw: tuple[int, int] = (8, 8)) -> Path:
    """A zip of ``top/<folder>/...`` for each task (the folder: the task's last alias, as NOAH names it).

    ``defects``: task name -> one of NOAH_DEFECTS. ``escape``: entries ``../escaped.txt`` and
    ``/tmp/.../absolute.txt`` that try to leave the target folder."""
    import stat
    import zipfile

    path = Path(path)
    defects = defects or {}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for n, task in enumerate(tasks):
            folder = f"{top}/{task.folder_names[-1]}"
            files, links = noah_task_files(task, hw, seed=n, defect=defects.get(task.name))
            for rel, data in files.items():
                zf.writestr(f"{folder}/{rel}", data)
            for rel, target in links.items():
                info = zipfile.ZipInfo(f"{folder}/{rel}")
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, target)
        if escape:
            zf.writestr(f"{top}/../escaped.txt", b"outside")
            zf.writestr("/tmp/peftbench-absolute.txt", b"outside")
    return path


def write_fgvc_folder(root: Path, tasks: Sequence[TaskSpec], defects: dict[str, str] | None = None,
                      hw: tuple[int, int] = (8, 8)) -> Path:
    """FGVC data sets as the VPT loader reads them: ``<folder>/{train,val,test}.json`` (image path relative
    to the task's image root -> class id) and the images; folder: the task's first alias (CUB_200_2011,
    NABirds, ...). Sizes from the task table; ``defects``: task name -> one of FGVC_DEFECTS, placed at
    train.json line 3 (missing image, short split), val.json line 2 (label, overlap), test.json line 4
    (truncated JPEG, symlink). The JSON is written one entry per line."""
    root = Path(root)
    defects = defects or {}
    for n, task in enumerate(tasks):
        rng = np.random.default_rng(n)
        folder = root / task.folder_names[1]
        image_root = folder / task.image_root if task.image_root else folder
        train, val = task.train_val
        splits: dict[str, dict[str, int]] = {}
        for split, size in (("train", train), ("val", val), ("test", task.test_size)):
            splits[split] = {}
            for i in range(size):
                label = (i * 7) % task.num_classes
                rel = f"{label:03d}.class_{label}/{split}_{i:05d}.jpg"
                (image_root / rel).parent.mkdir(parents=True, exist_ok=True)
                (image_root / rel).write_bytes(_jpeg(rng, label, task.num_classes, hw))
                splits[split][rel] = label
        defect = defects.get(task.name)
        train_keys, val_keys, test_keys = (list(splits[s]) for s in ("train", "val", "test"))
        if defect == "missing_image":
            (image_root / train_keys[2]).unlink()
        elif defect == "label_out_of_range":
            splits["val"][val_keys[1]] = task.num_classes
        elif defect == "train_short":
            del splits["train"][train_keys[-1]]
        elif defect == "train_val_overlap":
            splits["val"] = {(train_keys[0] if k == val_keys[1] else k): v for k, v in splits["val"].items()}
        elif defect == "truncated_jpeg":
            data = (image_root / test_keys[3]).read_bytes()
            (image_root / test_keys[3]).write_bytes(data[: len(data) // 2])
        elif defect == "symlink":
            (image_root / test_keys[3]).unlink()
            (image_root / test_keys[3]).symlink_to("/etc/hostname")
        elif defect is not None:
            raise ValueError(f"unknown defect {defect!r} (one of {', '.join(FGVC_DEFECTS)})")
        for split, items in splits.items():
            body = ",\n".join(f" {json.dumps(k)}: {v}" for k, v in items.items())
            (folder / f"{split}.json").write_text("{\n" + body + "\n}\n")
    return root
