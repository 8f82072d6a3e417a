"""Limits on input images, kept free of heavy imports so that the CLI can show them in its help."""

# Images above this many pixels are refused before decoding (a decompression bomb: a small file
# that expands to gigabytes). 180 MP is about PIL's own refusal threshold (2 × Image.MAX_IMAGE_PIXELS)
# and 540 MB decoded: 12000×12000 scans pass, 20000×20000 does not. `--max-image-pixels` raises it.
DEFAULT_MAX_IMAGE_PIXELS = 180_000_000
