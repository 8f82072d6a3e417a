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
Behaviour follows shared/SHIP_SPEC.md, i.e. the official code (haoweiz23/SHIP).

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from peftbench.atomic import atomic_write
from peftbench.backbone import embed_tokens, freeze, logits_from_tokens
from peftbench.data.images import Batches
from peftbench.errors import DataError, UsageError
from peftbench.method_api import BuildContext, FrozenBackboneModel, MethodOutput, RunFacts
from peftbench.registry import register_method

from .ship_attention import IMPLS, attention_impl, decoupled_mask, ship_block

ATTRIBUTE_LAYERS = 2  # attribute prompts join the last two selected blocks (official)
KMEANS_SEED = 42  # the official k-means random_state; also seeds the subsample of images
KMEANS_MAX_IMAGES = 1000  # the official code clusters at most 1000 images
PREP_BATCH = 128  # images per forward in the preparation pass
# the official layer-affinity matrices (haoweiz23/SHIP, ViT-B/16 in21k), one per VTAB-1k task: package data
PUBLISHED_AFFINITY = Path(__file__).resolve().parent / "ship_affinity"


@dataclass
class ShipConfig:
    share_threshold: float = field(default=0.95, metadata={
        "help": "layer-affinity threshold alpha: a block starts a new prompt group when its affinity to the "
                "group's first block is below alpha (per task, 0.93-0.98 in the official runs)",
        "search": [0.93, 0.95, 0.97, 0.98]})
    prompt_length: int = field(default=50, metadata={"help": "semantic prompt tokens K per selected block",
                                                     "search": [5, 10, 30, 50, 100, 200]})  # the official set
    layers: tuple[int, ...] | None = field(default=None, metadata={
        "help": "explicit selected blocks, e.g. 0,2,4,6,8,11 (must include 0); skips the affinity pass"})
    end_layer: int | None = field(default=None, metadata={"help": "drop selected blocks >= this index"})
    affinity: str | None = field(default=None, metadata={
        "help": "path to an L x L layer-affinity matrix (.npy) to group with instead of computing one"})
    prototypes: str | None = field(default=None, metadata={
        "help": "path to a prototype bank (.npy, P x D) to use instead of k-means on the training images"})
    num_prototypes: int = field(default=200, metadata={
        "help": "k-means clusters (needs at least as many training images)"})
    attr_tokens: int = field(default=10, metadata={
        "help": "tokens per attribute prompt (= most attended image tokens matched to the prototypes)"})
    shared_tokens: int = field(default=10, metadata={"help": "tokens of the semantic-shared prompt"})
    scale: float = field(default=0.1, metadata={
        "help": "decoupled attention: weight s of the image-to-prompt attention ((1-s) for image-to-image)"})
    pattern_weight: float = field(default=0.1, metadata={
        "help": "attribute prompt = w * prototype pattern + (1-w) * learned attribute tokens"})
    matching_weight: float = field(default=0.5, metadata={"help": "weight of the prompt matching loss"})
    matching_warmup: int = field(default=10, metadata={"help": "epochs before the matching loss switches on"})
    matching_topk: int = field(default=10, metadata={
        "help": "most attended image tokens the prompts are matched to"})
    hierarchy: bool = field(default=True, metadata={"help": "semantic hierarchy (off: fresh prompts at every block)"})
    shared_prompt: bool = field(default=True, metadata={"help": "semantic-shared prompt"})
    attribute_prompts: bool = field(default=True, metadata={"help": "attribute prompts (and their prototypes)"})
    matching_loss: bool = field(default=True, metadata={"help": "prompt matching loss (the paper's; on)"})
    decoupled_attention: bool = field(default=True, metadata={
        "help": "decoupled attention (off: one joint softmax over all tokens for all queries)"})
    attention: str = field(default="auto", metadata={
        "help": "decoupled attention kernels: split (two SDPA calls, flash-capable), masked (one SDPA call with a "
                "block mask, fewer launches) or auto (masked on CUDA, split on the CPU); equal to float error"})
    backbone_train_mode: bool = field(default=True, metadata={
        "help": "let the frozen backbone's drop-path/dropout act while training (the official code does)"})

    def __post_init__(self) -> None:
        for name in ("prompt_length", "num_prototypes", "attr_tokens", "shared_tokens", "matching_topk"):
            if getattr(self, name) < 1:
                raise UsageError(f"ship.{name}={getattr(self, name)}: must be at least 1")
        if self.attention not in IMPLS:
            raise UsageError(f"ship.attention={self.attention!r}: expected {', '.join(IMPLS)}")
        for name in ("scale", "pattern_weight"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UsageError(f"ship.{name}={getattr(self, name)}: must be in [0, 1]")
        if not -1.0 <= self.share_threshold <= 1.0:
            raise UsageError(f"ship.share_threshold={self.share_threshold}: a cosine threshold, must be in [-1, 1]")
        if self.matching_weight < 0 or self.matching_warmup < 0:
            raise UsageError("ship.matching_weight and ship.matching_warmup must be non-negative")
        if self.end_layer is not None and self.end_layer < 1:
            raise UsageError(f"ship.end_layer={self.end_layer}: must be at least 1 (block 0 is always prompted)")
        if not self.hierarchy and (self.layers is not None or self.affinity is not None):
            raise UsageError("ship.hierarchy=false (prompts at every block) contradicts ship.layers / ship.affinity")
        if self.layers is not None:
            if self.affinity is not None:
                raise UsageError("ship.layers and ship.affinity both choose the prompt layers: give one of them")
            layers = tuple(sorted(self.layers))
            if len(set(layers)) != len(layers) or not layers or layers[0] != 0:
                raise UsageError(f"ship.layers={self.layers}: distinct block indices, including 0 (the first "
                                 "prompts enter before block 0)")
            self.layers = layers

    def check(self, facts: RunFacts) -> list[str]:
        """Limits that the data and the backbone set, checked before any run of a sweep starts."""
        problems = []
        if self.attribute_prompts and self.prototypes is None and self.num_prototypes > facts.train_size:
            problems.append(f"ship.num_prototypes={self.num_prototypes} k-means clusters, but the training split "
                            f"has {facts.train_size} images; set ship.num_prototypes={facts.train_size} (or fewer), "
                            "pass a bank with ship.prototypes=PATH, or set ship.attribute_prompts=false")
        candidates = facts.image_tokens + 1  # what forward() ranks: the class token and the image tokens
        attribute_blocks = (self.attribute_prompts and facts.depth > 1 and (self.end_layer or 2) > 1
                            and (self.layers is None or max(self.layers) > 0))
        for knob, k, used in (("attr_tokens", self.attr_tokens, attribute_blocks),
                              ("matching_topk", self.matching_topk,
                               self.matching_loss and self.matching_warmup < facts.epochs)):
            if used and k > candidates:
                problems.append(f"ship.{knob}={k}, but at {facts.img_size[0]}x{facts.img_size[1]} px there are only "
                                f"{candidates} tokens to choose the most attended from; lower ship.{knob} or "
                                "raise --img-size")
        return problems


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


# ---- the forward pass ----------------------------------------------------------------------

def top_tokens(tokens: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k tokens (B, k, D) with the highest scores (B, N)."""
    idx = scores.topk(k, dim=-1).indices
    return tokens.gather(1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def prompt_matching_loss(x: torch.Tensor, n: int, cls_logits: torch.Tensor, k: int) -> torch.Tensor:
    """Per image (B,): mean over prompt tokens of 1 - max cosine similarity to the k most attended image tokens.

    Its batch mean is the official loss; per image, the training loop can leave padded samples out.
    """
    targets = F.normalize(top_tokens(x[:, :n], cls_logits, k), dim=-1)
    sim = F.normalize(x[:, n:], dim=-1) @ targets.transpose(1, 2)
    return (1 - sim.amax(dim=-1)).mean(dim=-1)


def check_backbone(vit: nn.Module) -> None:
    """SHIP runs timm's pre-norm ``Block`` piece by piece and reads the class token's attention."""
    if getattr(vit, "cls_token", None) is None:
        raise UsageError("ship: the backbone has no class token, whose attention SHIP reads")
    block_parts = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")
    attn_parts = ("qkv", "q_norm", "k_norm", "attn_drop", "norm", "proj", "proj_drop", "num_heads", "head_dim")
    for i, block in enumerate(vit.blocks):
        lacking = [p for p in block_parts if not hasattr(block, p)]
        lacking += [f"attn.{p}" for p in attn_parts if not hasattr(getattr(block, "attn", None), p)]
        if lacking:
            raise UsageError(f"ship: block {i} ({type(block).__name__}) is not a timm pre-norm ViT block "
                             f"(lacks {', '.join(lacking)})")
        if getattr(block.attn, "gate", None) is not None:
            raise UsageError(f"ship: block {i} uses gated attention, which SHIP does not support")
        if block.attn.num_heads * block.attn.head_dim != vit.embed_dim:
            raise UsageError(f"ship: block {i}: attention width differs from the embedding width")


class ShipViT(FrozenBackboneModel):
    """A frozen timm ViT run block by block with SHIP's prompts and attention."""

    def __init__(self, vit: nn.Module, cfg: ShipConfig, layers: list[int], bank: torch.Tensor | None,
                 attention: str = "split"):
        super().__init__(vit, cfg.backbone_train_mode)
        self.attention = attention  # "split" or "masked" (ship_attention.py)
        width, like = vit.embed_dim, next(vit.parameters())
        self.slot = {block: i for i, block in enumerate(layers)}  # block index -> row of `semantic`
        self.scale, self.decoupled = cfg.scale, cfg.decoupled_attention
        self.attr_tokens, self.pattern_weight = cfg.attr_tokens, cfg.pattern_weight
        self.matching_weight, self.matching_topk = cfg.matching_weight, cfg.matching_topk
        self.matching_warmup = cfg.matching_warmup if cfg.matching_loss else None
        # the loss's weight, 0 during the warm-up: a tensor, not a Python flag, so that switching it on after
        # the warm-up changes no compiled graph (the loss is computed, at weight 0, from the first epoch)
        on = cfg.matching_loss and cfg.matching_warmup == 0
        self.register_buffer("matching_scale", torch.tensor(cfg.matching_weight if on else 0.0, device=like.device),
                             persistent=False)
        self.num_registers = vit.num_prefix_tokens - 1  # prefix = [class token, registers]

        def uniform(shape: tuple[int, ...], bound: float) -> nn.Parameter:
            return nn.Parameter(torch.empty(shape, device=like.device, dtype=like.dtype).uniform_(-bound, bound))

        # Init bounds as the official tensors' default inits give them: Xavier on (1, K, D) per block,
        # Kaiming-uniform on (shared, D) and on (2, attr, D).
        k = cfg.prompt_length
        self.semantic = uniform((len(layers), k, width), math.sqrt(6.0 / ((k + 1) * width)))
        self.shared = uniform((cfg.shared_tokens, width), math.sqrt(6.0 / width)) if cfg.shared_prompt else None
        # block 0 has no previous attention to read, so it never takes an attribute prompt
        attr_blocks = [i for i in layers if i > 0][-ATTRIBUTE_LAYERS:] if cfg.attribute_prompts else []
        self.attr_slot = {block: i for i, block in enumerate(attr_blocks)}
        self.attribute = (uniform((len(attr_blocks), cfg.attr_tokens, width),
                                  math.sqrt(6.0 / (cfg.attr_tokens * width))) if attr_blocks else None)
        self.register_buffer("prototypes", bank if attr_blocks else None)

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        on = self.matching_warmup is not None and epoch >= self.matching_warmup
        self.matching_scale.fill_(self.matching_weight if on else 0.0)

    def _candidate_logits(self, cls_logits: torch.Tensor) -> torch.Tensor:
        if self.num_registers:
            cls_logits = cls_logits.clone()
            cls_logits[:, 1:1 + self.num_registers] = float("-inf")
        return cls_logits

    def _attribute_prompt(self, tokens: torch.Tensor, cls_logits: torch.Tensor, slot: int) -> torch.Tensor:
        picked = F.normalize(top_tokens(tokens, self._candidate_logits(cls_logits), self.attr_tokens), dim=-1)
        weights = (picked @ F.normalize(self.prototypes, dim=-1).T).softmax(dim=-1)
        pattern = weights @ self.prototypes
        return self.pattern_weight * pattern + (1 - self.pattern_weight) * self.attribute[slot]

    def forward(self, images: torch.Tensor) -> torch.Tensor | MethodOutput:
        """Logits; in training, with the weighted matching loss (None before its warm-up ends or when off)."""
        vit = self.vit
        x = embed_tokens(vit, images)
        b, n = x.shape[:2]
        matching = self.training and self.matching_warmup is not None
        needed = max(self.attr_tokens if self.attr_slot else 0, self.matching_topk if matching else 0)
        if n - self.num_registers < needed:
            raise UsageError(f"ship: {n - self.num_registers} image tokens at this input size, fewer than the "
                             f"{needed} most attended ones SHIP selects (lower ship.attr_tokens / ship.matching_topk)")
        shared = None if self.shared is None else self.shared.expand(b, -1, -1)
        logits = aux = None
        last = len(vit.blocks) - 1
        masks: dict[tuple[int, bool], torch.Tensor] = {}  # one block mask per sequence length, not one per block
        for i, block in enumerate(vit.blocks):
            if i in self.slot:
                prompts = [self.semantic[self.slot[i]].expand(b, -1, -1)]
                if i in self.attr_slot:
                    prompts.append(self._attribute_prompt(x[:, :n], logits, self.attr_slot[i]).to(x.dtype))
                x = torch.cat([x[:, :n], *prompts, *([] if shared is None else [shared])], dim=1)
            elif shared is not None:  # the group's prompts go on; the shared prompt is fresh
                x = torch.cat([x[:, :-shared.shape[1]], shared], dim=1)
            want_logits = i + 1 in self.attr_slot or (i == last and matching)
            mask = None
            if self.attention == "masked" and self.decoupled:
                key = (x.shape[1], i == last)
                if key not in masks:
                    masks[key] = decoupled_mask(n, x.shape[1], i == last, x.device)
                mask = masks[key]
            x, logits = ship_block(block, x, n, self.scale, self.decoupled, i == last, want_logits, self.attention,
                                   mask)
        if matching:
            cls_logits = self._candidate_logits(logits)
            aux = self.matching_scale * prompt_matching_loss(x, n, cls_logits, self.matching_topk)
        logits = logits_from_tokens(vit, x[:, :n])
        return MethodOutput(logits, aux) if self.training else logits


@register_method("ship", config=ShipConfig,
                 description="SHIP: semantic hierarchical prompts, decoupled attention, frozen ViT")
def build_ship(backbone: nn.Module, num_classes: int, cfg: ShipConfig, ctx: BuildContext) -> nn.Module:
    check_backbone(backbone)
    layers, bank = prepare(backbone, cfg, ctx)
    freeze(backbone)
    for p in backbone.get_classifier().parameters():
        p.requires_grad_(True)
    ctx.info["attention"] = attention = attention_impl(cfg.attention, ctx.device)
    return ShipViT(backbone, cfg, layers, bank, attention)
