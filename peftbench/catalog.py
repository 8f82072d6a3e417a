"""Without data: a method's size and cost (``peftbench inspect``), the knobs and training keys (``methods``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from .backbone import load_backbone
from .backbones_meta import DEFAULT_BACKBONE
from .config import Suite, TrainConfig, parse_sets, resolve
from .data.images import default_cache_dir
from .data.tasks import DEFAULT_SUITE, check_suite, infer_suite, resolve_tasks
from .errors import PeftbenchError, UsageError
from .measure import inference_gflops
from .method_api import BuildContext, MethodError
from .registry import get_method
from .sweep.execute import build_model, static_cost
from .sweep.resolve import load_suite, resolve_weights, suite_source


@dataclass
class InspectRequest:
    """``peftbench inspect``: a method on a backbone, without data or training."""

    method: str
    backbone: str | None = None  # None: the suite's backbone, else DEFAULT_BACKBONE
    weights: str = "none"
    num_classes: int | None = None  # None: the task's, else 100
    img_size: int | None = None
    sets: list[str] = field(default_factory=list)
    suite: str | None = None  # None: the one that holds ``task``, else the default suite
    task: str | None = None
    trust_checkpoint: bool = False
    recipe: str = "shared"


def inspect_method(req: InspectRequest) -> dict[str, Any]:
    """Parameters and inference GFLOPs of a method on a backbone, without data or training: the build
    and cost steps of a run (``sweep.execute``), on the CPU.

    The suite gives the default backbone and the recipe; a task its classes and per-task settings (and to a
    method that prepares from data, e.g. SHIP, the task's name for published choices).
    """
    spec = get_method(req.method)
    suite = check_suite(req.suite) if req.suite is not None else infer_suite(req.task, DEFAULT_SUITE)
    suite_recipe = load_suite(suite, None)
    task_spec = resolve_tasks(req.task, suite)[0] if req.task else None
    name = task_spec.name if task_spec else None
    tcfg, mcfg, resolved = resolve(spec, name, suite_recipe, parse_sets(req.sets), req.recipe)
    num_classes = req.num_classes or (task_spec.num_classes if task_spec else 100)
    backbone = req.backbone or suite_recipe.backbone or DEFAULT_BACKBONE
    bb = load_backbone(backbone, resolve_weights(req.weights), req.img_size, req.trust_checkpoint)
    ctx = BuildContext(preprocess=bb.preprocess, device=torch.device("cpu"), backbone_checksum=bb.checksum,
                       cache_dir=default_cache_dir(), task=task_spec)
    try:
        built = build_model(spec, mcfg, tcfg, bb, ctx, num_classes)
        _, cost = static_cost(spec, built, num_classes, bb)
    except MethodError as exc:  # the method broke the contract (logits of the wrong shape): one line
        raise UsageError(str(exc)) from exc
    except PeftbenchError:
        raise
    except Exception as exc:  # a broken method (a plugin): one line, naming the plugin's code
        raise UsageError(f"{req.method}: {type(exc).__name__}: {exc}{spec.blame(exc)}") from exc
    out = {"method": req.method, "suite": suite_recipe.name, "suite_source": suite_source(suite_recipe),
           "task": name, "backbone": backbone, "weights": bb.weights, "num_classes": num_classes,
           "img_size": list(bb.preprocess.img_size), **cost,
           "config": resolved["method"], "method_info": ctx.info, "notices": ctx.notices}
    if cost["merged"]:  # what the adaptation costs before it is folded in
        out["gflops_unmerged"] = inference_gflops(built.model, bb.preprocess.img_size)
    return out


def method_table(suite: Suite | None = None) -> list[dict[str, Any]]:
    """Every method's knobs with the defaults of ``suite`` (its ``methods.<m>`` section), else the built-in ones."""
    from .registry import available_methods

    out = []
    for n in available_methods():
        spec = get_method(n)
        own = suite.methods.get(n, {}) if suite else {}
        knobs = [{**k, "default": own.get(k["name"], k["default"])} for k in spec.knobs()]
        out.append({"name": n, "description": spec.description, "knobs": knobs, "family": spec.family_name,
                    "version": spec.version})
    return out


def train_keys(suite: Suite | None = None) -> list[dict[str, Any]]:
    """The training keys with the defaults of ``suite`` (its ``defaults`` section), else the built-in ones."""
    own = suite.defaults if suite else {}
    return [{"name": f.name, "default": own.get(f.name, f.default), "help": f.metadata.get("help", "")}
            for f in dataclasses.fields(TrainConfig)]
