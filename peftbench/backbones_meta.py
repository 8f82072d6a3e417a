"""Facts about backbones that need no torch: the CLI's help and the config layer read them.

The backbone itself (creation, weights, token seams) is backbone.py; this is its torch-free half.
"""

DEFAULT_BACKBONE = "vit_base_patch16_224.orig_in21k"
