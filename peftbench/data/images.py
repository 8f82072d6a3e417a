"""Decode each image once, keep it as uint8, and turn index batches into model inputs on the device.

A split is stored as one ``N×H×W×3`` uint8 array: at native size when every image of the
split has the same size and that is no larger than the model's input in either dimension (small VTAB
images such as 32×32 CIFAR), otherwise resized once with PIL to the input size (exactly the reference
pipeline). The array lives in a cache file keyed by the list and the images' bytes, so a
second process (or the next sweep) skips decoding and memory-maps it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..atomic import atomic_write
from ..errors import DataError
from .limits import DEFAULT_MAX_IMAGE_PIXELS, pil_bomb_check_off
from .splits import Entry

CACHE_VERSION = 1
_PIL_INTERP = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
               "lanczos": Image.LANCZOS}


@dataclass
class SplitData:
    images: np.ndarray  # uint8, N×H×W×3 (possibly memory-mapped)
    labels: np.ndarray  # int64, N
    checksum: str  # of the list and every image's bytes
    digests: tuple[str, ...] = ()  # of each image's bytes, in list order (for the content checks)

    def __len__(self) -> int:
        return len(self.labels)


def default_cache_dir() -> Path:
    base = os.environ.get("PEFTBENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "peftbench")
    return Path(base)


def _digest(path: Path) -> tuple[str, bytes]:
    data = path.read_bytes()
    return hashlib.blake2b(data, digest_size=16).hexdigest(), data


def _decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            # composite transparency onto black rather than exposing undefined colour values
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return img.convert("RGB")


def _raise_if_any(problems: list[str]) -> None:
    """One problem: one line; several: all of them, so the user fixes them in one go."""
    if len(problems) == 1:
        raise DataError(problems[0])
    if problems:
        raise DataError(f"{len(problems)} unusable images:\n  " + "\n  ".join(sorted(problems)))




def load_split(entries: Sequence[Entry], target: tuple[int, int], interpolation: str, where: str,
               cache_dir: Path | None = None, advance: Callable[[int], None] | None = None,
               threads: int | None = None, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> SplitData:
    """Decode (or load from cache) the images of one split; ``where`` names its list file in errors.

    An image over ``max_pixels`` pixels (read from its header) is an error before anything is decoded.
    """
    with pil_bomb_check_off():
        return _load_split(entries, target, interpolation, where, cache_dir, advance, threads, max_pixels)


def _load_split(entries: Sequence[Entry], target: tuple[int, int], interpolation: str, where: str,
                cache_dir: Path | None, advance: Callable[[int], None] | None, threads: int | None,
                max_pixels: int) -> SplitData:
    if not entries:
        raise DataError(f"{where}: no images")
    threads = threads or min(16, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(threads) as pool:
        digests = list(pool.map(lambda e: _digest(e.path)[0], entries))
    key_src = json.dumps({"v": CACHE_VERSION, "target": list(target), "interp": interpolation,
                          "items": [[e.rel, e.label, d] for e, d in zip(entries, digests)]})
    checksum = hashlib.sha256(key_src.encode()).hexdigest()
    labels = np.asarray([e.label for e in entries], dtype=np.int64)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    img_file = cache_dir / f"{checksum[:32]}.u8.npy"
    if img_file.is_file():
        try:
            images = np.load(img_file, mmap_mode="r")
            if images.shape[0] == len(entries) and images.dtype == np.uint8:
                if advance:
                    advance(len(entries))
                return SplitData(images=images, labels=labels, checksum=checksum, digests=tuple(digests))
        except (ValueError, OSError):
            pass  # a damaged cache file is rebuilt below
    problems: list[str] = []

    def size_of(e: Entry) -> tuple[int, int] | None:
        try:
            with Image.open(e.path) as img:
                width, height = img.size
        except (UnidentifiedImageError, OSError) as exc:
            problems.append(f"{where}:{e.line}: cannot decode image {e.rel} ({type(exc).__name__})")
            return None
        if width * height > max_pixels:
            problems.append(f"{where}:{e.line}: image {e.rel} is {width}×{height} = {width * height:,} pixels, "
                            f"over the limit of {max_pixels:,} (a decompression bomb?); if it is genuine, "
                            "raise the limit with --max-image-pixels")
            return None
        return height, width

    with ThreadPoolExecutor(threads) as pool:
        sizes = list(pool.map(size_of, entries))
    _raise_if_any(problems)
    distinct = set(sizes)
    native = distinct.pop() if len(distinct) == 1 else None
    if native is not None and native[0] <= target[0] and native[1] <= target[1]:  # the device only upsamples
        out_hw = native
    else:
        out_hw = target
    cache_dir.mkdir(parents=True, exist_ok=True)
    resample = _PIL_INTERP.get(interpolation, Image.BICUBIC)

    def decode_into(images: np.ndarray, i: int) -> None:
        e = entries[i]
        try:
            img = _decode(e.path.read_bytes())
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            problems.append(f"{where}:{e.line}: cannot decode image {e.rel} ({type(exc).__name__})")
            return
        if (img.height, img.width) != out_hw:
            img = img.resize((out_hw[1], out_hw[0]), resample=resample)
        images[i] = np.asarray(img, dtype=np.uint8)
        if advance:
            advance(1)

    def write(tmp: Path) -> None:
        images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(entries), *out_hw, 3))
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(partial(decode_into, images), range(len(entries))))
        _raise_if_any(problems)
        images.flush()
        del images  # close the memory map before the rename

    atomic_write(img_file, write, durable=False)  # a cache: decoded again if lost
    return SplitData(images=np.load(img_file, mmap_mode="r"), labels=labels, checksum=checksum,
                     digests=tuple(digests))


def resize_like_pil(x: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """Resize float images holding 0–255 values (N×3×H×W) the way PIL's ``Image.resize`` does.

    PIL resamples in two passes, horizontal then vertical, with its antialiased kernels
    (bicubic a = -0.5, as torch's ``antialias=True`` kernels), and rounds and clips to uint8
    after each pass. Doing the same here matters for noisy, high-contrast images: a single
    unclipped 2-D pass lets the bicubic overshoot of the first pass through and differs from
    PIL by up to 15/255 there; two clipped passes stay within 2/255 (tests/test_data.py).
    """
    # nearest: torch's "nearest-exact" uses PIL's pixel centres, but the two still break ties apart
    mode = "nearest-exact" if interpolation == "nearest" else interpolation
    kwargs = {"mode": mode} if mode == "nearest-exact" else {"mode": mode, "antialias": True, "align_corners": False}
    height, width = size
    if x.shape[-1] != width:
        x = F.interpolate(x, size=(x.shape[-2], width), **kwargs).round_().clamp_(0.0, 255.0)
    if x.shape[-2] != height:
        x = F.interpolate(x, size=(height, width), **kwargs).round_().clamp_(0.0, 255.0)
    return x


class Batches:
    """Index batches of a split as normalised float tensors on ``device`` (resize done there too)."""

    def __init__(self, data: SplitData, target: tuple[int, int], mean: Sequence[float], std: Sequence[float],
                 interpolation: str, device: torch.device, pin: bool | None = None):
        self.data = data
        self.target = target
        self.device = device
        self.interpolation = interpolation if interpolation in ("bicubic", "bilinear", "nearest") else "bicubic"
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255.0
        self.pin = device.type == "cuda" if pin is None else pin
        self.labels = torch.from_numpy(np.ascontiguousarray(data.labels))

    def to_input(self, uint8_nhwc: torch.Tensor) -> torch.Tensor:
        x = uint8_nhwc.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        if tuple(x.shape[-2:]) != self.target:
            x = resize_like_pil(x, self.target, self.interpolation)
        return (x - self.mean) / self.std

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        imgs = torch.from_numpy(np.ascontiguousarray(self.data.images[idx]))
        labels = self.labels[idx]
        if self.pin:
            imgs, labels = imgs.pin_memory(), labels.pin_memory()
        return self.to_input(imgs), labels.to(self.device, non_blocking=True)

    def iterate(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                pad_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches in (shuffled) order; ``pad_last`` fills a short last batch up to ``batch_size`` by
        repeating its own samples (real images: no odd values reach the model), for static shapes."""
        n = len(self.data)
        order = torch.randperm(n, generator=generator).numpy() if shuffle else np.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield self.batch(np.resize(idx, batch_size) if pad_last else idx)
