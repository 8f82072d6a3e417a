"""The built-in ``mini`` suite: five small generated tasks in the VTAB-1k layout.

It lets anyone run the whole benchmark (every method, every task) on a laptop CPU in
minutes, with the same code path as VTAB-1k: the tasks are written to disk as 32×32 PNG
files with ``train800`` / ``val200`` / ``train800val200`` / ``test`` lists and are read by
the ordinary split reader. They mirror VTAB's three groups in spirit:

- natural: ``digits`` — real handwritten digits (scikit-learn's copy of the UCI optical
  digits, shipped with the package), rescaled, recoloured and placed on uneven backgrounds;
- specialized: ``texture`` — ten families of periodic and random patterns;
- structured: ``sprite_loc`` / ``sprite_ori`` (dSprites-like position / orientation) and
  ``count`` (CLEVR-count-like, 1–6 objects).

Generation is deterministic: every random draw comes from a seeded ``numpy`` Generator and
pixels are computed with integer arithmetic (rotations use a fixed integer cosine table,
shapes are rasterised by PIL at 4× and averaged with integer sums), so the pixels do not
depend on thread counts or on the platform's maths library.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import atomic_folder
from ..errors import DataError
from .images import default_cache_dir
from .mini_draw import RECIPES, SIZE, TEST_SIZE, _count_of
from .splits import SPLITS
from .tasks import TaskSpec, register_suite

VERSION = 1
MARKER = "MINI_SUITE.json"

MINI_TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("digits", 10, "natural", TEST_SIZE, "32x32"),
    TaskSpec("texture", 10, "specialized", TEST_SIZE, "32x32"),
    TaskSpec("sprite_loc", 16, "structured", TEST_SIZE, "32x32"),
    TaskSpec("sprite_ori", 8, "structured", TEST_SIZE, "32x32"),
    TaskSpec("count", 6, "structured", TEST_SIZE, "32x32"),
)
register_suite("mini", MINI_TASKS)


# ---- writing the suite -------------------------------------------------------------------

def _write_task(task: TaskSpec, folder: Path, digest) -> None:
    recipe = RECIPES[task.name]
    lists: dict[str, list[str]] = {}
    for part_index, part in enumerate(("trainval", "test")):
        rng = np.random.default_rng([VERSION, recipe.seed, part_index])
        images, labels = recipe.generate(rng, part)
        assert images.shape == (_count_of(part), SIZE, SIZE, 3) and labels.max() < task.num_classes
        (folder / "images" / part).mkdir(parents=True, exist_ok=True)
        lines = []
        for i, (img, label) in enumerate(zip(images, labels)):
            rel = f"images/{part}/{i:05d}.png"
            Image.fromarray(img, "RGB").save(folder / rel, format="PNG")
            lines.append(f"{rel} {int(label)}")
        digest.update(task.name.encode() + part.encode() + images.tobytes() + labels.tobytes())
        lists[part] = lines
    trainval = lists["trainval"]
    content = {"train800": trainval[:800], "val200": trainval[800:], "train800val200": trainval,
               "test": lists["test"]}
    for split in SPLITS:
        (folder / f"{split}.txt").write_text("\n".join(content[split]) + "\n", encoding="utf-8")


def default_mini_root() -> Path:
    return default_cache_dir() / f"mini-v{VERSION}"


def ensure_mini_suite(root: Path | None = None) -> Path:
    """Generate the mini suite under ``root`` (default: the peftbench cache) unless it is there.

    The suite is written into a temporary sibling folder and renamed into place, so a reader
    never sees half a suite and concurrent callers are safe (the first rename wins; the others
    discard their copy). ``MINI_SUITE.json`` marks a complete suite and holds a checksum of
    every image's pixels and label.
    """
    root = Path(root) if root is not None else default_mini_root()
    if (root / MARKER).is_file():
        return root
    if root.exists() and any(root.iterdir()):
        raise DataError(f"{root}: exists but holds no complete mini suite ({MARKER} is missing); "
                        "remove it or choose another folder")

    def write(tmp: Path) -> None:
        digest = hashlib.sha256()
        for task in MINI_TASKS:
            _write_task(task, tmp / task.name, digest)
        marker = {"suite": "mini", "version": VERSION, "tasks": [t.name for t in MINI_TASKS],
                  "pixel_checksum": digest.hexdigest()}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")

    if not atomic_folder(root, write) and not (root / MARKER).is_file():  # lost the race: the winner's must be whole
        raise DataError(f"{root}: another process wrote it, but without {MARKER}; remove it and retry")
    return root


def list_checksums(root: Path) -> dict[str, str]:
    """sha256 of every split list, keyed ``<task>/<split>.txt`` (for determinism checks)."""
    root = Path(root)
    return {f"{t.name}/{s}.txt": hashlib.sha256((root / t.name / f"{s}.txt").read_bytes()).hexdigest()
            for t in MINI_TASKS for s in SPLITS}


def pixel_checksum(root: Path) -> str:
    """The checksum recorded in the suite's marker at generation time."""
    return json.loads((Path(root) / MARKER).read_text(encoding="utf-8"))["pixel_checksum"]
