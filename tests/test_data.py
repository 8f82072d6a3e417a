from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from peftbench.data import images as images_mod
from peftbench.data.images import Batches, load_split, resize_like_pil
from peftbench.data.splits import read_task_lists
from peftbench.data.synthetic import write_task
from peftbench.data.tasks import VTAB1K, resolve_tasks
from peftbench.errors import DataError, UsageError

CIFAR = next(t for t in VTAB1K if t.name == "cifar100")
EUROSAT = next(t for t in VTAB1K if t.name == "eurosat")


def test_task_table_matches_reference():
    assert len(VTAB1K) == 19
    assert sum(t.test_size for t in VTAB1K) == 387_904  # the per-task test sizes of the reference table
    assert [t.group for t in VTAB1K].count("natural") == 7
    assert [t.group for t in VTAB1K].count("specialized") == 4
    assert [t.group for t in VTAB1K].count("structured") == 8
    assert {t.name: t.num_classes for t in VTAB1K}["sun397"] == 397


def test_resolve_tasks_aliases_and_errors():
    assert [t.name for t in resolve_tasks("cifar,oxford_iiit_pet")] == ["cifar100", "oxford_pet"]
    assert len(resolve_tasks("all")) == 19
    with pytest.raises(UsageError, match="unknown task 'cifar10'.*did you mean.*'cifar100'"):
        resolve_tasks("cifar10")


def test_reader_tolerates_crlf_blank_lines_and_modes(split_sizes, vtab_root):
    lists = read_task_lists(vtab_root, CIFAR)
    assert lists.folder.name == "cifar"  # alias folder
    assert len(lists.splits["train800val200"]) == split_sizes["train800"] + split_sizes["val200"]
    # blank lines are fine
    f = lists.folder / "test.txt"
    f.write_bytes(b"\r\n" + f.read_bytes() + b"\r\n\r\n")
    assert len(read_task_lists(vtab_root, CIFAR).splits["test"]) == split_sizes["test"]
    assert any("train800 24 (expected 800)" in w for w in lists.warnings)  # subsets: a warning, not an error


def _problems(root, task=EUROSAT) -> str:
    with pytest.raises(DataError) as err:
        read_task_lists(root, task)
    return str(err.value)


def test_preflight_lists_every_problem_with_file_and_line(vtab_root):
    folder = vtab_root / "eurosat"
    lines = (folder / "test.txt").read_text().splitlines()
    lines[0] = "images/test/missing.png 1"
    lines[1] = lines[1].rsplit(" ", 1)[0] + " 10"  # 10 classes: label 10 is out of range
    lines[2] = "../../etc/passwd 1"
    lines[3] = "/etc/passwd 1"
    (folder / "test.txt").write_text("\n".join(lines) + "\n")
    msg = _problems(vtab_root)
    assert f"{folder / 'test.txt'}:1: missing image images/test/missing.png" in msg
    assert f"{folder / 'test.txt'}:2: label 10 outside [0, 10)" in msg
    assert f"{folder / 'test.txt'}:3: image path '../../etc/passwd' leaves the task folder" in msg
    assert f"{folder / 'test.txt'}:4: image path '/etc/passwd' leaves the task folder" in msg


def test_preflight_missing_split_file(vtab_root):
    (vtab_root / "eurosat" / "val200.txt").unlink()
    assert "val200.txt: missing split file" in _problems(vtab_root)


def test_preflight_union_and_test_overlap(vtab_root):
    folder = vtab_root / "eurosat"
    combined = (folder / "train800val200.txt").read_text().splitlines()
    (folder / "train800val200.txt").write_text("\n".join(combined[:-1]) + "\n")
    test = (folder / "test.txt").read_text().splitlines()
    (folder / "test.txt").write_text("\n".join(test + [combined[0]]) + "\n")
    msg = _problems(vtab_root)
    assert "train800 ∪ val200 differs from train800val200" in msg
    assert "train800 overlaps the test split" in msg


def test_preflight_missing_task_folder(tmp_path):
    with pytest.raises(DataError, match="no folder for task 'eurosat'"):
        read_task_lists(tmp_path, EUROSAT)


def test_undecodable_image_named_with_line(vtab_root, tmp_path):
    lists = read_task_lists(vtab_root, EUROSAT)
    bad = lists.splits["test"][2]
    bad.path.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"test.txt:3: cannot decode image"):
        load_split(lists.splits["test"], (16, 16), "bicubic", str(lists.folder / "test.txt"), tmp_path)


def test_decode_modes_and_cache_reuse(vtab_root, tmp_path, monkeypatch):
    lists = read_task_lists(vtab_root, CIFAR)
    entries = lists.splits["train800val200"]
    data = load_split(entries, (32, 32), "bicubic", "x", tmp_path)
    assert data.images.shape == (len(entries), 32, 32, 3) and data.images.dtype == np.uint8
    # grayscale / RGBA / palette images all became RGB and match PIL's own conversion of RGB sources
    ref = np.asarray(Image.open(entries[0].path).convert("RGB"))
    assert np.array_equal(data.images[0], ref)

    def no_decode(*a, **k):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(images_mod, "_decode", no_decode)
    again = load_split(entries, (32, 32), "bicubic", "x", tmp_path)
    assert again.checksum == data.checksum and np.array_equal(again.images, data.images)
    # changing one image's bytes changes the key: the cache is not trusted blindly
    Image.new("RGB", (32, 32), (1, 2, 3)).save(entries[0].path)
    monkeypatch.undo()
    changed = load_split(entries, (32, 32), "bicubic", "x", tmp_path)
    assert changed.checksum != data.checksum


def test_large_images_resized_once_small_kept_native(tmp_path):
    write_task(tmp_path / "big", 3, {"train800": 4, "val200": 2, "test": 3}, hw=(40, 48))
    task = type(EUROSAT)("big", 3, "natural", 3, "48x40")
    lists = read_task_lists(tmp_path, task)
    big = load_split(lists.splits["test"], (32, 32), "bicubic", "x", tmp_path / "c")
    assert big.images.shape[1:3] == (32, 32)
    ref = np.asarray(Image.open(lists.splits["test"][0].path).convert("RGB").resize((32, 32), Image.BICUBIC))
    assert np.array_equal(big.images[0], ref)  # exactly the reference PIL pipeline
    small = load_split(lists.splits["test"], (64, 64), "bicubic", "x", tmp_path / "c")
    assert small.images.shape[1:3] == (40, 48)  # stored native, resized per batch on the device
    # smaller in area but wider than the input: PIL resizes it once, the device never downsamples
    wide = load_split(lists.splits["test"], (64, 44), "bicubic", "x", tmp_path / "c")
    assert wide.images.shape[1:3] == (64, 44)
    ref = np.asarray(Image.open(lists.splits["test"][0].path).convert("RGB").resize((44, 64), Image.BICUBIC))
    assert np.array_equal(wide.images[0], ref)


def test_batches_normalise_and_resize_on_device(tmp_path):
    write_task(tmp_path / "t", 3, {"train800": 4, "val200": 2, "test": 5}, hw=(16, 16))
    task = type(EUROSAT)("t", 3, "natural", 5, "16x16")
    data = load_split(read_task_lists(tmp_path, task).splits["test"], (32, 32), "bicubic", "x", tmp_path / "c")
    b = Batches(data, (32, 32), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic", torch.device("cpu"))
    x, y = b.batch(np.arange(5))
    assert x.shape == (5, 3, 32, 32) and y.tolist() == data.labels.tolist()
    assert x.min() >= -1.0 and x.max() <= 1.0
    # against the reference PIL pipeline: resize 32 bicubic -> tensor -> normalise
    ref = np.asarray(Image.fromarray(np.asarray(data.images[0])).resize((32, 32), Image.BICUBIC), dtype=np.float32)
    ref = torch.from_numpy(ref).permute(2, 0, 1) / 127.5 - 1.0
    assert (x[0] - ref).abs().max() <= 2 / 127.5 + 1e-6  # within 2/255 of PIL (its fixed-point rounding)
    batches = list(b.iterate(2, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert sum(len(yb) for _, yb in batches) == 5


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])  # nearest: PIL and torch break ties apart
@pytest.mark.parametrize("size", [(48, 48), (224, 224), (40, 56), (16, 64)])
def test_device_resize_matches_pil_on_noisy_images(interpolation, size):
    """Worst case for a resize: uniform noise, where bicubic overshoot is largest (PIL clips after each pass)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4, 16, 32, 3), dtype=np.uint8)
    x = resize_like_pil(torch.from_numpy(images).permute(0, 3, 1, 2).float(), size, interpolation)
    pil = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[interpolation]
    ref = np.stack([np.asarray(Image.fromarray(img).resize(size[::-1], pil)) for img in images])
    diff = np.abs(x.permute(0, 2, 3, 1).numpy() - ref.astype(np.float32))
    assert diff.max() <= 2, diff.max()  # grey levels of 255 (PIL's fixed-point rounding)
    assert diff.mean() < 0.25


def test_content_checks_flag_a_copied_test_image_and_a_relabelled_image(split_sizes, vtab_root, tmp_path):
    """Paths differ, bytes do not: a training image copied into test, and one image under two labels."""
    import shutil

    from peftbench.sweep.request import Reporter, SweepRequest
    from peftbench.sweep.run import run_sweep

    folder = vtab_root / "eurosat"
    train = (folder / "train800.txt").read_text().splitlines()
    first, second = (line.split() for line in train[:2])
    shutil.copy(folder / first[0], folder / "images/test/copy.png")
    shutil.copy(folder / second[0], folder / "images/train800/twin.png")
    relabel = f"images/train800/twin.png {(int(second[1]) + 1) % 10}"
    with open(folder / "test.txt", "a") as f:
        f.write(f"images/test/copy.png {first[1]}\n")
    for name in ("train800.txt", "train800val200.txt"):
        with open(folder / name, "a") as f:
            f.write(relabel + "\n")
    n_test = split_sizes["test"] + 1
    n_combined = split_sizes["train800"] + split_sizes["val200"] + 1

    class Messages(Reporter):
        def __init__(self):
            self.lines = []

        def message(self, text):
            self.lines.append(text)

    said = Messages()
    run_sweep(SweepRequest(methods=["linear"], tasks="eurosat", suite="vtab1k", data_root=vtab_root,
                           out=tmp_path / "runs", backbone="test_vit", weights="none", img_size=32,
                           sets=["epochs=1", "bench_steps=0"]), said)
    text = "\n".join(said.lines)
    combined = folder / "train800val200.txt"
    assert (f"{folder / 'test.txt'}:{n_test} (images/test/copy.png) is the same image as "
            f"{combined}:1 ({first[0]})") in text
    assert (f"{combined}:2 ({second[0]}) label {second[1]} and {combined}:{n_combined} "
            f"(images/train800/twin.png) label {(int(second[1]) + 1) % 10}: the same image") in text


def _png_header(path, width: int, height: int) -> None:
    """A PNG that claims width × height pixels in a few dozen bytes (the header is all PIL reads first)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
                     + chunk(b"IEND", b""))


def test_decompression_bomb_is_a_one_line_error_naming_file_and_line(split_sizes, vtab_root, tmp_path, capsys):
    from peftbench.cli import main

    folder = vtab_root / "eurosat"
    _png_header(folder / "images/test/bomb.png", 20_000, 20_000)
    with open(folder / "test.txt", "a") as f:
        f.write("images/test/bomb.png 3\n")
    argv = ["run", "--suite", "vtab1k", "--tasks", "eurosat", "--methods", "linear", "--data-root", str(vtab_root),
            "--backbone", "test_vit", "--weights", "none", "--img-size", "32", "--out", str(tmp_path / "runs"),
            "--no-report"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {folder / 'test.txt'}:{split_sizes['test'] + 1}: image images/test/bomb.png is "
                          "20000×20000 = 400,000,000 pixels, over the limit of 180,000,000")
    assert "\n" not in err and "--max-image-pixels" in err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.json"))


def test_pixel_limit_is_the_documented_one_and_can_be_raised(split_sizes, vtab_root, tmp_path):
    from peftbench.data.limits import DEFAULT_MAX_IMAGE_PIXELS

    assert 12_000 * 12_000 <= DEFAULT_MAX_IMAGE_PIXELS < 20_000 * 20_000  # large scans pass, bombs do not
    lists = read_task_lists(vtab_root, EUROSAT)  # 16 × 16 images
    where = str(lists.folder / "test.txt")
    with pytest.raises(DataError, match=r"test.txt:1: image .* is 16×16 = 256 pixels, over the limit of 255"):
        load_split(lists.splits["test"][:1], (16, 16), "bicubic", where, tmp_path, max_pixels=255)
    loaded = load_split(lists.splits["test"], (16, 16), "bicubic", where, tmp_path, max_pixels=256)
    assert len(loaded) == split_sizes["test"]


def test_pixel_limit_above_pils_own_is_honoured(tmp_path, monkeypatch):
    """PIL refuses images above twice its MAX_IMAGE_PIXELS by itself; a raised limit must win."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL would raise above 200 pixels
    write_task(tmp_path / "t", 3, {"train800": 1, "val200": 1, "test": 2}, hw=(16, 16))
    lists = read_task_lists(tmp_path, type(EUROSAT)("t", 3, "natural", 2, "16x16"))
    data = load_split(lists.splits["test"], (16, 16), "bicubic", "x", tmp_path / "c", max_pixels=256)
    assert len(data) == 2 and Image.MAX_IMAGE_PIXELS == 100  # and PIL's own setting is put back
