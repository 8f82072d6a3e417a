"""VTAB-1k built from TensorFlow Datasets, exactly as the VTAB authors define it.

``peftbench prepare vtab1k --from tfds`` reads each task through TFDS with the builders, slices
and label maps of ``google-research/task_adaptation`` (its ``data/*.py``): ``train800`` =
``train[:800]``; ``val200`` a 200-image slice that differs per task (computed, as there, from
the builder's split sizes: CIFAR-100's ``train[45000:45200]`` is 90 % of 50,000); the test split
(the full ``test``, CLEVR's ``validation``, SmallNORB's ``test[50%:]``, the last 20 % of
EuroSAT's / RESISC45's ``train``, ...); ``train800val200`` their union. Structured tasks get
their labels from the annotations as there: KITTI's closest-vehicle-distance bins, dSprites'
16 x-position / orientation bins, SmallNORB's azimuth / elevation, CLEVR's object count and
closest-object-distance bins. Every image is stored losslessly as PNG (the pixels TFDS decodes)
in the layout the loader reads: ``<task>/images/<split>/NNNNNN.png`` plus
``<task>/{train800,val200,train800val200,test}.txt`` with ``<image path> <label>`` lines.

TensorFlow Datasets is an optional extra (``pip install 'peftbench[tfds]'``): it is imported
only inside :func:`build_vtab1k_from_tfds`, never by ``import peftbench`` (and nothing here
imports torch).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..atomic import atomic_folder
from ..errors import DataError, UsageError
from .tasks import VTAB1K, TaskSpec

SOURCE_TAG = "tfds-png"
MARKER = "tfds.json"  # in each task folder this route wrote: builder, version and slices it was built from
INSTALL_HINT = "pip install 'peftbench[tfds]' (TensorFlow Datasets and TensorFlow, CPU build)"

Progress = Callable[[str, int], Callable[[int], None]]  # (label, total) -> advance(n)


@dataclass(frozen=True)
class TfdsTask:
    """How one VTAB-1k task is read from TFDS (transcribed from task_adaptation's data/*.py).

    ``builders``: TFDS ``name[/config]:version`` specs, task_adaptation's own first; a later one
    is used only when the earlier cannot be loaded by the installed TFDS and is not already
    prepared in the data folder (``generate`` lists the specs this route may download and
    prepare, default all). ``val`` / ``test``: the split rule (see :func:`tfds_splits`).
    ``label``: the label map, ``label_key`` the feature it reads."""

    name: str
    builders: tuple[str, ...]
    val: str  # "validation" | "test[:200]" | "train%<P>" (val200 = train[n:n+200], n = P % of train)
    test: str  # a TFDS split string, or "train%<P>+<V>" (test = train[n+v:], n, v = P %, V % of train)
    label: str = "label"  # label map: label | clevr_count | clevr_dist | kitti_vehicle_dist | bin16
    label_key: str = "label"
    generate: tuple[str, ...] | None = None
    manual: str | None = None  # the manual download this builder needs, if any (see MANUAL)

    @property
    def builder(self) -> str:
        """task_adaptation's spec (the first)."""
        return self.builders[0]

    @property
    def generatable(self) -> tuple[str, ...]:
        return self.generate if self.generate is not None else self.builders


def _tt(name, builders, val, test, **kw) -> TfdsTask:
    return TfdsTask(name, tuple(builders) if isinstance(builders, (list, tuple)) else (builders,), val, test, **kw)


# In VTAB order (as peftbench.data.tasks.VTAB1K). Slices and label maps: task_adaptation's data/*.py.
TFDS_TASKS: tuple[TfdsTask, ...] = (
    _tt("cifar100", "cifar100:3.*.*", "train%90", "test"),
    _tt("caltech101", "caltech101:3.*.*", "train%90", "test"),
    _tt("dtd", "dtd:3.*.*", "validation", "test"),
    _tt("oxford_flowers102", "oxford_flowers102:2.*.*", "validation", "test"),
    # TFDS 4.9 ships only 4.0.0 ("fix corrupt images"); a prepared 3.x in the data folder is used first
    _tt("oxford_pet", ["oxford_iiit_pet:3.*.*", "oxford_iiit_pet:4.*.*"], "train%80", "test"),
    _tt("svhn", "svhn_cropped:3.*.*", "train%90", "test"),
    _tt("sun397", "sun397/tfds:4.*.*", "validation", "test"),
    _tt("patch_camelyon", "patch_camelyon:2.*.*", "validation", "test"),
    _tt("eurosat", "eurosat/rgb:2.*.*", "train%60", "train%60+20"),
    _tt("resisc45", "resisc45:3.*.*", "train%60", "train%60+20", manual="resisc45"),
    _tt("diabetic_retinopathy", "diabetic_retinopathy_detection/btgraham-300:3.*.*", "validation", "test",
        manual="diabetic_retinopathy"),
    _tt("clevr_count", "clevr:3.*.*", "train%90", "validation", label="clevr_count"),
    _tt("clevr_dist", "clevr:3.*.*", "train%90", "validation", label="clevr_dist"),
    _tt("dmlab", "dmlab:2.0.1", "validation", "test"),
    # task_adaptation reads kitti:3.1.0, which current TFDS cannot generate any more; 3.2.0 (devkit update)
    # has the same images and labels. A prepared 3.1.0 is used when the data folder has it.
    _tt("kitti", ["kitti:3.1.0", "kitti:3.2.0"], "validation", "test", label="kitti_vehicle_dist",
        generate=("kitti:3.2.0",)),
    _tt("dsprites_loc", "dsprites:2.*.*", "train%80", "train%80+10", label="bin16", label_key="label_x_position"),
    _tt("dsprites_ori", "dsprites:2.*.*", "train%80", "train%80+10", label="bin16", label_key="label_orientation"),
    _tt("smallnorb_azi", "smallnorb:2.*.*", "test[:200]", "test[50%:]", label_key="label_azimuth"),
    _tt("smallnorb_ele", "smallnorb:2.*.*", "test[:200]", "test[50%:]", label_key="label_elevation"),
)
BY_NAME = {t.name: t for t in TFDS_TASKS}

# one line each, shown when the files are missing ({manual}: the manual-download folder)
MANUAL = {
    "resisc45": ("resisc45 needs a manual download: get NWPU-RESISC45.rar (the OneDrive link on the TFDS resisc45 "
                 "page) and extract it into {manual}, so that {manual}/NWPU-RESISC45/<class>/<class>_NNN.jpg exist; "
                 "then run the command again"),
    "diabetic_retinopathy": ("diabetic_retinopathy needs a manual download: from Kaggle's "
                             "diabetic-retinopathy-detection competition join train.zip.001-005 "
                             "(cat train.zip.00* > train.zip) and test.zip.001-007, and unzip them, sample.zip and "
                             "trainLabels.csv.zip into {manual}, so that {manual}/train/, {manual}/test/, "
                             "{manual}/sample/ and {manual}/trainLabels.csv exist; then run the command again"),
}
# what must be present in the manual folder for each
MANUAL_FILES = {"resisc45": ("NWPU-RESISC45",),
                "diabetic_retinopathy": ("train", "test", "sample", "trainLabels.csv")}


# ----------------------------------------------------------------------------------------------
# slices


def tfds_splits(task: TfdsTask, num_examples: Mapping[str, int]) -> dict[str, str]:
    """The TFDS split strings of train800 / val200 / train800val200 / test, from the builder's split sizes.

    As task_adaptation computes them: "train%90" -> val200 = train[n:n+200] with n = 90 * |train| // 100;
    "train%60+20" -> test = train[n+v:] with n = 60 * |train| // 100 and v = 20 * |train| // 100."""

    def percent(p: int) -> int:
        if "train" not in num_examples:
            raise DataError(f"task '{task.name}': TFDS builder has no 'train' split (splits: "
                            f"{', '.join(sorted(num_examples)) or 'none'})")
        return p * num_examples["train"] // 100

    if task.val.startswith("train%"):
        n = percent(int(task.val[len("train%"):]))
        val = f"train[{n}:{n + 200}]"
    elif task.val == "validation":
        val = "validation[:200]"
    else:
        val = task.val
    if task.test.startswith("train%"):
        p, v = (int(x) for x in task.test[len("train%"):].split("+"))
        test = f"train[{percent(p) + percent(v)}:]"
    else:
        test = task.test
    train = "train[:800]"
    return {"train800": train, "val200": val, "train800val200": f"{train}+{val}", "test": test}


# ----------------------------------------------------------------------------------------------
# label maps (numpy versions of task_adaptation's preprocess functions)


def _below(thresholds: Sequence[float], value: float) -> int:
    """Index of the largest threshold strictly below ``value`` (tf.reduce_max(tf.where(thrs - v < 0)))."""
    thrs = np.asarray(thresholds, dtype=np.float32)
    hits = np.flatnonzero((thrs - np.float32(value)) < 0)
    if hits.size == 0:
        raise ValueError(f"value {value} is not above the first threshold {thresholds[0]}")
    return int(hits.max())


CLEVR_DIST_THRESHOLDS = (0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0)
KITTI_VEHICLE_THRESHOLDS = (-100.0, 8.0, 20.0, 999.0)


def task_label(task: TfdsTask, example: Mapping[str, Any], num_original: int | None = None,
               num_classes: int | None = None) -> int:
    """The VTAB label of one decoded TFDS example (numpy values)."""
    kind = task.label
    if kind == "label":
        return int(example[task.label_key])
    if kind == "clevr_count":  # 3..10 objects -> 0..7
        return int(len(example["objects"]["size"])) - 3
    if kind == "clevr_dist":  # distance (depth) of the closest object, binned
        depth = np.asarray(example["objects"]["pixel_coords"], dtype=np.float32).reshape(-1, 3)[:, 2]
        return _below(CLEVR_DIST_THRESHOLDS, float(depth.min()))
    if kind == "kitti_vehicle_dist":  # closest Car / Van / Truck (type < 3); none -> 1000 -> class 3
        objects = example["objects"]
        z = np.asarray(objects["location"], dtype=np.float32).reshape(-1, 3)[:, 2]
        vehicles = z[np.asarray(objects["type"]).reshape(-1) < 3]
        return _below(KITTI_VEHICLE_THRESHOLDS, float(np.concatenate([vehicles, [np.float32(1000.0)]]).min()))
    if kind == "bin16":  # dSprites: neighbouring values grouped into 16 classes: floor(v / (original / 16))
        assert num_original is not None
        factor = np.float32(float(num_original) / (num_classes or 16))
        return int(np.floor(np.float32(example[task.label_key]) / factor))
    raise ValueError(f"unknown label map {kind!r}")


def task_image(task: TfdsTask, example: Mapping[str, Any]) -> Image.Image:
    """The image as task_adaptation feeds it, ready to save losslessly (single channel -> mode L)."""
    arr = np.asarray(example["image"])
    if task.label == "bin16":  # dSprites images are 0/1 masks: task_adaptation multiplies by 255
        arr = arr.astype(np.uint8) * np.uint8(255)
    if arr.dtype != np.uint8:
        raise ValueError(f"image dtype {arr.dtype}, expected uint8")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return Image.fromarray(arr, "L" if arr.ndim == 2 else "RGB")


# ----------------------------------------------------------------------------------------------
# building


@dataclass
class BuildReport:
    """What :func:`build_vtab1k_from_tfds` did: per task its TFDS provenance, or its problem."""

    out_root: Path
    built: dict[str, dict] = field(default_factory=dict)  # task -> tfds provenance (builder, version, slices)
    kept: dict[str, dict] = field(default_factory=dict)  # already built by an earlier call (same builder)
    failed: dict[str, str] = field(default_factory=dict)  # task -> one line

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def provenance(self) -> dict[str, dict]:
        return {**self.kept, **self.built}


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as exc:
        raise UsageError(f"--from tfds needs TensorFlow Datasets, which is not installed ({exc}): {INSTALL_HINT}") \
            from None
    return tfds


def _manual_missing(task: TfdsTask, manual_dir: Path) -> str | None:
    if task.manual is None:
        return None
    if all((manual_dir / name).exists() for name in MANUAL_FILES[task.manual]):
        return None
    return MANUAL[task.manual].format(manual=manual_dir)


def _open_builder(tfds, task: TfdsTask, tfds_dir: Path | None, manual_dir: Path | None, prepare: bool):
    """The task's TFDS builder: a prepared one if the data folder has one, else the first that the installed
    TFDS can build (downloaded and prepared here when ``prepare``)."""
    candidates, errors = [], []
    for spec in task.builders:
        try:
            builder = tfds.builder(spec, data_dir=str(tfds_dir) if tfds_dir else None)
        except Exception as exc:  # noqa: BLE001 - TFDS raises many kinds for an unknown / unsupported version
            errors.append(f"{spec}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            continue
        if _is_prepared(builder):
            return builder
        if spec in task.generatable:
            candidates.append(builder)
    if not candidates:
        raise DataError(f"{task.name}: no TFDS builder can be loaded ({'; '.join(errors)})")
    builder = candidates[0]
    root = getattr(builder, "data_dir_root", None)
    if root is None:  # older TFDS: data_dir is <root>/<name>[/<config>]/<version>
        root = Path(str(builder.data_dir)).parents[2 if builder.builder_config else 1]
    manual = Path(manual_dir) if manual_dir else Path(str(root)) / "downloads" / "manual"
    if not prepare:
        raise DataError(f"{task.name}: {builder.info.full_name} is not prepared in {root}")
    missing = _manual_missing(task, manual)
    if missing:
        raise DataError(missing)
    config = tfds.download.DownloadConfig(manual_dir=str(manual)) if task.manual else None
    builder.download_and_prepare(download_config=config)
    return builder


def _is_prepared(builder) -> bool:
    check = getattr(builder, "is_prepared", None)  # TFDS >= 4.9.3; before: its dataset_info.json is there
    return bool(check()) if check else Path(str(builder.data_dir), "dataset_info.json").is_file()


def _num_examples(builder) -> dict[str, int]:
    return {name: int(info.num_examples) for name, info in builder.info.splits.items()}


def _provenance(task: TfdsTask, builder, slices: Mapping[str, str]) -> dict[str, Any]:
    full = str(builder.info.full_name)  # name[/config]/version
    return {"builder": full.rsplit("/", 1)[0], "version": str(builder.info.version),
            "task_adaptation_builder": task.builder, "splits": dict(slices)}


def _write_task(tfds, folder: Path, task: TfdsTask, spec: TaskSpec, builder, slices: Mapping[str, str],
                provenance: Mapping[str, Any], progress: Progress | None, workers: int) -> None:
    num_original = None
    if task.label == "bin16":
        num_original = int(builder.info.features[task.label_key].num_classes)
    expected = {"train800": 800, "val200": 200}
    lines: dict[str, list[str]] = {}
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for split in ("train800", "val200", "test"):
            (folder / "images" / split).mkdir(parents=True, exist_ok=True)
            total = expected.get(split) or _slice_size(tfds, slices[split], _num_examples(builder)) or 0
            advance = progress(f"{task.name}: {split}", total) if progress else (lambda n: None)
            ds = tfds.as_numpy(builder.as_dataset(split=slices[split], shuffle_files=False))
            pending: list[Future] = []
            out: list[str] = []
            for i, example in enumerate(ds):
                try:
                    label = task_label(task, example, num_original, spec.num_classes)
                    img = task_image(task, example)
                except (KeyError, ValueError, TypeError) as exc:
                    raise DataError(f"{task.name}: example {i} of TFDS split '{slices[split]}': {exc}") from None
                if not 0 <= label < spec.num_classes:
                    raise DataError(f"{task.name}: example {i} of TFDS split '{slices[split]}' has label {label}, "
                                    f"outside [0, {spec.num_classes})")
                rel = f"images/{split}/{i:06d}.png"
                pending.append(pool.submit(img.save, folder / rel, format="PNG"))
                out.append(f"{rel} {label}")
                if len(pending) >= 8 * max(1, workers):  # bounded: decoded images wait in memory
                    _drain(pending, advance)
            _drain(pending, advance)
            if split in expected and len(out) != expected[split]:
                raise DataError(f"{task.name}: TFDS split '{slices[split]}' of {provenance['builder']}:"
                                f"{provenance['version']} gave {len(out)} examples, expected {expected[split]}")
            if not out:
                raise DataError(f"{task.name}: TFDS split '{slices[split]}' is empty")
            lines[split] = out
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split in ("train800", "val200", "train800val200", "test"):
        (folder / f"{split}.txt").write_text("\n".join(lines[split]) + "\n", encoding="utf-8")
    counts = {s: len(v) for s, v in lines.items()}
    (folder / MARKER).write_text(json.dumps({**provenance, "images": counts}, indent=1) + "\n", encoding="utf-8")


def _drain(pending: list[Future], advance: Callable[[int], None]) -> None:
    for f in pending:
        f.result()
    advance(len(pending))
    pending.clear()


def _slice_size(tfds, split: str, num_examples: Mapping[str, int]) -> int | None:
    """How many examples a TFDS split string selects (for the progress bar only)."""
    try:
        instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(
            {k: _Len(v) for k, v in num_examples.items()})
        return sum((i.to if i.to is not None else num_examples[i.splitname]) - (i.from_ or 0) for i in instructions)
    except Exception:  # noqa: BLE001 - only a progress estimate
        return None


@dataclass(frozen=True)
class _Len:
    num_examples: int


def _existing(folder: Path) -> dict[str, Any]:
    """The provenance of a task folder this route wrote earlier; DataError for any other folder."""
    try:
        was = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        was = None
    if not isinstance(was, dict) or not (folder / "test.txt").is_file():
        raise DataError(f"{folder} exists and was not written by `prepare vtab1k --from tfds` (no {MARKER}); "
                        "move it away, or prepare into another folder")
    return {k: v for k, v in was.items() if k != "images"}


def build_vtab1k_from_tfds(out_root: Path, tfds_dir: Path | None = None, manual_dir: Path | None = None,
                           tasks: Iterable[str] | None = None, *, prepare: bool = True,
                           progress: Progress | None = None, on_task: Callable[[str, str], None] | None = None,
                           workers: int | None = None) -> BuildReport:
    """Write the VTAB-1k tasks (default all 19) into ``out_root`` from TFDS; one folder per task.

    ``tfds_dir``: TFDS's data folder (default TFDS's own, ``~/tensorflow_datasets`` or
    ``$TFDS_DATA_DIR``); ``manual_dir``: where the manual downloads lie (default
    ``<tfds_dir>/downloads/manual``). ``prepare``: download and prepare a builder that is not
    prepared yet (else that task fails). A task folder is written whole or not at all; one
    this route built earlier is kept as it is (its ``tfds.json`` says from what); any other
    existing folder of a task is refused. A task that fails is
    reported with one line and the others are still built. ``on_task(task, state)`` is told
    ``built`` / ``kept`` / ``failed``."""
    tfds = _import_tfds()
    out_root = Path(out_root)
    names = list(tasks) if tasks is not None else [t.name for t in TFDS_TASKS]
    specs = {t.name: t for t in VTAB1K}
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise UsageError(f"no TFDS recipe for task(s) {', '.join(unknown)} (tasks: "
                         f"{', '.join(t.name for t in TFDS_TASKS)})")
    out_root.mkdir(parents=True, exist_ok=True)
    workers = workers or min(8, os.cpu_count() or 1)
    report = BuildReport(out_root=out_root)
    for name in names:
        task, spec = BY_NAME[name], specs[name]
        folder = out_root / name
        try:
            if folder.exists():
                report.kept[name] = _existing(folder)
                state = "kept"
            else:
                builder = _open_builder(tfds, task, tfds_dir, manual_dir, prepare)
                slices = tfds_splits(task, _num_examples(builder))
                provenance = _provenance(task, builder, slices)
                if not atomic_folder(folder, lambda tmp, task=task, spec=spec, builder=builder, slices=slices,
                                     provenance=provenance: _write_task(tfds, tmp, task, spec, builder, slices,
                                                                       provenance, progress, workers)):
                    raise DataError(f"{folder} was written by another process meanwhile")
                report.built[name] = provenance
                state = "built"
        except DataError as exc:
            report.failed[name] = str(exc)
            state = "failed"
        except Exception as exc:  # noqa: BLE001 - TFDS / TF raise many kinds (download, checksum, decode)
            text = str(exc).strip().splitlines()
            report.failed[name] = f"{name}: {type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
            state = "failed"
        if on_task:
            on_task(name, state)
    return report



def prepare_vtab1k_from_tfds(out_root: Path, tfds_dir: Path | None = None, manual_dir: Path | None = None,
                             tasks: Sequence[str] | None = None, *, progress: Progress | None = None,
                             threads: int | None = None, on_task: Callable[[str, str], None] | None = None):
    """``peftbench prepare vtab1k --from tfds``: build the tasks (names or aliases; default all), then verify
    them and write ``out_root/MANIFEST.json`` with source tag ``tfds-png`` and, per task, the TFDS builder,
    version and slices it came from. Returns (BuildReport, the manifest writer's report or None when no
    task is ready)."""
    from .tasks import resolve_tasks

    names = [t.name for t in resolve_tasks(",".join(tasks) if tasks else "all", "vtab1k")]
    build = build_vtab1k_from_tfds(out_root, tfds_dir, manual_dir, names, progress=progress, on_task=on_task)
    ready = [n for n in names if n in build.provenance]
    if not ready:
        return build, None
    # the glue point with the manifest writer every prepare route shares (data/manifest.py)
    from .manifest import verify_and_write_manifest

    verify = verify_and_write_manifest(out_root, SOURCE_TAG, ready, suite="vtab1k", progress=progress,
                                       task_extra={n: {"tfds": build.provenance[n]} for n in ready},
                                       threads=threads)
    return build, verify
