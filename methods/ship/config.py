"""SHIP's knobs (``ship.*``) and the limits the data and the backbone set on them."""

from __future__ import annotations

from dataclasses import dataclass, field

from peftbench.errors import UsageError
from peftbench.method_api import RunFacts

from .attention import IMPLS


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
        if self.layers is not None and self.layers[-1] >= facts.depth:
            problems.append(f"ship.layers={self.layers}: block indices must be below {facts.depth}, the depth of "
                            f"this backbone (valid: 0..{facts.depth - 1})")
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
