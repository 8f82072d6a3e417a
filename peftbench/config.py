"""Resolved run configuration: training recipe + method knobs, layered from suite file and --set.

Precedence (later wins): built-in defaults < suite ``defaults`` < suite ``methods.<m>`` <
suite ``tasks.<t>.<m>`` < ``--set KEY=VALUE`` < ``--set <m>.KEY=VALUE``. A key is either a
training key (a field of :class:`TrainConfig`) or a knob of the method's config dataclass.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UsageError
from .registry import MethodSpec, available_methods, did_you_mean
from .suite_schema import check_suite_shape

# here, not in backbone.py, so that the CLI's help text does not import torch
DEFAULT_BACKBONE = "vit_base_patch16_224.orig_in21k"


@dataclass
class TrainConfig:
    """The one training recipe every method shares (defaults: the common VTAB-1k recipe)."""

    protocol: str = field(default="final", metadata={
        "help": "final: train800val200 -> test once; val: train800 -> val200"})
    epochs: int = field(default=100, metadata={"help": "training epochs"})
    batch_size: int = field(default=64, metadata={"help": "training batch size"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (AdamW)"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay (not on biases and norms)"})
    warmup_epochs: int = field(default=10, metadata={"help": "linear warm-up epochs"})
    warmup_lr: float = field(default=1e-7, metadata={"help": "learning rate at the start of warm-up"})
    min_lr: float = field(default=1e-8, metadata={"help": "floor of the cosine schedule"})
    label_smoothing: float = field(default=0.0, metadata={"help": "cross-entropy label smoothing"})
    grad_clip: float = field(default=0.0, metadata={"help": "max gradient norm; 0 = off"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps (effective batch kept)"})
    drop_path: float = field(default=0.0, metadata={"help": "stochastic depth rate of the backbone"})
    precision: str = field(default="auto", metadata={"help": "auto (bf16 on CUDA, fp32 on CPU), bf16 or fp32"})
    eval_batch_size: int = field(default=256, metadata={"help": "batch size for evaluation"})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the training forward (pays off for long GPU runs; compile time is recorded)"})
    cache_features: bool = field(default=True, metadata={
        "help": "when only the classifier trains on frozen features (linear probe), compute them once"})
    bench_steps: int = field(default=10, metadata={"help": "timed steps for throughput (0 = skip)"})
    bench_warmup: int = field(default=3, metadata={"help": "warm-up steps before timing throughput"})
    bench_batch: int = field(default=64, metadata={"help": "batch size for throughput measurement"})

    def __post_init__(self) -> None:
        if self.protocol not in ("final", "val"):
            raise UsageError(f"protocol={self.protocol!r}: expected 'final' or 'val'")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise UsageError(f"precision={self.precision!r}: expected auto, bf16 or fp32")
        for name in ("epochs", "batch_size", "eval_batch_size", "grad_accum", "bench_batch"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name}={getattr(self, name)}: must be at least 1")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):  # nan passes every comparison below
                raise UsageError(f"{f.name}={value}: must be a finite number")
        if self.warmup_epochs < 0 or self.lr <= 0 or self.weight_decay < 0:
            raise UsageError("warmup_epochs, lr and weight_decay must be non-negative (lr > 0)")


TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML/CLI value to a dataclass field type, with a clear error."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return coerce(value, args[0], where)
    if origin in (tuple, list):
        (inner, *_) = typing.get_args(tp) or (str,)
        if isinstance(value, str):
            value = [v for v in value.replace(" ", ",").split(",") if v]
        elif not isinstance(value, (list, tuple)):
            value = [value]
        items = [coerce(v, inner, where) for v in value]
        return tuple(items) if origin is tuple else items
    try:
        if tp is bool:
            if isinstance(value, str):
                low = value.lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: {value!r} is not a valid {getattr(tp, '__name__', tp)}") from None
    return value


def build_dataclass(cls: type, values: dict[str, Any], where: str, origins: dict[str, str] | None = None) -> Any:
    """``origins`` names where each value was set (suite file and key path, --set), for errors."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, val in values.items():
        if key not in names:
            raise UsageError(f"{where}: unknown key '{key}'" + did_you_mean(key, names))
        kwargs[key] = coerce(val, hints[key], (origins or {}).get(key, f"{where} {key}"))
    try:
        return cls(**kwargs)
    except UsageError:
        raise
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{where}: {exc}") from exc


def parse_sets(items: list[str]) -> list[tuple[str | None, str, Any]]:
    """``--set KEY=VALUE`` -> (method or None, key, value). Values are parsed as YAML scalars."""
    out = []
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--set {item}: expected KEY=VALUE")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if "." in key:
            method, knob = key.split(".", 1)
            if method not in available_methods():
                raise UsageError(f"--set {item}: unknown method '{method}'" + did_you_mean(method, available_methods()))
            out.append((method, knob, value))
        else:
            if key not in TRAIN_KEYS:
                raise UsageError(f"--set {item}: unknown training key '{key}'" + did_you_mean(key, sorted(TRAIN_KEYS))
                                 + " (method knobs are set as METHOD.KNOB)")
            out.append((None, key, value))
    return out


@dataclass
class Suite:
    name: str
    backbone: str | None = None  # default backbone of the suite (--backbone overrides)
    weights: str | None = None  # default weights: a path, "pretrained", "none" or "package:FILE" (shipped)
    defaults: dict[str, Any] = field(default_factory=dict)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    source: str = "built-in defaults"


def load_suite_file(path: Path) -> Suite:
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"suite file {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise UsageError(f"suite file {path}: expected a mapping at the top level")
    unknown = set(raw) - {"suite", "defaults", "methods", "tasks", "description", "backbone", "weights"}
    if unknown:
        raise UsageError(f"suite file {path}: unknown section(s) {', '.join(sorted(unknown))}")
    check_suite_shape(raw, Path(path))
    for key in raw.get("defaults") or {}:
        if key not in TRAIN_KEYS:
            raise UsageError(f"suite file {path}: defaults: unknown training key '{key}'"
                             + did_you_mean(key, sorted(TRAIN_KEYS)))
    return Suite(name=str(raw.get("suite", Path(path).stem)), backbone=raw.get("backbone"), weights=raw.get("weights"),
                 defaults=dict(raw.get("defaults") or {}),
                 methods={k: dict(v or {}) for k, v in (raw.get("methods") or {}).items()},
                 tasks={t: {m: dict(v or {}) for m, v in (ms or {}).items()}
                        for t, ms in (raw.get("tasks") or {}).items()},
                 source=str(path))


def resolve(spec: MethodSpec, task: str | None, suite: Suite, sets: list[tuple[str | None, str, Any]]
            ) -> tuple[TrainConfig, Any, dict[str, Any]]:
    """-> (training config, method config, the resolved dict that goes into the record and run id)."""
    knob_names = {f.name for f in dataclasses.fields(spec.config_cls)}
    train: dict[str, Any] = dict(suite.defaults)
    knobs: dict[str, Any] = {}
    origins = {key: f"{suite.source}: defaults.{key}" for key in train}

    def layer(values: dict[str, Any], where: str) -> None:
        for key, val in values.items():
            if key in knob_names:
                knobs[key] = val
            elif key in TRAIN_KEYS:
                train[key] = val
            else:
                raise UsageError(f"{where}: '{key}' is neither a training key nor a knob of '{spec.name}'"
                                 + did_you_mean(key, sorted(knob_names | TRAIN_KEYS)))
            origins[key] = f"{where}.{key}"

    layer(suite.methods.get(spec.name, {}), f"{suite.source}: methods.{spec.name}")
    if task is not None:
        layer(suite.tasks.get(task, {}).get(spec.name, {}), f"{suite.source}: tasks.{task}.{spec.name}")
    for method, key, val in sets:
        if method is None:
            train[key] = val
            origins[key] = f"--set {key}"
        elif method == spec.name:
            layer({key: val}, f"--set {method}.{key}")
            origins[key] = f"--set {method}.{key}"
    tcfg = build_dataclass(TrainConfig, train, "training config", origins)
    mcfg = build_dataclass(spec.config_cls, knobs, f"method '{spec.name}'", origins)
    resolved = {"train": dataclasses.asdict(tcfg), "method": _jsonable(dataclasses.asdict(mcfg))}
    return tcfg, mcfg, resolved


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
