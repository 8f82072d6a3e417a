"""SHIP's data-dependent preparation: layer affinity, semantic hierarchy, prototypes, and their cache.

One pass of the frozen backbone over the training images gives every block's class-token features;
from them come the layer-affinity matrix (which blocks get fresh semantic prompts) and the k-means
prototypes (what attribute prompts mix in). Both are cached per backbone and data checksum.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from peftbench.atomic import atomic_write
from peftbench.backbone import embed_tokens
from peftbench.data.images import Batches
from peftbench.errors import DataError, UsageError
from peftbench.method_api import BuildContext

from .config import ShipConfig

KMEANS_SEED = 42  # the official k-means random_state; also seeds the subsample of images
KMEANS_MAX_IMAGES = 1000  # the official code clusters at most 1000 images
PREP_BATCH = 128  # images per forward in the preparation pass
# the official layer-affinity matrices (haoweiz23/SHIP, ViT-B/16 in21k), one per VTAB-1k task: package data
PUBLISHED_AFFINITY = Path(__file__).resolve().parent / "affinity"


# ---- preparation: layer affinity, semantic hierarchy, prototypes ---------------------------

@torch.no_grad()
def cls_features(vit: nn.Module, batches: Batches) -> np.ndarray:
    """Class token of every block's output for every image: (L, n, D) float32, frozen and in eval mode."""
    was_training = vit.training
    vit.eval()
    device = next(vit.parameters()).device
    per_block: list[list[torch.Tensor]] = [[] for _ in vit.blocks]
    try:
        for images, _ in batches.iterate(PREP_BATCH):
            x = embed_tokens(vit, images.to(device))
            for feats, block in zip(per_block, vit.blocks):
                x = block(x)
                feats.append(x[:, 0].float().cpu())
    finally:
        vit.train(was_training)
    return torch.stack([torch.cat(f) for f in per_block]).numpy()


def layer_affinity(features: np.ndarray) -> np.ndarray:
    """Mean over images of the L x L cosine similarities between the blocks' class tokens."""
    unit = features.astype(np.float64)
    unit /= np.linalg.norm(unit, axis=-1, keepdims=True)
    return (np.einsum("lnd,mnd->lm", unit, unit) / features.shape[1]).astype(np.float32)


def group_layers(affinity: np.ndarray, threshold: float, end_layer: int | None = None) -> list[int]:
    """Blocks that start a prompt group: block 0, then each first block whose affinity to the previous
    group's first block falls below ``threshold``; blocks in between share that group's prompts."""
    selected = [0]
    for j in range(1, len(affinity)):
        if affinity[selected[-1], j] < threshold:
            selected.append(j)
    return [i for i in selected if end_layer is None or i < end_layer]


def kmeans_prototypes(features: np.ndarray, k: int) -> np.ndarray:
    """k cluster means (k x D) of ``features`` (n x D), fixed seed, at most 1000 images."""
    n = len(features)
    if n < k:
        raise DataError(f"ship: k-means needs at least num_prototypes={k} training images, but the training "
                        f"split has {n}; set ship.num_prototypes={n} (or fewer), pass a bank with "
                        "ship.prototypes=PATH, or turn attribute prompts off (ship.attribute_prompts=false)")
    if n > KMEANS_MAX_IMAGES:
        features = features[np.random.default_rng(KMEANS_SEED).choice(n, KMEANS_MAX_IMAGES, replace=False)]
    try:
        from sklearn.cluster import KMeans
    except ImportError as exc:
        raise UsageError("ship: the prototypes need scikit-learn (pip install scikit-learn), or pass a bank "
                         "with ship.prototypes=PATH") from exc
    # n_init=1: scikit-learn's default for k-means++ since 1.4
    km = KMeans(n_clusters=k, random_state=KMEANS_SEED, n_init=1).fit(features.astype(np.float32))
    return km.cluster_centers_.astype(np.float32)


def _save_atomic(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a path
            np.save(f, array)

    atomic_write(path, write, durable=False)  # a cache: recomputed if lost


def _load_npy(path: Path, shape: tuple[int | None, ...], what: str) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"ship.{what}={path}: unreadable .npy file ({exc})") from exc
    if array.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, array.shape)):
        want = " x ".join("?" if s is None else str(s) for s in shape)
        raise UsageError(f"ship.{what}={path}: shape {array.shape}, expected {want} for this backbone")
    if not np.isfinite(array).all():
        raise UsageError(f"ship.{what}={path}: contains NaN or infinite values")
    return array.astype(np.float32)


def _load_cached(path: Path | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if path is None or not path.is_file():
        return None
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None  # a damaged cache file is recomputed
    return array if array.shape == shape else None


def _cache_paths(ctx: BuildContext, k: int) -> dict[str, Path] | None:
    """Cache files per (task, backbone weights, training images, image size); none without a backbone checksum."""
    if ctx.cache_dir is None or not ctx.backbone_checksum:
        return None
    h, w = ctx.train_batches.target
    task = ctx.task.name if ctx.task is not None else "task"
    key = f"{task}-{ctx.backbone_checksum[:12]}-{ctx.train_batches.data.checksum[:12]}-{h}x{w}"
    folder = Path(ctx.cache_dir) / "ship"
    return {"affinity": folder / f"{key}.affinity.npy",
            "prototypes": folder / f"{key}.prototypes-k{k}-seed{KMEANS_SEED}.npy"}


def _from_data(vit: nn.Module, ctx: BuildContext, wanted: dict[str, tuple[int, int]], k: int
               ) -> dict[str, tuple[np.ndarray, str]]:
    """The wanted products (name -> shape) from the cache, or from one pass over the training images."""
    paths = _cache_paths(ctx, k)
    out = {}
    for name, shape in wanted.items():
        cached = _load_cached(paths[name], shape) if paths else None
        if cached is not None:
            out[name] = (cached, "cache")
    missing = [name for name in wanted if name not in out]
    if not missing:
        return out
    with ctx.phase("ship: class-token features"):
        features = cls_features(vit, ctx.train_batches)
    ctx.info["prep_images"] = features.shape[1]
    for name in missing:
        if name == "affinity":
            with ctx.phase("ship: layer affinity"):
                array = layer_affinity(features)
        else:
            with ctx.phase("ship: prototypes (k-means)"):
                array = kmeans_prototypes(features[-1], k)
        if paths:
            _save_atomic(paths[name], array)
        out[name] = (array, "computed")
    return out


def prepare(vit: nn.Module, cfg: ShipConfig, ctx: BuildContext) -> tuple[list[int], torch.Tensor | None]:
    """Selected blocks and the prototype bank (None without attribute prompts); their sources go to ctx.info."""
    depth, width, k = len(vit.blocks), vit.embed_dim, cfg.num_prototypes
    if cfg.layers is not None and cfg.layers[-1] >= depth:
        raise UsageError(f"ship.layers={cfg.layers}: block indices must be below {depth}, the depth of "
                         f"this backbone (valid: 0..{depth - 1})")
    grouped = cfg.hierarchy and cfg.layers is None
    products: dict[str, tuple[np.ndarray, str]] = {}  # name -> (array, where it came from)
    if grouped and cfg.affinity is not None:
        products["affinity"] = (_load_npy(Path(cfg.affinity), (depth, depth), "affinity"), f"file {cfg.affinity}")
    if cfg.attribute_prompts and cfg.prototypes is not None:
        bank = _load_npy(Path(cfg.prototypes), (None, width), "prototypes")
        products["prototypes"] = (bank, f"file {cfg.prototypes}")
    wanted = {name: shape for name, shape, needed in (("affinity", (depth, depth), grouped),
                                                      ("prototypes", (k, width), cfg.attribute_prompts))
              if needed and name not in products}
    if ctx.has_data:
        products.update(_from_data(vit, ctx, wanted, k))
    elif "affinity" in wanted:
        products["affinity"] = _without_data_affinity(depth, cfg, ctx)
        del wanted["affinity"]
    if not ctx.has_data and wanted:
        products["prototypes"] = (np.zeros((k, width), np.float32), "placeholder")
        ctx.notices.append(f"ship: no training images here, so the {k} x {width} prototype bank is a placeholder "
                           "of zeros (a run computes it by k-means); parameter counts and FLOPs are unaffected")
    if grouped:
        affinity, layers_source = products["affinity"]
        layers = list(range(depth)) if affinity is None else group_layers(affinity, cfg.share_threshold)
    elif cfg.layers is not None:
        layers, layers_source = list(cfg.layers), "explicit"
    else:
        layers, layers_source = list(range(depth)), "all blocks (hierarchy off)"
    layers = [i for i in layers if cfg.end_layer is None or i < cfg.end_layer]
    bank, prototypes_source = products.get("prototypes", (None, None))
    ctx.info.update(layers=layers, layers_source=layers_source,
                    share_threshold=cfg.share_threshold if grouped else None, end_layer=cfg.end_layer,
                    prototypes_source=prototypes_source, num_prototypes=None if bank is None else len(bank))
    like = next(vit.parameters())
    return layers, None if bank is None else torch.as_tensor(bank, device=like.device)


def _without_data_affinity(depth: int, cfg: ShipConfig, ctx: BuildContext) -> tuple[np.ndarray | None, str]:
    """Without training images (``peftbench inspect``): the task's published affinity, else every block.

    The official affinity matrices are facts about ViT-B/16 in21k on the VTAB-1k tasks, so they are
    used only for a 12-block backbone; otherwise (None) every block is selected, the most prompts
    SHIP can select, and a note says so. A run always computes the affinity from its data.
    """
    task = ctx.task.name if ctx.task is not None else None
    path = PUBLISHED_AFFINITY / f"{task}.npy"
    if task is not None and path.is_file() and depth == 12:
        layers = group_layers(np.load(path), cfg.share_threshold)
        ctx.notices.append(f"ship: prompt layers {layers}: the official SHIP affinity matrix of {task} (ViT-B/16 "
                           f"in21k) at share_threshold {cfg.share_threshold}; a run computes them from its own "
                           "training images")
        return np.load(path), f"published ({task}, ViT-B/16 in21k)"
    ctx.notices.append("ship: no training images here" + ("" if task is None else f" and no published grouping "
                       f"for task {task} on a {depth}-block backbone") + f", so every block of {depth} is counted "
                       "as prompted, the most SHIP can select (--task NAME of a VTAB-1k task uses its published "
                       "layers; --set ship.layers=... gives them explicitly)")
    return None, "every block (no data: upper bound)"
