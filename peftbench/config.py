"""Resolved run configuration: training recipe + method knobs, layered from suite file and --set.

Precedence (later wins): built-in defaults < suite ``defaults`` < suite ``methods.<m>`` <
``recipes.<r>.methods.<m>`` < ``recipes.<r>.tasks.<t>.<m>`` < ``--set KEY=VALUE`` <
``--set <m>.KEY=VALUE``. A key is either a training key (a field of :class:`TrainConfig`) or a
knob of the method's config dataclass. The default recipe, ``shared``, is ``defaults`` +
``methods`` only: one recipe for every task, nothing per method and task. A named recipe (e.g.
``official``: the authors' published per-task settings) is opt-in and recorded in the run.
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

from .backbones_meta import DEFAULT_BACKBONE  # noqa: F401  (config.DEFAULT_BACKBONE stays importable)
from .errors import UsageError
from .registry import MethodSpec, available_methods
from .suite_schema import check_suite_shape
from .util import did_you_mean


@dataclass
class TrainConfig:
    """The one training recipe every method shares (defaults: the common VTAB-1k recipe)."""

    protocol: str = field(default="final", metadata={
        "help": "final: train800val200 -> test once; val: train800 -> val200"})
    epochs: int = field(default=100, metadata={"help": "training epochs"})
    batch_size: int = field(default=64, metadata={"help": "training batch size"})
    optimizer: str = field(default="adamw", metadata={"help": "adamw, or sgd (with momentum; VPT's recipe)"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum (optimizer=sgd only)"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    weight_decay: float = field(default=1e-4, metadata={"help": "weight decay (not on biases and norms)"})
    schedule: str = field(default="per_step", metadata={
        "help": "per_step: warm-up + cosine updated every step; per_epoch: updated once per epoch "
                "(timm's scheduler as the official SHIP code uses it)"})
    warmup_epochs: int = field(default=10, metadata={"help": "linear warm-up epochs"})
    warmup_lr: float = field(default=1e-7, metadata={"help": "learning rate at the start of warm-up"})
    min_lr: float = field(default=1e-8, metadata={"help": "floor of the cosine schedule"})
    label_smoothing: float = field(default=0.0, metadata={"help": "cross-entropy label smoothing"})
    grad_clip: float = field(default=0.0, metadata={"help": "max gradient norm; 0 = off"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps (effective batch kept)"})
    drop_path: float = field(default=0.0, metadata={"help": "stochastic depth rate of the backbone"})
    precision: str = field(default="auto", metadata={"help": "auto (bf16 on CUDA, fp32 on CPU), bf16 or fp32"})
    eval_batch_size: int = field(default=256, metadata={"help": "batch size for evaluation"})
    compile: str = field(default="auto", metadata={
        "help": "torch.compile forward+loss and evaluation: auto (on for CUDA, off on the CPU), true or false; "
                "static shapes, graphs shared by the runs of a sweep, compile time counted in the wall times"})
    cache_features: bool = field(default=True, metadata={
        "help": "when only the classifier trains on frozen features (linear probe), compute them once"})
    bench_steps: int = field(default=10, metadata={"help": "timed steps for throughput (0 = skip)"})
    bench_warmup: int = field(default=3, metadata={"help": "warm-up steps before timing throughput"})
    bench_batch: int = field(default=64, metadata={"help": "batch size for throughput measurement"})

    def __post_init__(self) -> None:
        if self.protocol not in ("final", "val"):
            raise UsageError(f"protocol={self.protocol!r}: expected 'final' or 'val'")
        if self.optimizer not in ("adamw", "sgd"):
            raise UsageError(f"optimizer={self.optimizer!r}: expected adamw or sgd")
        if self.schedule not in ("per_step", "per_epoch"):
            raise UsageError(f"schedule={self.schedule!r}: expected per_step or per_epoch")
        self.compile = str(self.compile).lower()  # YAML / --set give booleans
        if self.compile not in ("auto", "true", "false"):
            raise UsageError(f"compile={self.compile!r}: expected auto, true or false")
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

    def settled(self, device_type: str) -> TrainConfig:
        """The recipe with ``precision`` and ``compile`` decided for a device ("cuda", "cpu", ...): the one
        place where "auto" is resolved. auto precision: bf16 on CUDA, fp32 elsewhere; auto compile: on for
        CUDA (fewer launches, fused kernels), off on the CPU (compiling costs more than it saves there)."""
        cuda = device_type == "cuda"
        precision = ("bf16" if cuda else "fp32") if self.precision == "auto" else self.precision
        compile_ = ("true" if cuda else "false") if self.compile == "auto" else self.compile
        if (precision, compile_) == (self.precision, self.compile):
            return self
        return dataclasses.replace(self, precision=precision, compile=compile_)


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


SHARED_RECIPE = "shared"


@dataclass
class Recipe:
    """Opt-in settings on top of the shared recipe, per method and per method-and-task."""

    name: str
    note: str = ""  # said in words under every table of this recipe (e.g. "chosen on test by the authors")
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


@dataclass
class TuneSpace:
    """``tune:`` of a suite: the shared grid every method searches, per-method knob values, the budget."""

    grid: dict[str, list[Any]] = field(default_factory=dict)  # training keys, e.g. lr, weight_decay
    methods: dict[str, dict[str, list[Any]]] = field(default_factory=dict)  # overrides of the knobs' "search"
    budget: int | None = None


@dataclass
class Suite:
    name: str
    backbone: str | None = None  # default backbone of the suite (--backbone overrides)
    weights: str | None = None  # default weights: a path, "pretrained", "none" or "package:FILE" (shipped)
    defaults: dict[str, Any] = field(default_factory=dict)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    recipes: dict[str, Recipe] = field(default_factory=dict)
    tune: TuneSpace = field(default_factory=TuneSpace)
    source: str = "built-in defaults"
    default_methods: list[str] | None = None  # what run / tune do without --methods; None: every registered method

    def recipe(self, name: str) -> Recipe | None:
        """The named recipe (None for shared); an unknown name is a clear error."""
        if name == SHARED_RECIPE:
            return None
        if name not in self.recipes:
            raise UsageError(f"--recipe {name}: suite '{self.name}' ({self.source}) has no such recipe; it has: "
                             + ", ".join([SHARED_RECIPE, *sorted(self.recipes)]))
        return self.recipes[name]


def _per_task(raw: Any) -> dict[str, dict[str, dict[str, Any]]]:
    return {t: {m: dict(v or {}) for m, v in (ms or {}).items()} for t, ms in (raw or {}).items()}


def _recipes(raw: Any, path: Path) -> dict[str, Recipe]:
    out = {}
    for name, body in (raw or {}).items():
        body = body or {}
        unknown = set(body) - {"note", "methods", "tasks"}
        if name == SHARED_RECIPE or unknown:
            raise UsageError(f"suite file {path}: recipes.{name}: " + (
                "'shared' is the suite's defaults and methods sections" if name == SHARED_RECIPE
                else f"unknown key(s) {', '.join(sorted(unknown))} (expected note, methods, tasks)"))
        out[name] = Recipe(name, str(body.get("note", "")),
                           {k: dict(v or {}) for k, v in (body.get("methods") or {}).items()},
                           _per_task(body.get("tasks")))
    return out


def _tune_space(raw: Any, path: Path) -> TuneSpace:
    raw = raw or {}
    unknown = set(raw) - {"grid", "methods", "budget"}
    if unknown:
        raise UsageError(f"suite file {path}: tune: unknown key(s) {', '.join(sorted(unknown))} "
                         "(expected grid, methods, budget)")

    def values(where: str, v: Any) -> list[Any]:
        if not isinstance(v, list) or not v:
            raise UsageError(f"suite file {path}: {where}: expected a non-empty list of values, got {v!r}")
        return v

    grid = {k: values(f"tune.grid.{k}", v) for k, v in (raw.get("grid") or {}).items()}
    for key in grid:
        if key not in TRAIN_KEYS:
            raise UsageError(f"suite file {path}: tune.grid: unknown training key '{key}'"
                             + did_you_mean(key, sorted(TRAIN_KEYS)))
    methods = {m: {k: values(f"tune.methods.{m}.{k}", v) for k, v in (knobs or {}).items()}
               for m, knobs in (raw.get("methods") or {}).items()}
    return TuneSpace(grid, methods, raw.get("budget"))


def load_suite_file(path: Path) -> Suite:
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"suite file {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise UsageError(f"suite file {path}: expected a mapping at the top level")
    if "tasks" in raw:
        raise UsageError(f"suite file {path}: a top-level 'tasks' section (per-task settings) belongs under a "
                         "named recipe: recipes: NAME: tasks: ... (run it with --recipe NAME); the default "
                         "recipe is shared by every task")
    unknown = set(raw) - {"suite", "defaults", "methods", "recipes", "tune", "description", "backbone", "weights",
                          "default_methods"}
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
                 recipes=_recipes(raw.get("recipes"), path), tune=_tune_space(raw.get("tune"), path),
                 source=str(path), default_methods=raw.get("default_methods"))


def resolve(spec: MethodSpec, task: str | None, suite: Suite, sets: list[tuple[str | None, str, Any]],
            recipe: str = SHARED_RECIPE) -> tuple[TrainConfig, Any, dict[str, Any]]:
    """-> (training config, method config, the resolved dict that goes into the record and run id).

    ``resolved["recipe"]`` names the recipe that actually applied to this method: a named recipe
    with nothing for it (VPT under ``official``) leaves it on ``shared``.
    """
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
    chosen = suite.recipe(recipe)
    applied = SHARED_RECIPE
    if chosen is not None:
        where = f"{suite.source}: recipes.{chosen.name}"
        if spec.name in chosen.methods or any(spec.name in ms for ms in chosen.tasks.values()):
            applied = chosen.name
        layer(chosen.methods.get(spec.name, {}), f"{where}.methods.{spec.name}")
        if task is not None:
            layer(chosen.tasks.get(task, {}).get(spec.name, {}), f"{where}.tasks.{task}.{spec.name}")
    for method, key, val in sets:
        if method is None:
            train[key] = val
            origins[key] = f"--set {key}"
        elif method == spec.name:
            layer({key: val}, f"--set {method}.{key}")
            origins[key] = f"--set {method}.{key}"
    tcfg = build_dataclass(TrainConfig, train, "training config", origins)
    mcfg = build_dataclass(spec.config_cls, knobs, f"method '{spec.name}'", origins)
    resolved = {"train": dataclasses.asdict(tcfg), "method": _jsonable(method_knobs(mcfg)), "recipe": applied}
    return tcfg, mcfg, resolved


def method_knobs(mcfg: Any) -> dict[str, Any]:
    """The knobs that go into the record and the run id: a knob declared with
    ``metadata={"recorded_if_set": True}`` (added to a method after records of it existed) is left
    out while at its default, so those records keep their run ids; set, it is recorded as usual."""
    out = dataclasses.asdict(mcfg)
    for f in dataclasses.fields(mcfg):
        if f.metadata.get("recorded_if_set") and f.default is not dataclasses.MISSING and out[f.name] == f.default:
            del out[f.name]
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
