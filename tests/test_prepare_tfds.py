"""`peftbench prepare vtab1k --from tfds`: the VTAB slices and label maps, built offline under TFDS's mock.

The slice strings of all 19 tasks are checked against a literal table (transcribed from the VTAB
authors' task_adaptation code and the VPT authors' versions). A few representative tasks are built
end to end with ``tfds.testing.mock_data``: metadata with split sizes is written for each builder
(policy USE_FILES), and a fake ``as_dataset`` yields examples whose pixels encode (split, index)
and whose annotations have known labels, so the test sees which examples each split file got.

Needs TensorFlow Datasets and TensorFlow (`pip install 'peftbench[tfds]'`); CI runs this file in
a second virtualenv that has them (see .ci/run).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tfds = pytest.importorskip("tensorflow_datasets", reason="TensorFlow Datasets is not installed: the --from tfds "
                           "tests run in CI's second virtualenv (pip install 'peftbench[tfds]')")
tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed (pip install 'peftbench[tfds]')")

from tensorflow_datasets.core import splits as splits_lib  # noqa: E402

from peftbench.data import vtab_tfds  # noqa: E402
from peftbench.data.tasks import VTAB1K  # noqa: E402
from peftbench.data.vtab_tfds import BY_NAME, TFDS_TASKS, build_vtab1k_from_tfds, task_label, tfds_splits  # noqa: E402

# task -> (TFDS builder as task_adaptation names it, train800, val200, test), for the VPT authors' versions
SLICES = {
    "cifar100": ("cifar100:3.*.*", "train[:800]", "train[45000:45200]", "test"),
    "caltech101": ("caltech101:3.*.*", "train[:800]", "train[2754:2954]", "test"),
    "dtd": ("dtd:3.*.*", "train[:800]", "validation[:200]", "test"),
    "oxford_flowers102": ("oxford_flowers102:2.*.*", "train[:800]", "validation[:200]", "test"),
    "oxford_pet": ("oxford_iiit_pet:3.*.*", "train[:800]", "train[2944:3144]", "test"),
    "svhn": ("svhn_cropped:3.*.*", "train[:800]", "train[65931:66131]", "test"),
    "sun397": ("sun397/tfds:4.*.*", "train[:800]", "validation[:200]", "test"),
    "patch_camelyon": ("patch_camelyon:2.*.*", "train[:800]", "validation[:200]", "test"),
    "eurosat": ("eurosat/rgb:2.*.*", "train[:800]", "train[16200:16400]", "train[21600:]"),
    "resisc45": ("resisc45:3.*.*", "train[:800]", "train[18900:19100]", "train[25200:]"),
    "diabetic_retinopathy": ("diabetic_retinopathy_detection/btgraham-300:3.*.*", "train[:800]", "validation[:200]",
                             "test"),
    "clevr_count": ("clevr:3.*.*", "train[:800]", "train[63000:63200]", "validation"),
    "clevr_dist": ("clevr:3.*.*", "train[:800]", "train[63000:63200]", "validation"),
    "dmlab": ("dmlab:2.0.1", "train[:800]", "validation[:200]", "test"),
    "kitti": ("kitti:3.1.0", "train[:800]", "validation[:200]", "test"),
    "dsprites_loc": ("dsprites:2.*.*", "train[:800]", "train[589824:590024]", "train[663552:]"),
    "dsprites_ori": ("dsprites:2.*.*", "train[:800]", "train[589824:590024]", "train[663552:]"),
    "smallnorb_azi": ("smallnorb:2.*.*", "train[:800]", "test[:200]", "test[50%:]"),
    "smallnorb_ele": ("smallnorb:2.*.*", "train[:800]", "test[:200]", "test[50%:]"),
}
# the size of each builder's train split in those versions (the slices computed from a percentage need it)
TRAIN_SIZES = {"cifar100": 50_000, "caltech101": 3_060, "oxford_pet": 3_680, "svhn": 73_257, "eurosat": 27_000,
               "resisc45": 31_500, "clevr_count": 70_000, "clevr_dist": 70_000, "dsprites_loc": 737_280,
               "dsprites_ori": 737_280}


def test_slices_of_all_19_tasks_match_the_vtab_table():
    assert [t.name for t in TFDS_TASKS] == [t.name for t in VTAB1K] == list(SLICES)
    for name, (builder, train800, val200, test) in SLICES.items():
        task = BY_NAME[name]
        got = tfds_splits(task, {"train": TRAIN_SIZES.get(name, 5_000), "validation": 1_000, "test": 1_000})
        assert (task.builder, got["train800"], got["val200"], got["test"]) == (builder, train800, val200, test), name
        assert got["train800val200"] == f"{train800}+{val200}", name


# ----------------------------------------------------------------------------------------------
# label maps on hand-made annotations (task_adaptation's thresholds, by hand)


def test_kitti_closest_vehicle_distance_bins():
    kitti = BY_NAME["kitti"]
    cases = [  # (object types, depths z, expected class); types 0-2 are Car / Van / Truck
        ([0], [5.0], 0), ([1], [8.0], 0), ([2], [8.01], 1), ([0], [20.0], 1), ([0], [20.5], 2),
        ([3, 0], [2.0, 30.0], 2),  # a pedestrian closer than the car does not count
        ([3, 5], [4.0, 6.0], 3),  # no vehicle at all
        ([], [], 3), ([0, 0], [21.0, 19.9], 1)]
    for types, zs, want in cases:
        loc = np.array([[0.0, 0.0, z] for z in zs], np.float32).reshape(-1, 3)
        got = task_label(kitti, {"objects": {"type": np.array(types, np.int64), "location": loc}})
        assert got == want, (types, zs)


def test_clevr_labels():
    def objects(depths):
        return {"size": np.zeros(len(depths), np.int64),
                "pixel_coords": np.array([[10.0, 20.0, d] for d in depths], np.float32)}

    count, dist = BY_NAME["clevr_count"], BY_NAME["clevr_dist"]
    assert [task_label(count, {"objects": objects([9.0] * n)}) for n in range(3, 11)] == list(range(8))
    depths = [7.0, 8.0, 8.2, 8.75, 9.25, 9.9, 12.0]
    assert [task_label(dist, {"objects": objects([d, d + 3])}) for d in depths] == [0, 0, 1, 2, 3, 4, 5]


def test_dsprites_and_smallnorb_labels():
    loc, ori = BY_NAME["dsprites_loc"], BY_NAME["dsprites_ori"]
    assert [task_label(loc, {"label_x_position": v}, 32) for v in range(32)] == [v // 2 for v in range(32)]
    assert [task_label(ori, {"label_orientation": v}, 40) for v in range(40)] == [int(v / 2.5) for v in range(40)]
    assert task_label(ori, {"label_orientation": 39}, 40) == 15
    azi, ele = BY_NAME["smallnorb_azi"], BY_NAME["smallnorb_ele"]
    example = {"label_azimuth": np.int64(17), "label_elevation": np.int64(4), "label_category": np.int64(1)}
    assert (task_label(azi, example), task_label(ele, example)) == (17, 4)


# ----------------------------------------------------------------------------------------------
# end to end under tfds.testing.mock_data

SPLIT_CODE = {"train": 0, "validation": 1, "test": 2}
BITS = 22


def _encode(split: str, index: int) -> int:
    return SPLIT_CODE[split] * 1_000_000 + index


def _decode_png(path: Path) -> tuple[str, int]:
    row = np.asarray(Image.open(path).convert("L"))[0, :BITS] > 127
    value = int(sum(int(b) << k for k, b in enumerate(row)))
    code, index = divmod(value, 1_000_000)
    return {v: k for k, v in SPLIT_CODE.items()}[code], index


def _image(builder_name: str, split: str, index: int) -> np.ndarray:
    shape = {"cifar100": (32, 32, 3), "smallnorb": (96, 96, 1), "dsprites": (64, 64, 1)}.get(builder_name,
                                                                                              (12, 28, 3))
    high = 1 if builder_name == "dsprites" else 255  # dSprites images are 0/1 masks
    img = np.zeros(shape, np.uint8)
    value = _encode(split, index)
    for k in range(BITS):
        img[0, k, :] = high * ((value >> k) & 1)
    return img


CLEVR_DEPTHS = [7.0, 8.0, 8.2, 8.75, 9.25, 9.9, 12.0]  # closest-object classes 0 0 1 2 3 4 5
KITTI_CASES = [([0], [5.0]), ([1], [8.0]), ([2], [8.5]), ([0, 3], [30.0, 2.0]), ([3], [4.0]), ([0, 0], [21.0, 19.9])]
KITTI_LABELS = [0, 0, 1, 2, 3, 1]


def _example(builder_name: str, split: str, index: int) -> dict:
    ex: dict = {"image": _image(builder_name, split, index)}
    if builder_name == "clevr":
        n = 3 + index % 8
        d = CLEVR_DEPTHS[index % 7]
        ex["objects"] = {"size": np.zeros(n, np.int64),
                         "pixel_coords": np.array([[1.0, 2.0, d + k] for k in range(n)], np.float32)}
    elif builder_name == "kitti":
        types, zs = KITTI_CASES[index % 6]
        ex["objects"] = {"type": np.array(types, np.int64),
                         "location": np.array([[0.5, 1.0, z] for z in zs], np.float32)}
    elif builder_name == "smallnorb":
        ex.update(label_azimuth=np.int64(index % 18), label_elevation=np.int64(index % 9))
    elif builder_name == "dsprites":
        ex.update(label_x_position=np.int64(index % 32), label_orientation=np.int64(index % 40))
    else:
        ex["label"] = np.int64(index % 100)
    return ex


def _expected_label(task: str, split: str, index: int) -> int:
    if task == "cifar100":
        return index % 100
    if task == "clevr_count":
        return index % 8
    if task == "clevr_dist":
        return [0, 0, 1, 2, 3, 4, 5][index % 7]
    if task == "kitti":
        return KITTI_LABELS[index % 6]
    if task == "smallnorb_azi":
        return index % 18
    if task == "dsprites_loc":
        return (index % 32) // 2
    raise AssertionError(task)


def _signature(value):
    if isinstance(value, dict):
        return {k: _signature(v) for k, v in value.items()}
    value = np.asarray(value)
    return tf.TensorSpec(shape=[None] * value.ndim, dtype=tf.as_dtype(value.dtype))


REQUESTED: list[tuple[str, str]] = []  # (builder, split string) of every as_dataset call


def _fake_as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False, **kwargs):
    """Examples of the absolute ranges that ``split`` selects, with TFDS's own slice arithmetic."""
    REQUESTED.append((self.name, str(split)))
    ranges = tfds.core.ReadInstruction.from_spec(split).to_absolute(self.info.splits)
    keys = []
    for r in ranges:
        stop = r.to if r.to is not None else self.info.splits[r.splitname].num_examples
        keys += [(r.splitname, i) for i in range(r.from_ or 0, stop)]
    name = self.name
    first = _example(name, "train", 0)
    return tf.data.Dataset.from_generator(lambda: (_example(name, s, i) for s, i in keys),
                                          output_signature=_signature(first))


def _metadata(root: Path, spec: str, sizes: dict[str, int]) -> None:
    """dataset_info.json with these split sizes, where TFDS looks for the prepared builder."""
    builder = tfds.builder(spec, data_dir=str(root))
    builder.info.set_splits(splits_lib.SplitDict(
        [splits_lib.SplitInfo(name=n, shard_lengths=[k], num_bytes=0) for n, k in sizes.items()]))
    Path(builder.data_dir).mkdir(parents=True, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)


SIZES = {  # train as in the real builders where a percentage slice needs it; test splits kept small
    "cifar100:3.*.*": {"train": 50_000, "test": 30},
    "clevr:3.*.*": {"train": 70_000, "validation": 40, "test": 10},
    "smallnorb:2.*.*": {"train": 24_300, "test": 460},
    "dsprites:2.*.*": {"train": 2_000},
    "kitti:3.2.0": {"train": 900, "validation": 250, "test": 711},
}


@pytest.fixture
def mock_tfds(tmp_path):
    root = tmp_path / "tfds_meta"
    for spec, sizes in SIZES.items():
        _metadata(root, spec, sizes)
    REQUESTED.clear()
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(root),
                                as_dataset_fn=_fake_as_dataset):
        yield root


def _lines(folder: Path, split: str) -> list[tuple[str, int]]:
    out = []
    for line in (folder / f"{split}.txt").read_text().splitlines():
        rel, label = line.rsplit(" ", 1)
        out.append((rel, int(label)))
    return out


def _check_task(folder: Path, task: str, want: dict[str, list[tuple[str, int]]]) -> None:
    """Each split file lists images/<split>/NNNNNN.png in order, each from the wanted (split, index), with its
    label; train800val200 is train800 then val200."""
    for split, keys in want.items():
        lines = _lines(folder, split)
        assert [rel for rel, _ in lines] == [f"images/{split}/{i:06d}.png" for i in range(len(keys))], split
        assert [_decode_png(folder / rel) for rel, _ in lines] == keys, split
        assert [label for _, label in lines] == [_expected_label(task, s, i) for s, i in keys], split
    assert _lines(folder, "train800val200") == _lines(folder, "train800") + _lines(folder, "val200")
    assert sorted(p.name for p in (folder / "images").iterdir()) == ["test", "train800", "val200"]
    for split, keys in want.items():
        assert len(list((folder / "images" / split).glob("*.png"))) == len(keys)


def test_build_cifar100_smallnorb_dsprites(mock_tfds, tmp_path):
    out = tmp_path / "vtab"
    bars: dict[str, list[int]] = {}  # label -> [total, advanced]

    def progress(label: str, total: int):
        bars[label] = [total, 0]
        return lambda n: bars[label].__setitem__(1, bars[label][1] + n)

    report = build_vtab1k_from_tfds(out, tfds_dir=tmp_path / "ignored", tasks=["cifar100", "smallnorb_azi",
                                                                              "dsprites_loc"], progress=progress)
    assert report.ok, report.failed
    assert bars["cifar100: val200"] == [200, 200] and bars["smallnorb_azi: test"] == [230, 230]
    assert bars["dsprites_loc: test"] == [200, 200]
    assert sorted(report.built) == ["cifar100", "dsprites_loc", "smallnorb_azi"]
    train = [("train", i) for i in range(800)]
    _check_task(out / "cifar100", "cifar100", {"train800": train, "val200": [("train", i) for i in range(45000, 45200)],
                                               "test": [("test", i) for i in range(30)]})
    # SmallNORB: val200 = the first 200 of TFDS's test, test = its second half (230 of 460 here)
    _check_task(out / "smallnorb_azi", "smallnorb_azi", {"train800": train,
                                                         "val200": [("test", i) for i in range(200)],
                                                         "test": [("test", i) for i in range(230, 460)]})
    # dSprites: 80 / 10 / 10 of train: val200 = train[1600:1800], test = train[1800:] for 2000 examples
    _check_task(out / "dsprites_loc", "dsprites_loc", {"train800": train,
                                                       "val200": [("train", i) for i in range(1600, 1800)],
                                                       "test": [("train", i) for i in range(1800, 2000)]})
    img = Image.open(out / "dsprites_loc" / "images" / "train800" / "000003.png")
    assert img.mode == "L" and img.size == (64, 64) and set(np.unique(np.asarray(img))) == {0, 255}
    assert Image.open(out / "cifar100" / "images" / "test" / "000000.png").mode == "RGB"
    assert report.built["cifar100"] == {
        "builder": "cifar100", "version": "3.0.2", "task_adaptation_builder": "cifar100:3.*.*",
        "splits": {"train800": "train[:800]", "val200": "train[45000:45200]",
                   "train800val200": "train[:800]+train[45000:45200]", "test": "test"}}
    assert ("cifar100", "train[45000:45200]") in REQUESTED and ("smallnorb", "test[50%:]") in REQUESTED
    marker = json.loads((out / "smallnorb_azi" / vtab_tfds.MARKER).read_text())
    assert marker["images"] == {"train800": 800, "val200": 200, "test": 230, "train800val200": 1000}


def test_build_kitti_and_clevr(mock_tfds, tmp_path):
    out = tmp_path / "vtab"
    seen = []
    report = build_vtab1k_from_tfds(out, tasks=["kitti", "clevr_count", "clevr_dist"],
                                    on_task=lambda task, state: seen.append((task, state)))
    assert report.ok, report.failed
    assert seen == [("kitti", "built"), ("clevr_count", "built"), ("clevr_dist", "built")]
    train = [("train", i) for i in range(800)]
    # kitti: task_adaptation's kitti:3.1.0 is not prepared here, so the prepared 3.2.0 is used
    assert report.built["kitti"]["version"] == "3.2.0"
    assert report.built["kitti"]["task_adaptation_builder"] == "kitti:3.1.0"
    _check_task(out / "kitti", "kitti", {"train800": train, "val200": [("validation", i) for i in range(200)],
                                         "test": [("test", i) for i in range(711)]})
    for task in ("clevr_count", "clevr_dist"):  # CLEVR: val200 = train[63000:63200], test = TFDS validation
        _check_task(out / task, task, {"train800": train, "val200": [("train", i) for i in range(63000, 63200)],
                                       "test": [("validation", i) for i in range(40)]})
    assert {label for _, label in _lines(out / "kitti", "train800")} == {0, 1, 2, 3}


def test_existing_folders_kept_or_refused(mock_tfds, tmp_path):
    out = tmp_path / "vtab"
    assert build_vtab1k_from_tfds(out, tasks=["cifar100"]).ok
    before = (out / "cifar100" / "test.txt").stat().st_mtime_ns
    foreign = out / "smallnorb_azi"
    foreign.mkdir()
    (foreign / "test.txt").write_text("mine 0\n")
    report = build_vtab1k_from_tfds(out, tasks=["cifar100", "smallnorb_azi"])
    assert list(report.kept) == ["cifar100"] and not report.built
    assert "smallnorb_azi" in report.failed and "was not written by" in report.failed["smallnorb_azi"]
    assert (out / "cifar100" / "test.txt").stat().st_mtime_ns == before
    assert (foreign / "test.txt").read_text() == "mine 0\n"
    assert sorted(p.name for p in out.iterdir()) == ["cifar100", "smallnorb_azi"]  # no temporary folder left


def test_manual_downloads_named_with_their_files(mock_tfds, tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    report = build_vtab1k_from_tfds(tmp_path / "vtab", manual_dir=manual,
                                    tasks=["diabetic_retinopathy", "resisc45", "cifar100"])
    assert list(report.built) == ["cifar100"]  # the others still built
    dr, resisc = report.failed["diabetic_retinopathy"], report.failed["resisc45"]
    assert "\n" not in dr and "\n" not in resisc
    assert "Kaggle" in dr and f"{manual}/trainLabels.csv" in dr and f"{manual}/train/" in dr
    assert f"{manual}/NWPU-RESISC45/" in resisc and ".rar" in resisc
    assert not (tmp_path / "vtab" / "resisc45").exists()


def test_bad_label_fails_the_task_and_writes_nothing(mock_tfds, tmp_path, monkeypatch):
    monkeypatch.setattr(vtab_tfds, "KITTI_VEHICLE_THRESHOLDS", (-100.0, 0.0, 8.0, 20.0, 999.0))  # 5 bins
    report = build_vtab1k_from_tfds(tmp_path / "vtab", tasks=["kitti"])
    assert report.failed["kitti"] == ("kitti: example 4 of TFDS split 'train[:800]' has label 4, outside [0, 4)")
    assert list((tmp_path / "vtab").iterdir()) == []  # the half-written task folder is gone



def test_cli_prepare_from_tfds_writes_the_manifest(mock_tfds, tmp_path, capsys):
    pytest.importorskip("peftbench.data.manifest", reason="the shared manifest writer (data/manifest.py) is not "
                        "on this branch")
    from peftbench.cli import main

    out, manual = tmp_path / "vtab", tmp_path / "manual"
    manual.mkdir()
    argv = ["prepare", "vtab1k", "--from", "tfds", "--out", str(out), "--tfds-dir", str(tmp_path / "tfds"),
            "--manual-dir", str(manual), "--tasks", "kitti,resisc45"]
    assert main(argv) == 1  # resisc45's manual download is missing: named, kitti still prepared
    cap = capsys.readouterr()
    assert "Traceback" not in cap.out + cap.err
    assert "resisc45 needs a manual download" in cap.err and f"{manual}/NWPU-RESISC45/" in cap.err
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert list(manifest["tasks"]) == ["kitti"]
    entry = manifest["tasks"]["kitti"]
    assert entry["source"] == "tfds-png"
    assert entry["extra"]["tfds"]["builder"] == "kitti" and entry["extra"]["tfds"]["version"] == "3.2.0"
    assert entry["extra"]["tfds"]["splits"]["val200"] == "validation[:200]"
    assert {s: v["images"] for s, v in entry["splits"].items()} == {"train800": 800, "val200": 200,
                                                                    "train800val200": 1000, "test": 711}
    # again, kitti only: the folder is kept as built, the manifest entry unchanged
    assert main(argv[:-1] + ["kitti"]) == 0
    assert "kept kitti" in capsys.readouterr().out
    assert json.loads((out / "MANIFEST.json").read_text())["tasks"]["kitti"]["sha256"] == entry["sha256"]
    assert main(["prepare", "vtab1k", "--from", "tfds", "--tasks", "kitti"]) == 2  # no --out
    assert capsys.readouterr().err.strip() == ("error: prepare vtab1k --from tfds needs --out ROOT (the folder to "
                                               "build the tasks in)")
