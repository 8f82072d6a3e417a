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
import logging
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from peftbench.errors import UsageError
from peftbench.method_api import BuildContext, FrozenBackboneModel, RunFacts, train_head
from peftbench.registry import register_method


def _targets(default: tuple[str, ...]):
    return field(default=default, metadata={
        "help": "modules to adapt, by the last part of their name (e.g. qkv, proj, fc1, fc2, norm1)"})


class PeftKnobs:
    """What the peft configs share: their limits, checked when the settings are read (``__post_init__``:
    every int knob is a size or count, at least 1; a dropout is in [0, 1); some target) and, before any run
    of a sweep, against the backbone's modules (``check``: peft's own verdict on the targets' widths).

    ``METHOD`` and ``PEFT_CLASS`` (the name it is registered under, the ``peft`` config class) are set by
    the registration at the end of this file."""

    METHOD: ClassVar[str] = ""
    PEFT_CLASS: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, int) and not isinstance(value, bool) and value < 1:
                raise UsageError(f"{self.METHOD}.{f.name}={value}: must be at least 1")
            if f.name.endswith("dropout") and not 0.0 <= value < 1.0:
                raise UsageError(f"{self.METHOD}.{f.name}={value}: must be in [0, 1)")
        if not self.target_modules:  # type: ignore[attr-defined]
            raise UsageError(f"{self.METHOD}.target_modules: give at least one module name")

    def check(self, facts: RunFacts) -> list[str]:
        """peft's verdict on these settings for the backbone's modules, from a dry run on stand-ins."""
        if not facts.modules:  # a caller that knows no module shapes: nothing to check against
            return []
        return list(dry_run(self.METHOD, self.PEFT_CLASS, self, facts.modules)[0])


@dataclass
class PeftLoraConfig(PeftKnobs):
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
class PeftIA3Config(PeftKnobs):
    target_modules: tuple[str, ...] = _targets(("qkv", "fc2"))
    feedforward_modules: tuple[str, ...] = field(default=("fc2",), metadata={
        "help": "targets whose input (not output) is rescaled, as IA3 does for the MLP"})


@dataclass
class PeftOFTConfig(PeftKnobs):
    # searched: sizes dividing every width that is a multiple of 32 (peft replaces a size that does not
    # divide a target's input width by the nearest one that does, e.g. 64 -> 48 at width 96)
    oft_block_size: int = field(default=32, metadata={
        "help": "size of the orthogonal blocks; peft uses the nearest divisor of a target's input width "
                "(the record's method_info.adjusted says so)", "search": [8, 16, 32]})
    module_dropout: float = field(default=0.0, metadata={"help": "multiplicative dropout of blocks",
                                                                "search": [0.0, 0.1]})
    coft: bool = field(default=False, metadata={"help": "constrained OFT", "search": [False, True]})
    block_share: bool = field(default=False, metadata={"help": "share one block within a layer",
                                                          "search": [False, True]})
    target_modules: tuple[str, ...] = _targets(("qkv",))


@dataclass
class PeftBOFTConfig(PeftKnobs):
    boft_block_size: int = field(default=4, metadata={
        "help": "butterfly block size (divides the targets' input width)", "search": [2, 4, 8, 16]})
    # searched at 1 only: without peft's CUDA extension (compiled on first use, CUDA only) peft runs 1 whatever
    # is set, so a 2 would repeat the trial of a 1
    boft_n_butterfly_factor: int = field(default=1, metadata={
        "help": "butterfly factors; peft uses 1 without its CUDA extension (the record's method_info.adjusted "
                "says so)", "search": [1]})
    boft_dropout: float = field(default=0.0, metadata={"help": "multiplicative dropout of blocks",
                                                              "search": [0.0, 0.1]})
    target_modules: tuple[str, ...] = _targets(("qkv",))


@dataclass
class PeftVeraConfig(PeftKnobs):
    r: int = field(default=256, metadata={"help": "rank of the shared frozen random projections",
                                          "search": [64, 128, 256, 512]})
    vera_dropout: float = field(default=0.0, metadata={"help": "dropout on the VeRA input",
                                                              "search": [0.0, 0.1]})
    target_modules: tuple[str, ...] = _targets(("qkv",))


@dataclass
class PeftLNConfig(PeftKnobs):
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
        raise UsageError(_no_target(method, names))
    return found


def _no_target(method: str, names: tuple[str, ...]) -> str:
    return (f"{method}.target_modules={','.join(names)}: no module of the backbone with weights has such a name")


def _exactly(paths: list[str]) -> str:
    return "|".join(re.escape(p) for p in paths)


def _peft_config(peft_class: str, cfg, targets: list[str]):
    """peft's config object for ``cfg``, its targets given as the full paths ``targets``."""
    import peft  # lazily: it imports transformers

    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
    # full paths as one regex: peft would match a plain name list by suffix ("norm" -> "attn.norm")
    kwargs["target_modules"] = _exactly(targets)
    if "feedforward_modules" in kwargs:
        kwargs["feedforward_modules"] = _exactly([t for t in targets
                                                  if t.rsplit(".", 1)[-1] in cfg.feedforward_modules])
    return getattr(peft, peft_class)(**kwargs)


def _inject(name: str, peft_class: str, cfg, model: nn.Module, targets: list[str]) -> nn.Module:
    """peft.get_peft_model, its refusals as one line naming the method."""
    import peft

    # BOFT tries to compile a CUDA kernel, and torch's extension loader logs a warning line when there is no
    # CUDA: not a problem of the run (the record states the factor used), so not shown
    cpp_log = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_log.level
    cpp_log.setLevel(logging.ERROR)
    try:
        return peft.get_peft_model(model, _peft_config(peft_class, cfg, targets))
    except (ValueError, TypeError, ZeroDivisionError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"{name}: peft rejected the configuration: {first}") from exc
    finally:
        cpp_log.setLevel(level)


# peft's warnings about values it replaced: the record's method_info.adjusted and notices state them instead
_ADJUSTED = r"Invalid `(oft_block_size|r)`|Failed to load the CUDA extension|Setting boft_n_butterfly_factor"


def used_values(model: nn.Module, cfg) -> dict[str, list]:
    """The values of ``cfg``'s knobs that peft's layers actually use, where they differ from the setting:
    knob -> the sorted distinct values over the adapted layers. peft adjusts some silently (an OFT block
    size that does not divide a layer's width; BOFT's butterfly factors without its CUDA extension)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    seen: dict[str, set] = {}
    for layer in model.modules():
        if not isinstance(layer, BaseTunerLayer):
            continue
        for f in dataclasses.fields(cfg):
            stored = getattr(layer, f.name, None)
            if f.name == "boft_n_butterfly_factor" and isinstance(getattr(layer, "boft_R", None), nn.ParameterDict):
                stored = {k: v.shape[0] for k, v in layer.boft_R.items()}  # one rotation per factor
            if isinstance(stored, dict):
                seen.setdefault(f.name, set()).update(v for v in stored.values() if isinstance(v, (int, float)))
    return {k: sorted(v) for k, v in seen.items() if v and v != {getattr(cfg, k)}}


def _stand_in(modules: tuple[tuple[str, tuple[int, ...]], ...], names: tuple[str, ...]
              ) -> tuple[nn.Module, list[str]]:
    """Small modules with the shapes of the backbone's targets (one per distinct name and shape), and their
    paths: what peft checks and adjusts depends on nothing else."""
    parts: dict[tuple[str, tuple[int, ...]], nn.Module] = {}
    for path, shape in modules:
        name = path.rsplit(".", 1)[-1]
        if name not in names or (name, shape) in parts:
            continue
        if len(shape) == 2:
            parts[(name, shape)] = nn.Linear(shape[1], shape[0])
        elif len(shape) == 4:
            parts[(name, shape)] = nn.Conv2d(shape[1], shape[0], tuple(shape[2:]))  # type: ignore[arg-type]
        elif len(shape) == 1:
            parts[(name, shape)] = nn.LayerNorm(shape[0])
    root = nn.Module()
    paths = []
    for i, ((name, _), module) in enumerate(parts.items()):
        holder = nn.Module()
        holder.add_module(name, module)
        root.add_module(f"m{i}", holder)
        paths.append(f"m{i}.{name}")
    return root, paths


_DRY_RUNS: dict[tuple, tuple[list[str], dict[str, list]]] = {}  # a sweep asks once per job: once is enough


def dry_run(method: str, peft_class: str, cfg, modules: tuple[tuple[str, tuple[int, ...]], ...]
            ) -> tuple[list[str], dict[str, list]]:
    """-> (problems, knobs peft would adjust: see ``used_values``) of ``cfg`` on modules of these shapes."""
    key = (method, repr(cfg), modules)
    if key not in _DRY_RUNS:
        _DRY_RUNS[key] = _dry_run(method, peft_class, cfg, modules)
    return _DRY_RUNS[key]


def _dry_run(method: str, peft_class: str, cfg, modules: tuple[tuple[str, tuple[int, ...]], ...]
             ) -> tuple[list[str], dict[str, list]]:
    present = {path.rsplit(".", 1)[-1] for path, _ in modules}
    if not present & set(cfg.target_modules):
        return [_no_target(method, cfg.target_modules)], {}
    root, paths = _stand_in(modules, cfg.target_modules)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_ADJUSTED)
            model = _inject(method, peft_class, cfg, root, paths)
    except UsageError as exc:
        return [str(exc)], {}
    except RuntimeError as exc:  # a refusal peft did not foresee (the stand-ins are small, on the CPU)
        return [f"{method}: peft cannot build these settings: {exc}".splitlines()[0]], {}
    return [], used_values(model, cfg)


def _peft_builder(name: str, peft_class: str) -> Callable[..., nn.Module]:
    def build(backbone: nn.Module, num_classes: int, cfg, ctx: BuildContext) -> nn.Module:
        targets = resolve_targets(backbone, cfg.target_modules, name)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_ADJUSTED)  # recorded below instead
            model = _inject(name, peft_class, cfg, backbone, targets)
        adjusted = used_values(model, cfg)
        if adjusted:
            ctx.info["adjusted"] = {k: {"set": getattr(cfg, k), "used": v[0] if len(v) == 1 else v}
                                    for k, v in adjusted.items()}
            ctx.notices += [f"{name}.{k}={getattr(cfg, k)}: peft used {', '.join(map(str, v))} instead (it "
                            "adjusts values that the targeted layers' widths or its available kernels do not allow)"
                            for k, v in adjusted.items()]
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
    _config.METHOD, _config.PEFT_CLASS = _name, _cls  # each class its own (PeftDoraConfig subclasses LoRA's)
    register_method(_name, config=_config, description=_description, family="peft")(_peft_builder(_name, _cls))
