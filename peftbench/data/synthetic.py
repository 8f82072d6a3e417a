"""Generated task folders in the VTAB-1k layout: for tests, and as a full-size stand-in for timing.

The images carry a learnable but noisy signal (a class-dependent colour and stripe pattern),
so accuracy above chance means the pipeline works; the content is otherwise random.
"""

from __future__ import annotations

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
