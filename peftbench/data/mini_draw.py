"""Drawing the mini suite's images: integer primitives and one generator per task.

Every random draw comes from the ``numpy`` Generator passed in and pixels are computed with
integer arithmetic (rotations use a fixed integer cosine table, shapes are rasterised by PIL at
4x and averaged with integer sums), so the pixels do not depend on thread counts or on the
platform's maths library. ``mini.py`` turns these into the suite on disk.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..errors import DataError

SIZE = 32  # image side in pixels
SS = 4  # supersampling factor for anti-aliased shapes
TRAINVAL, TEST_SIZE = 1000, 600


# ---- integer drawing primitives ----------------------------------------------------------

# cos/sin of whole degrees in units of 1/65536: computed once and rounded, so that no pixel
# depends on the last bit of the platform's libm.
COS = tuple(round(65536 * math.cos(math.radians(d))) for d in range(360))
SIN = tuple(round(65536 * math.sin(math.radians(d))) for d in range(360))
GRID_Y, GRID_X = np.mgrid[0:SIZE, 0:SIZE]
FINE_Y, FINE_X = np.mgrid[0:SIZE * SS, 0:SIZE * SS]


def regular_polygon(n: int, rx: int = 1000, ry: int = 1000) -> list[tuple[int, int]]:
    return [(rx * COS[d] // 65536, ry * SIN[d] // 65536) for d in range(0, 360, 360 // n)]


def _star(n: int, inner: int) -> list[tuple[int, int]]:
    step = 180 // n
    return [((1000 if i % 2 == 0 else inner) * COS[(270 + i * step) % 360] // 65536,
             (1000 if i % 2 == 0 else inner) * SIN[(270 + i * step) % 360] // 65536) for i in range(2 * n)]


# Unit shapes as polygons in [-1000, 1000]², y pointing down.
SHAPES: dict[str, list[tuple[int, int]]] = {
    "square": [(-700, -700), (700, -700), (700, 700), (-700, 700)],
    "disc": regular_polygon(24, 850, 850),
    "ellipse": regular_polygon(24, 1000, 550),
    "triangle": [(0, -1000), (870, 500), (-870, 500)],
    "diamond": [(0, -1000), (650, 0), (0, 1000), (-650, 0)],
    "hexagon": regular_polygon(6, 900, 900),
    "star": _star(5, 420),
    "cross": [(-300, -1000), (300, -1000), (300, -300), (1000, -300), (1000, 300), (300, 300),
              (300, 1000), (-300, 1000), (-300, 300), (-1000, 300), (-1000, -300), (-300, -300)],
    # shapes without rotational symmetry: their orientation is defined over the full 360°
    "arrow": [(0, -1000), (750, -150), (280, -150), (280, 1000), (-280, 1000), (-280, -150), (-750, -150)],
    "ell": [(-650, -1000), (-100, -1000), (-100, 450), (650, 450), (650, 1000), (-650, 1000)],
    "flag": [(-500, -1000), (700, -600), (-100, -200), (-100, 1000), (-500, 1000)],
}


def transform(shape: list[tuple[int, int]], cx: int, cy: int, size: int, angle: int) -> list[tuple[int, int]]:
    """Unit polygon -> supersampled pixel coordinates; ``size`` is the half-extent in supersampled pixels."""
    c, s = COS[angle % 360], SIN[angle % 360]
    return [(cx + (u * c - v * s) * size // (1000 * 65536), cy + (u * s + v * c) * size // (1000 * 65536))
            for u, v in shape]


def coverage(draw: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
    """Rasterise at SS× and average down: an anti-aliased 0–255 alpha map (int32, SIZE×SIZE)."""
    canvas = Image.new("L", (SIZE * SS, SIZE * SS), 0)
    draw(ImageDraw.Draw(canvas))
    total = np.asarray(canvas, dtype=np.int32).reshape(SIZE, SS, SIZE, SS).sum(axis=(1, 3))
    return (total + SS * SS // 2) // (SS * SS)


def polygon_alpha(points: list[tuple[int, int]]) -> np.ndarray:
    return coverage(lambda d: d.polygon(points, fill=255))


def paint(img: np.ndarray, alpha: np.ndarray, colour) -> np.ndarray:
    """Alpha-blend a flat colour (or a SIZE×SIZE×3 layer) into an int32 image."""
    a = alpha[..., None]
    return (img * (255 - a) + np.asarray(colour, dtype=np.int32) * a + 127) // 255


def blur(img: np.ndarray, times: int = 1) -> np.ndarray:
    """Separable [1 2 1]/4 blur with edge padding, in integers."""
    for _ in range(times):
        p = np.pad(img, [(1, 1), (1, 1)] + [(0, 0)] * (img.ndim - 2), mode="edge")
        p = (p[:-2] + 2 * p[1:-1] + p[2:] + 2) // 4
        img = (p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:] + 2) // 4
    return img


def random_colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> np.ndarray:
    return rng.integers(lo, hi, size=3).astype(np.int32)


def contrasting(rng: np.random.Generator, other: np.ndarray, min_diff: int = 90) -> np.ndarray:
    """A random colour whose mean channel value differs from ``other``'s by at least ``min_diff``."""
    while True:
        c = random_colour(rng)
        if abs(int(c.sum()) - int(other.sum())) >= 3 * min_diff:
            return c


def gradient(rng: np.random.Generator, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    """A linear two-colour gradient in a random direction (int32 SIZE×SIZE×3)."""
    a, b = (int(v) for v in rng.integers(-2, 3, size=2))
    t = a * GRID_X + b * GRID_Y
    t = t - t.min()
    span = max(int(t.max()), 1)
    return (c0 * (span - t[..., None]) + c1 * t[..., None]) // span


def blotches(rng: np.random.Generator, cells: int = 4, smooth: int = 3) -> np.ndarray:
    """Low-frequency random colour field: a coarse random grid, upsampled and blurred."""
    coarse = rng.integers(0, 256, size=(cells, cells, 3)).astype(np.int32)
    field = np.kron(coarse, np.ones((SIZE // cells, SIZE // cells, 1), dtype=np.int32))
    return blur(field, smooth)


def noise(rng: np.random.Generator, img: np.ndarray, amount: int) -> np.ndarray:
    return img + rng.integers(-amount, amount + 1, size=img.shape)


def finish(img: np.ndarray) -> np.ndarray:
    return np.clip(img, 0, 255).astype(np.uint8)


def balanced_labels(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
    return rng.permutation(np.arange(n) % num_classes)


# ---- the tasks ---------------------------------------------------------------------------

TaskGenerator = Callable[[np.random.Generator, str], tuple[np.ndarray, np.ndarray]]


def _count_of(part: str) -> int:
    return TRAINVAL if part == "trainval" else TEST_SIZE


def _digits(rng: np.random.Generator, part: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits  # the data ship inside scikit-learn: no download
    except ImportError as exc:
        raise DataError("the mini suite's 'digits' task needs scikit-learn (pip install scikit-learn)") from exc

    data = load_digits()
    # fixed split of the 1,797 digits, independent of ``rng`` so train and test never share a digit
    order = np.random.default_rng(7).permutation(len(data.target))
    pick = order[:TRAINVAL] if part == "trainval" else order[TRAINVAL:TRAINVAL + TEST_SIZE]
    images = []
    for i in pick:
        glyph = (data.images[i].astype(np.int32) * 255 + 8) // 16  # 8×8, 0–255
        alpha = blur(np.kron(glyph, np.ones((3, 3), dtype=np.int32)), 1)  # 24×24
        bg0 = random_colour(rng)
        shade = np.clip(bg0 + rng.integers(-60, 61, size=3), 0, 255)
        background = (gradient(rng, bg0, shade) * 3 + blotches(rng, 8, 1)) // 4
        img = paint(background, _place(alpha, rng, 2), contrasting(rng, bg0, 100))
        images.append(finish(noise(rng, img, 12)))
    return np.stack(images), data.target[pick].astype(np.int64)


def _place(alpha: np.ndarray, rng: np.random.Generator, jitter: int) -> np.ndarray:
    """Put a small alpha map near the centre of a SIZE×SIZE canvas, shifted by up to ``jitter`` px."""
    h, w = alpha.shape
    out = np.zeros((SIZE, SIZE), dtype=np.int32)
    y0, x0 = (SIZE - h) // 2, (SIZE - w) // 2
    y = min(max(y0 + int(rng.integers(-jitter, jitter + 1)), 0), SIZE - h)
    x = min(max(x0 + int(rng.integers(-jitter, jitter + 1)), 0), SIZE - w)
    out[y:y + h, x:x + w] = alpha
    return out


def _texture_mask(rng: np.random.Generator, family: int) -> np.ndarray:
    """Binary pattern (0/255) at SS× resolution for one of ten texture families."""
    angle = int(rng.integers(0, 360))
    period = int(rng.integers(5 * SS, 10 * SS))  # 5–10 px
    phase = int(rng.integers(0, period))
    jitter = int(rng.integers(-8, 9))

    def proj(deg: int) -> np.ndarray:  # signed distance along direction ``deg``, supersampled px
        return (FINE_X * COS[deg % 360] + FINE_Y * SIN[deg % 360]) // 65536 + phase

    def stripes(deg: int, duty: int = 50) -> np.ndarray:
        return (proj(deg) % period) * 100 < duty * period

    if family < 4:  # oriented stripes: 0°, 45°, 90°, 135° (± 8°)
        mask = stripes(family * 45 + jitter)
    elif family == 4:  # checkerboard at a random angle
        mask = stripes(angle) ^ stripes(angle + 90)
    elif family == 5:  # grid of dots at a random angle
        u, v = proj(angle) % period, proj(angle + 90) % period
        r = period // 2
        mask = (u - r) ** 2 + (v - r) ** 2 < (period * 3 // 10) ** 2
    elif family == 6:  # concentric rings around a random centre
        cx, cy = (int(c) for c in rng.integers(0, SIZE * SS, size=2))
        d2 = (FINE_X - cx) ** 2 + (FINE_Y - cy) ** 2
        mask = (np.sqrt(d2).astype(np.int64) + phase) % period * 2 < period
    elif family == 7:  # zigzag: stripes whose offset alternates in a triangle wave
        along = proj(angle + 90)
        tri = np.abs(along % (2 * period) - period)
        mask = ((proj(angle) + tri) % period) * 2 < period
    elif family == 8:  # cross-hatch of thin lines
        mask = (stripes(angle, 25)) | (stripes(angle + 90, 25))
    else:  # random blobs: thresholded smooth noise
        field = blur(rng.integers(0, 256, size=(SIZE, SIZE)).astype(np.int32), 3)
        field = np.kron(field, np.ones((SS, SS), dtype=np.int32))
        mask = field > int(np.median(field))
    return mask.astype(np.int32) * 255


def _texture(rng: np.random.Generator, part: str) -> tuple[np.ndarray, np.ndarray]:
    labels = balanced_labels(rng, _count_of(part), 10)
    images = []
    for family in labels:
        hi = _texture_mask(rng, int(family))
        alpha = (hi.reshape(SIZE, SS, SIZE, SS).sum(axis=(1, 3)) + 8) // 16
        c0 = random_colour(rng)
        c1 = contrasting(rng, c0, 40)
        img = paint(gradient(rng, c0, random_colour(rng)), alpha, c1)
        img = (img * 3 + blotches(rng, 4, 2)) // 4  # uneven illumination
        images.append(finish(noise(rng, img, 40)))
    return np.stack(images), labels.astype(np.int64)


def _sprite(rng: np.random.Generator, shapes: tuple[str, ...], cx: int, cy: int, size: int,
            angle: int) -> np.ndarray:
    """A dSprites-like image: one light shape on a dark, slightly noisy background."""
    shape = SHAPES[shapes[int(rng.integers(len(shapes)))]]
    alpha = polygon_alpha(transform(shape, cx, cy, size, angle))
    grey = int(rng.integers(150, 256))
    img = paint(np.full((SIZE, SIZE, 3), int(rng.integers(0, 40)), dtype=np.int32), alpha, (grey, grey, grey))
    return finish(noise(rng, img, 12))


def _sprite_loc(rng: np.random.Generator, part: str) -> tuple[np.ndarray, np.ndarray]:
    """Label = the cell of a 4×4 grid holding the shape's centre (centres range over 4–28 px)."""
    labels = balanced_labels(rng, _count_of(part), 16)
    cell = 6 * SS
    images = []
    for label in labels:
        row, col = divmod(int(label), 4)
        cx = 4 * SS + col * cell + int(rng.integers(0, cell))
        cy = 4 * SS + row * cell + int(rng.integers(0, cell))
        size = int(rng.integers(3 * SS, 6 * SS))
        images.append(_sprite(rng, ("square", "ellipse", "triangle", "star"), cx, cy, size,
                              int(rng.integers(0, 360))))
    return np.stack(images), labels.astype(np.int64)


def _sprite_ori(rng: np.random.Generator, part: str) -> tuple[np.ndarray, np.ndarray]:
    """Label = orientation in 45° bins (class k: k·45° ± 15°) of an asymmetric shape."""
    labels = balanced_labels(rng, _count_of(part), 8)
    images = []
    for label in labels:
        size = int(rng.integers(6 * SS, 10 * SS))
        margin = size * 9 // 10
        cx, cy = (int(c) for c in rng.integers(margin, SIZE * SS - margin, size=2))
        angle = int(label) * 45 + int(rng.integers(-15, 16))
        images.append(_sprite(rng, ("arrow", "ell", "flag"), cx, cy, size, angle))
    return np.stack(images), labels.astype(np.int64)


def _count(rng: np.random.Generator, part: str) -> tuple[np.ndarray, np.ndarray]:
    """Label k = k + 1 separate objects of random shape, size and colour on a cluttered background."""
    labels = balanced_labels(rng, _count_of(part), 6)
    kinds = ("square", "disc", "triangle", "diamond", "hexagon")
    images = []
    for label in labels:
        img = (gradient(rng, random_colour(rng, 40, 200), random_colour(rng, 40, 200)) * 2
               + blotches(rng, 8, 1)) // 3
        placed: list[tuple[int, int, int]] = []
        tries = 0
        while len(placed) < int(label) + 1:
            tries += 1
            if tries % 200 == 0:  # crowded: start the layout again
                placed = []
            size = int(rng.integers(int(2.5 * SS), int(4.5 * SS)))
            cx, cy = (int(c) for c in rng.integers(size, SIZE * SS - size, size=2))
            if all((cx - x) ** 2 + (cy - y) ** 2 > (size + s + SS) ** 2 for x, y, s in placed):
                placed.append((cx, cy, size))
        for cx, cy, size in placed:
            shape = SHAPES[kinds[int(rng.integers(len(kinds)))]]
            alpha = polygon_alpha(transform(shape, cx, cy, size, int(rng.integers(0, 360))))
            img = paint(img, alpha, random_colour(rng))
        images.append(finish(noise(rng, img, 16)))
    return np.stack(images), labels.astype(np.int64)


@dataclass(frozen=True)
class _Recipe:
    seed: int
    generate: TaskGenerator


RECIPES: dict[str, _Recipe] = {
    "digits": _Recipe(101, _digits),
    "texture": _Recipe(202, _texture),
    "sprite_loc": _Recipe(303, _sprite_loc),
    "sprite_ori": _Recipe(404, _sprite_ori),
    "count": _Recipe(505, _count),
}
