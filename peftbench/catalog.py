"""Without data: a method's size and cost (``peftbench inspect``), the knobs and training keys (``methods``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .backbone import load_backbone
from .backbones_meta import DEFAULT_BACKBONE
from .config import Suite, TrainConfig, parse_sets, resolve
from .data.images import default_cache_dir
from .data.tasks import DEFAULT_SUITE, check_suite, infer_suite, resolve_tasks
from .errors import PeftbenchError, UsageError
from .jobs import load_suite, resolve_weights, suite_source
from .measure import count_params, inference_gflops, inference_model, logits_problem, stored_per_task, tensor_ids
from .method_api import BuildContext
from .registry import get_method


def inspect_method(method: str, backbone: str | None = None, weights: str = "none", num_classes: int | None = None,
                   img_size: int | None = None, sets: list[str] | None = None, suite: str | None = None,
                   task: str | None = None, trust_checkpoint: bool = False, recipe: str = "shared"
                   ) -> dict[str, Any]:
    """Parameters and inference GFLOPs of a method on a backbone, without data or training.

    The suite (None: the one that holds ``task``, else the default) gives the default backbone and the
    recipe; a task its classes and per-task settings (and to a method that prepares from data, e.g.
    SHIP, the task's name for published choices).
    """
    spec = get_method(method)
    suite = check_suite(suite) if suite is not None else infer_suite(task, DEFAULT_SUITE)
    suite_recipe = load_suite(suite, None)
    task_spec = resolve_tasks(task, suite)[0] if task else None
    name = task_spec.name if task_spec else None
    tcfg, mcfg, resolved = resolve(spec, name, suite_recipe, parse_sets(sets or []), recipe)
    num_classes = num_classes or (task_spec.num_classes if task_spec else 100)
    backbone = backbone or suite_recipe.backbone or DEFAULT_BACKBONE
    bb = load_backbone(backbone, resolve_weights(weights), img_size, trust_checkpoint)
    vit = bb.instantiate(num_classes, drop_path=tcfg.drop_path)
    shared = tensor_ids(vit)
    ctx = BuildContext(preprocess=bb.preprocess, device=torch.device("cpu"), backbone_checksum=bb.checksum,
                       cache_dir=default_cache_dir(), task=task_spec)
    try:
        model = spec.build_on(backbone, vit, num_classes, mcfg, ctx)
        problem = logits_problem(model, num_classes, bb.preprocess.img_size)
    except PeftbenchError:
        raise
    except Exception as exc:  # a broken method (a plugin): one line, naming the plugin's code
        raise UsageError(f"{method}: {type(exc).__name__}: {exc}{spec.blame(exc)}") from exc
    if problem:
        raise UsageError(f"method '{method}'{spec.origin}: {problem}")
    merged_model, merged, merge_error = inference_model(model)
    out = {"method": method, "suite": suite_recipe.name, "suite_source": suite_source(suite_recipe), "task": name,
           "backbone": backbone, "weights": bb.weights, "num_classes": num_classes,
           "img_size": list(bb.preprocess.img_size), **count_params(model),
           "stored_per_task_params": stored_per_task(model, shared),
           "gflops": inference_gflops(merged_model, bb.preprocess.img_size), "merged": merged,
           "config": resolved["method"], "method_info": ctx.info, "notices": ctx.notices}
    if merge_error is not None:
        out["merge_error"] = f"{type(merge_error).__name__}: {merge_error}{spec.blame(merge_error)}"
    if merged:  # what the adaptation costs before it is folded in
        out["gflops_unmerged"] = inference_gflops(model, bb.preprocess.img_size)
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
