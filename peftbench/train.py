"""The one training loop every method shares: AdamW, warm-up + cosine, bf16 on CUDA, one test pass."""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from timm.optim import param_groups_weight_decay
from torch import nn

from .checkpoint import Checkpointer, rng_state, set_rng_state, trainable_keys, trainable_state
from .config import TrainConfig
from .data.images import Batches
from .method_api import MethodOutput, split_output


class Diverged(RuntimeError):
    """The loss became NaN or infinite: the run ends with status 'diverged' (no batch is skipped)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def effective_precision(cfg: TrainConfig, device: torch.device) -> str:
    if cfg.precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return cfg.precision


def autocast_factory(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    if precision == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and prompts; none on biases, norms (1-d) and what the model exempts
    through ``no_weight_decay()`` — timm's own grouping, which is exactly this recipe."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=sorted(skip))


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)  # empty groups are left out
    if not groups:
        raise ValueError("the method left no parameter trainable")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=device.type == "cuda")


def lr_at(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Linear warm-up from warmup_lr to lr, then cosine down to min_lr.

    per_step: updated every step. per_epoch: constant within an epoch, as timm's CosineLRScheduler
    (t_initial=epochs, warmup_prefix off, stepped per epoch) drives the official SHIP runs: warm-up
    warmup_lr + e·(lr - warmup_lr)/warmup_epochs, then the cosine of e/epochs (warm-up epochs included).
    """
    if cfg.schedule == "per_epoch":
        epoch = step // steps_per_epoch
        if epoch < cfg.warmup_epochs:
            return cfg.warmup_lr + epoch * (cfg.lr - cfg.warmup_lr) / cfg.warmup_epochs
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, epoch / cfg.epochs)))
    warm = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    if step < warm:
        return cfg.warmup_lr + (cfg.lr - cfg.warmup_lr) * step / warm
    progress = (step - warm) / max(1, total - warm)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
                   ) -> torch.optim.lr_scheduler.LambdaLR:
    for g in opt.param_groups:
        g["lr"] = cfg.lr
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, steps_per_epoch, cfg) / cfg.lr)


def loss_fn(output: torch.Tensor | MethodOutput, labels: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Cross-entropy plus the auxiliary loss that the method's forward returned, if any."""
    logits, aux = split_output(output)
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing)
    return loss if aux is None else loss + aux


def make_step(model: nn.Module, opt: torch.optim.Optimizer, cfg: TrainConfig, autocast: Callable
              ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One optimiser step on a batch (gradient accumulation splits the batch into micro-batches)."""
    params = [p for g in opt.param_groups for p in g["params"]]

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        total = x.new_zeros(())
        for xs, ys in zip(x.chunk(cfg.grad_accum), y.chunk(cfg.grad_accum)):
            with autocast():
                output = model(xs)
            loss = loss_fn(output, ys, cfg)
            (loss * (len(ys) / len(y))).backward()
            total = total + loss.detach() * (len(ys) / len(y))
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        return total

    return step


def uses_feature_cache(model: nn.Module, cfg: TrainConfig) -> bool:
    """True when only the classifier trains on features that cannot change: compute them once.

    The method opts in by offering ``frozen_features`` and ``classify``; the loop checks that every
    trainable parameter sits in the classifier, so a method cannot get this wrong silently.
    """
    if not (cfg.cache_features and hasattr(model, "frozen_features") and hasattr(model, "classify")):
        return False
    head = {id(p) for p in model.get_classifier().parameters()}
    return all(id(p) in head for p in model.parameters() if p.requires_grad)


class _Classifier(nn.Module):
    """The trainable part of a feature-cached model: features -> logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.classify(features)


class FeatureBatches:
    """Pre-computed features with the same shuffling (and generator use) as :class:`Batches`."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.data, self.labels = features, labels

    def iterate(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None):
        n = len(self.data)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size].to(self.data.device)
            yield self.data[idx], self.labels[idx]


@torch.inference_mode()
def frozen_features(model: nn.Module, batches: Batches, batch_size: int, autocast: Callable) -> torch.Tensor:
    model.eval()
    feats = []
    for x, _ in batches.iterate(batch_size):
        with autocast():
            feats.append(model.frozen_features(x).float())
    return torch.cat(feats)


@dataclass
class TrainResult:
    epochs_done: int
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    first_step_s: float | None = None  # wall time of the first step (with --compile: the compilation)
    resumed_from: int = 0  # epochs restored from a checkpoint


def train(model: nn.Module, batches: Batches, cfg: TrainConfig, device: torch.device, seed: int,
          on_step: Callable[[int, int], None] | None = None, checkpoint: Checkpointer | None = None
          ) -> TrainResult:
    """Train for cfg.epochs on ``batches``; the evaluation split is not touched here.

    A non-finite loss raises :class:`Diverged`: checked every step on the CPU (free), once per
    epoch on CUDA (no sync per step). No batch is ever skipped. With a ``checkpoint``, the
    state it holds is restored first and saved again at the epochs it asks for.
    """
    precision = effective_precision(cfg, device)
    autocast = autocast_factory(precision, device)
    n = len(batches.data)
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    trained = model
    if uses_feature_cache(model, cfg):  # e.g. the linear probe: one pass of the backbone, not one per epoch
        batches = FeatureBatches(frozen_features(model, batches, cfg.eval_batch_size, autocast),
                                 batches.labels.to(device))
        trained = _Classifier(model)
    opt = make_optimizer(trained, cfg, device)
    sched = make_scheduler(opt, cfg, steps_per_epoch)
    # compiled with fixed shapes: one graph for the full batches, one for the last partial batch
    step = make_step(torch.compile(trained, dynamic=False) if cfg.compile else trained, opt, cfg, autocast)
    gen = torch.Generator().manual_seed(seed)
    result = TrainResult(epochs_done=0)
    fits = {"epochs": cfg.epochs, "steps_per_epoch": steps_per_epoch, "keys": trainable_keys(model)}
    saved = checkpoint.load(fits) if checkpoint else None
    if saved is not None:
        model.load_state_dict(saved["model"], strict=False)
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"], gen)
        result = TrainResult(saved["epochs_done"], list(saved["losses"]), resumed_from=saved["epochs_done"])
    total_steps = cfg.epochs * steps_per_epoch
    done = result.epochs_done * steps_per_epoch
    check_every_step = device.type != "cuda"
    for epoch in range(result.epochs_done, cfg.epochs):
        trained.train()
        if hasattr(model, "on_epoch_start"):
            model.on_epoch_start(epoch, cfg.epochs)
        loss_sum = torch.zeros((), device=device)
        seen = 0
        for x, y in batches.iterate(cfg.batch_size, shuffle=True, generator=gen):
            t0 = time.perf_counter()
            loss = step(x, y)
            if result.first_step_s is None:
                loss.item()  # wait for the step to finish
                result.first_step_s = time.perf_counter() - t0
            done += 1
            if check_every_step and not math.isfinite(loss.item()):
                raise Diverged(f"non-finite training loss at step {done} (epoch {epoch + 1})")
            sched.step()
            loss_sum += loss * len(y)
            seen += len(y)
            if on_step:
                on_step(done, total_steps)
        epoch_loss = float(loss_sum) / seen
        if not math.isfinite(epoch_loss):
            raise Diverged(f"non-finite training loss in epoch {epoch + 1}")
        result.losses.append(epoch_loss)
        result.epochs_done = epoch + 1
        if checkpoint and checkpoint.due(result.epochs_done, cfg.epochs):
            checkpoint.save({**fits, "model": trainable_state(model), "optimizer": opt.state_dict(),
                             "scheduler": sched.state_dict(), "rng": rng_state(gen),
                             "epochs_done": result.epochs_done, "losses": result.losses})
    return result


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Batches, batch_size: int, precision: str, device: torch.device,
             on_batch: Callable[[int], None] | None = None) -> float:
    """Top-1 accuracy in percent, one pass over the split."""
    model.eval()
    autocast = autocast_factory(precision, device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    for x, y in batches.iterate(batch_size):
        with autocast():
            logits, _ = split_output(model(x))
        correct += (logits.argmax(dim=-1) == y).sum()
        if on_batch:
            on_batch(len(y))
    return 100.0 * int(correct) / len(batches.data)
