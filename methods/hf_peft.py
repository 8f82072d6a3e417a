"""Methods from Hugging Face ``peft`` on a timm ViT: one generic plugin, registered under several names.

``peft`` is a dependency, not a copy: each name maps to a ``peft`` config class, its knobs are
that class's fields (``--set peft_lora.r=16``), and ``peft.get_peft_model`` injects the
adaptation into the timm model in place. The classifier trains too (``requires_grad`` on the
backbone's own head, as for every hand-written method), so the harness's ``requires_grad`` count
equals ``PeftModel.get_nb_trainable_parameters()``. ``merge()`` is peft's own ``merge_and_unload``
on a copy. Target modules are given by name (the last part of a module's path, as in peft) and
resolved here to full paths of modules that have weights (timm's unused ``nn.Identity`` norms
share the name ``norm``).

Differences from the hand-written plugins: ``peft_lora`` adapts the whole fused ``qkv`` (q, k
and v), ``lora`` only the q and v slices; ``peft_ia3`` rescales all of qkv's outputs (IA3's paper
rescales k and v only) and fc2's input. ``peft_oft`` and ``peft_boft`` on timm's fused ``qkv``
apply ONE orthogonal rotation to its input, shared by q, k and v (the OFT paper rotates the q, k
and v projections separately); ``peft`` adapts whole modules and cannot target a slice of a
fused Linear, so there is no knob for separate q, k, v rotations here (that needs a timm model
with separate q, k, v Linears). ``peft`` is imported inside ``build`` because it imports
``transformers`` (seconds), which ``peftbench methods`` must not pay.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from peftbench.errors import UsageError
from peftbench.method_api import BuildContext, FrozenBackboneModel, train_head
from peftbench.registry import register_method


def _targets(default: tuple[str, ...]):
    return field(default=default, metadata={
        "help": "modules to adapt, by the last part of their name (e.g. qkv, proj, fc1, fc2, norm1)"})


@dataclass
class PeftLoraConfig:
    r: int = field(default=8, metadata={"help": "LoRA rank", "search": [1, 2, 4, 8, 16, 32]})
    lora_alpha: int = field(default=8, metadata={"help": "scale alpha (update x alpha / r)",
                                                 "search": [4, 8, 16, 32]})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input", "search": [0.0, 0.1]})
    target_modules: tuple[str, ...] = _targets(("qkv",))
    use_dora: bool = field(default=False, metadata={"help": "DoRA: learn magnitudes and directions"})


@dataclass
class PeftDoraConfig(PeftLoraConfig):
    use_dora: bool = field(default=True, metadata={"help": "DoRA: learn magnitudes and directions"})


@dataclass
class PeftIA3Config:
    target_modules: tuple[str, ...] = _targets(("qkv", "fc2"))
    feedforward_modules: tuple[str, ...] = field(default=("fc2",), metadata={
        "help": "targets whose input (not output) is rescaled, as IA3 does for the MLP"})


@dataclass
class PeftOFTConfig:
    oft_block_size: int = field(default=32, metadata={
        "help": "size of the orthogonal blocks (divides the targets' input width)", "search": [8, 16, 32, 64]})
    module_dropout: float = field(default=0.0, metadata={"help": "multiplicative dropout of blocks",
                                                                "search": [0.0, 0.1]})
    coft: bool = field(default=False, metadata={"help": "constrained OFT", "search": [False, True]})
    block_share: bool = field(default=False, metadata={"help": "share one block within a layer",
                                                          "search": [False, True]})
    target_modules: tuple[str, ...] = _targets(("qkv",))


@dataclass
class PeftBOFTConfig:
    boft_block_size: int = field(default=4, metadata={"help": "butterfly block size", "search": [2, 4, 8, 16]})
    boft_n_butterfly_factor: int = field(default=1, metadata={"help": "butterfly factors", "search": [1, 2]})
    boft_dropout: float = field(default=0.0, metadata={"help": "multiplicative dropout of blocks",
                                                              "search": [0.0, 0.1]})
    target_modules: tuple[str, ...] = _targets(("qkv",))


@dataclass
class PeftVeraConfig:
    r: int = field(default=256, metadata={"help": "rank of the shared frozen random projections",
                                          "search": [64, 128, 256, 512]})
    vera_dropout: float = field(default=0.0, metadata={"help": "dropout on the VeRA input",
                                                              "search": [0.0, 0.1]})
    target_modules: tuple[str, ...] = _targets(("qkv",))


@dataclass
class PeftLNConfig:
    target_modules: tuple[str, ...] = _targets(("norm1", "norm2", "norm"))


class PeftViT(FrozenBackboneModel):
    """A timm ViT wrapped by ``peft``; the backbone stays in eval mode, peft's layers follow the model."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vit(images)

    def train(self, mode: bool = True) -> PeftViT:
        from peft.tuners.tuners_utils import BaseTunerLayer

        super().train(mode)
        for module in self.vit.modules():
            if isinstance(module, BaseTunerLayer):  # its dropout acts in training
                module.train(mode)
        return self

    def get_classifier(self) -> nn.Module:
        return self.vit.get_base_model().get_classifier()

    def merge(self) -> nn.Module:
        """peft's own merge, on a copy: a plain timm ViT with the adaptation folded in, nothing trainable
        (as the hand-written plugins' merges: peft leaves ``requires_grad`` on the head)."""
        merged = copy.deepcopy(self.vit).merge_and_unload().eval()
        for p in merged.parameters():
            p.requires_grad_(False)
        return merged


def resolve_targets(vit: nn.Module, names: tuple[str, ...], method: str) -> list[str]:
    """Full paths of the modules with weights whose last name part is listed."""
    found = [path for path, m in vit.named_modules()
             if path.rsplit(".", 1)[-1] in names and any(True for _ in m.parameters(recurse=False))]
    if not found:
        raise UsageError(f"{method}.target_modules={','.join(names)}: no module of the backbone with weights "
                         "has such a name")
    return found


def _exactly(paths: list[str]) -> str:
    return "|".join(re.escape(p) for p in paths)


def _peft_builder(name: str, peft_class: str) -> Callable[..., nn.Module]:
    def build(backbone: nn.Module, num_classes: int, cfg, ctx: BuildContext) -> nn.Module:
        import peft  # lazily: it imports transformers

        kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
        # full paths as one regex: peft would match a plain name list by suffix ("norm" -> "attn.norm")
        targets = resolve_targets(backbone, cfg.target_modules, name)
        kwargs["target_modules"] = _exactly(targets)
        if "feedforward_modules" in kwargs:
            kwargs["feedforward_modules"] = _exactly([t for t in targets
                                                      if t.rsplit(".", 1)[-1] in cfg.feedforward_modules])
        try:
            model = peft.get_peft_model(backbone, getattr(peft, peft_class)(**kwargs))
        except (ValueError, TypeError) as exc:
            raise UsageError(f"{name}: peft rejected the configuration: {exc}") from exc
        train_head(backbone)  # peft froze everything else
        return PeftViT(model)

    return build


PEFT_METHODS = {
    "peft_lora": ("LoraConfig", PeftLoraConfig, "HF peft LoRA on the fused qkv projection (q, k and v)"),
    "peft_dora": ("LoraConfig", PeftDoraConfig, "HF peft DoRA (weight-decomposed LoRA) on the fused qkv"),
    "peft_ia3": ("IA3Config", PeftIA3Config, "HF peft IA3: learned rescaling of qkv outputs and fc2 inputs"),
    "peft_oft": ("OFTConfig", PeftOFTConfig, "HF peft OFT: block-diagonal orthogonal rotation of qkv's input"),
    "peft_boft": ("BOFTConfig", PeftBOFTConfig, "HF peft BOFT: butterfly-factorised orthogonal rotation of qkv"),
    "peft_vera": ("VeraConfig", PeftVeraConfig, "HF peft VeRA: scaling vectors on shared frozen random projections"),
    "peft_ln": ("LNTuningConfig", PeftLNConfig, "HF peft LN-tuning: trained copies of the LayerNorms"),
}

for _name, (_cls, _config, _description) in PEFT_METHODS.items():
    register_method(_name, config=_config, description=_description, family="peft")(_peft_builder(_name, _cls))
