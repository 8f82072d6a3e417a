"""SHIP: Semantic Hierarchical Prompt tuning (Zhu et al., ICASSP 2025, arXiv 2412.16956).

Prompt tokens are appended after the image tokens of a frozen timm ViT. A data-dependent
preparation pass picks the blocks that get fresh *semantic* prompts (a new group starts where
the class token's features stop resembling those of the group's first block) and clusters the
last block's class-token features into *prototypes*. In between, blocks pass the group's
prompt outputs on. One *shared* prompt is refreshed before every block; two *attribute*
prompts, mixed with the prototypes nearest to the most attended image tokens, join the last
two selected blocks. Image queries attend to image and prompt keys with two separate
soft-maxes (*decoupled attention*); prompt queries do not attend, except in the last block. A
*matching loss* pulls the final prompt tokens towards the most attended image tokens.
Behaviour follows the official code (haoweiz23/SHIP); docs/ship.md has the notes.

Tokens: "image tokens" are everything the backbone's embedding produces (class token,
register tokens, patches): they keep their own attention among themselves, and only they reach
the backbone's final norm, pooling and classifier. The class token's attention row, which picks
the most attended tokens, skips register tokens (they hold no image content); SHIP needs a
class token, and prompts are sized from the model (depth, width, heads) and the input (tokens).

Choices where the official code is silent or crashes: block 0 never takes an attribute prompt
(there is no previous attention to read); fewer training images than ``num_prototypes`` is an
error naming the fixes, k is never reduced behind the user's back. The official training adds
the matching loss from the first epoch (its MATCHING_LOSS flag and warm-up never reach the
model); the default here is the paper's 10-epoch warm-up, ``matching_warmup=0`` gives the code's.

The package: ``config`` (ShipConfig, its checks), ``preparation`` (layer affinity, semantic
hierarchy, k-means prototypes and their cache), ``model`` (the forward pass, ``build_ship``,
registered as ``ship``), ``attention`` (decoupled attention), ``affinity/`` (the published
layer-affinity matrices, package data).
"""

from .attention import IMPLS, attention_impl, decoupled_mask, ship_block
from .config import ShipConfig
from .model import ATTRIBUTE_LAYERS, ShipViT, build_ship, check_backbone, prompt_matching_loss, top_tokens
from .preparation import (
    KMEANS_MAX_IMAGES,
    KMEANS_SEED,
    PREP_BATCH,
    PUBLISHED_AFFINITY,
    _save_atomic,
    cls_features,
    group_layers,
    kmeans_prototypes,
    layer_affinity,
    prepare,
)

__all__ = ["ATTRIBUTE_LAYERS", "IMPLS", "KMEANS_MAX_IMAGES", "KMEANS_SEED", "PREP_BATCH", "PUBLISHED_AFFINITY",
           "ShipConfig", "ShipViT", "_save_atomic", "attention_impl", "build_ship", "check_backbone",
           "cls_features", "decoupled_mask", "group_layers", "kmeans_prototypes", "layer_affinity", "prepare",
           "prompt_matching_loss", "ship_block", "top_tokens"]
