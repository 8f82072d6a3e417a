"""Limits on input images, kept free of heavy imports so that the CLI can show them in its help."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

# Images above this many pixels are refused before decoding (a decompression bomb: a small file
# that expands to gigabytes). 180 MP is about PIL's own refusal threshold (2 × Image.MAX_IMAGE_PIXELS)
# and 540 MB decoded: 12000×12000 scans pass, 20000×20000 does not. `--max-image-pixels` raises it.
DEFAULT_MAX_IMAGE_PIXELS = 180_000_000


@contextlib.contextmanager
def pil_bomb_check_off() -> Iterator[None]:
    """Switch PIL's own decompression-bomb check off while images are read: it warns above 89 MP and raises
    (a traceback, no file named) above 179 MP whatever the user's limit; the readers check each image's
    header against their own limit and name the file and line."""
    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before
