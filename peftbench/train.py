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
from .method_api import CachesFrozenFeatures, EpochAware, ExemptsWeightDecay, split_output


class Diverged(RuntimeError):
    """The loss became NaN or infinite: the run ends with status 'diverged' (no batch is skipped)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def effective_precision(cfg: TrainConfig, device: torch.device) -> str:
    """bf16 or fp32 (see ``TrainConfig.settled``; a sweep settles its configs once, in its plan)."""
    return cfg.settled(device.type).precision


def autocast_factory(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    if precision == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def effective_compile(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether training and evaluation are compiled (see ``TrainConfig.settled``)."""
    return cfg.settled(device.type).compile == "true"


COMPILE_BACKEND = "inductor"  # tests swap in a counting backend: guards and recompiles are decided before it
# one graph per (method, backbone, classes, batch shape, train/eval): a sweep of 19 tasks x a few methods
# exceeds dynamo's default of 8 per function, beyond which it would fall back to eager without a word
RECOMPILE_LIMIT = 256
_compiled: dict[tuple[str, object], Callable] = {}


def compile_once(fn: Callable) -> Callable:
    """``fn`` compiled once per process with static shapes, so every run of a sweep reuses its graphs.

    Guards check the model's type and its tensors' shapes, not its identity: a fresh model of the
    same method, backbone and number of classes runs the graph an earlier run compiled.
    """
    key = (fn.__qualname__, COMPILE_BACKEND)
    if key not in _compiled:
        import torch._dynamo.config as dynamo_config

        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
        dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, RECOMPILE_LIMIT)
        _compiled[key] = torch.compile(fn, dynamic=False, backend=COMPILE_BACKEND)
    return _compiled[key]


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def real_sizes(n: int, batch_size: int) -> list[int]:
    """Real samples in each batch of a split of n (the last one short, padded to batch_size)."""
    return [min(batch_size, n - start) for start in range(0, n, batch_size)]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and prompts; none on biases, norms (1-d) and what the model exempts
    through ``no_weight_decay()`` — timm's own grouping, which is exactly this recipe."""
    skip = set(model.no_weight_decay()) if isinstance(model, ExemptsWeightDecay) else set()
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=sorted(skip))


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)  # empty groups are left out
    if not groups:
        raise ValueError("the method left no parameter trainable")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=device.type == "cuda")


def warmup_epochs(cfg: TrainConfig) -> int:
    """The warm-up actually used: as asked, unless it would last the whole run.

    ``--set epochs=2`` under a recipe with 10 warm-up epochs would otherwise train entirely below
    the peak learning rate (chance accuracy at epochs=1); the warm-up is then scaled to 10 % of
    the epochs (the VTAB recipe's ratio, rounded down), with a warning and ``metrics.warmup_scaled``.
    """
    return cfg.warmup_epochs if cfg.warmup_epochs < cfg.epochs else cfg.epochs // 10


def lr_at(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Linear warm-up from warmup_lr to lr, then cosine down to min_lr.

    per_step: updated every step. per_epoch: constant within an epoch, as timm's CosineLRScheduler
    (t_initial=epochs, warmup_prefix off, stepped per epoch) drives the official SHIP runs: warm-up
    warmup_lr + e·(lr - warmup_lr)/warmup_epochs, then the cosine of e/epochs (warm-up epochs included).
    """
    warm_epochs = warmup_epochs(cfg)
    if cfg.schedule == "per_epoch":
        epoch = step // steps_per_epoch
        if epoch < warm_epochs:
            return cfg.warmup_lr + epoch * (cfg.lr - cfg.warmup_lr) / warm_epochs
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, epoch / cfg.epochs)))
    warm = warm_epochs * steps_per_epoch
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


def sample_weights(batch_size: int, real: int, device: torch.device) -> torch.Tensor:
    """1/real for the batch's real samples, 0 for the padding after them: the loss is their mean."""
    w = torch.zeros(batch_size, device=device)
    w[:real] = 1.0 / real
    return w


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, label_smoothing: float
            ) -> torch.Tensor:
    """Cross-entropy plus the auxiliary loss that the method's forward returned, weighted per sample by ``w``.

    Padded samples carry weight 0, so their gradients vanish exactly. A per-sample auxiliary
    loss (shape (B,)) is weighted the same way; a scalar one cannot be masked and is scaled by
    the chunk's share of the batch, as an unweighted mean would be.
    """
    logits, aux = split_output(model(x))
    loss = (F.cross_entropy(logits.float(), y, reduction="none", label_smoothing=label_smoothing) * w).sum()
    if aux is not None:
        loss = loss + ((aux.float() * w).sum() if aux.ndim else aux * w.sum())
    return loss


def make_step(model: nn.Module, opt: torch.optim.Optimizer, cfg: TrainConfig, autocast: Callable,
              compiled: bool = False) -> Callable[..., torch.Tensor]:
    """One optimiser step on a batch (gradient accumulation splits the batch into micro-batches).

    ``step(x, y, w=None)``: ``w`` weights the samples (see :func:`sample_weights`; None: all real).
    With ``compiled``, forward + loss (and through AOTAutograd their backward) run as one graph
    (see :func:`compile_once`), shared by every run of the process.
    """
    params = [p for g in opt.param_groups for p in g["params"]]
    loss_of = compile_once(loss_fn) if compiled else loss_fn
    uniform: dict[int, torch.Tensor] = {}  # made once per batch size, not on every step

    def step(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        if w is None:
            if len(y) not in uniform:
                uniform[len(y)] = sample_weights(len(y), len(y), y.device)
            w = uniform[len(y)]
        opt.zero_grad(set_to_none=True)
        total = x.new_zeros(())
        for xs, ys, ws in zip(x.chunk(cfg.grad_accum), y.chunk(cfg.grad_accum), w.chunk(cfg.grad_accum)):
            with autocast():
                loss = loss_of(model, xs, ys, ws, cfg.label_smoothing)
            loss.backward()
            total = total + loss.detach()
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
    if not (cfg.cache_features and isinstance(model, CachesFrozenFeatures)):
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

    def iterate(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                pad_last: bool = False):
        n = len(self.data)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            if pad_last:
                idx = idx[torch.arange(batch_size) % len(idx)]
            idx = idx.to(self.data.device)
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
class EpochEnd:
    """What the loop knows when an epoch ends: the progress line and the record's history are made of it."""

    epoch: int  # 1-based
    epochs: int
    train_loss: float
    val_top1: float | None  # only when the loop was given a validation split (protocol=val)
    elapsed_s: float  # since the loop started (this attempt)


@dataclass
class TrainResult:
    epochs_done: int
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    val_top1: list[float | None] = field(default_factory=list)  # per epoch, None without a validation split
    first_step_s: float | None = None  # wall time of the first step (compiled: the compilation)
    resumed_from: int = 0  # epochs restored from a checkpoint

    def history(self) -> list[dict[str, float | int | None]]:
        """The record's ``metrics.history``: one entry per epoch, resumed epochs included."""
        return [{"epoch": i + 1, "train_loss": loss, "val_top1": val}
                for i, (loss, val) in enumerate(zip(self.losses, self.val_top1))]


def train(model: nn.Module, batches: Batches, cfg: TrainConfig, device: torch.device, seed: int,
          on_step: Callable[[int, int], None] | None = None, checkpoint: Checkpointer | None = None,
          val_batches: Batches | None = None, on_epoch: Callable[[EpochEnd], None] | None = None
          ) -> TrainResult:
    """Train for cfg.epochs on ``batches``; the test split is never touched here.

    ``val_batches`` (protocol=val only: the val200 split) is evaluated after every epoch for the
    learning curve; evaluation uses no randomness, so the run's result does not change with it.

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
    # every batch at cfg.batch_size (the last one padded, its padding weighted 0): one static shape
    step = make_step(trained, opt, cfg, autocast, compiled=effective_compile(cfg, device))
    sizes = real_sizes(n, cfg.batch_size)
    weights = {real: sample_weights(cfg.batch_size, real, device) for real in set(sizes)}
    gen = torch.Generator().manual_seed(seed)
    result = TrainResult(epochs_done=0)
    fits = {"epochs": cfg.epochs, "steps_per_epoch": steps_per_epoch, "keys": trainable_keys(model)}
    saved = checkpoint.load(fits) if checkpoint else None
    if saved is not None:
        model.load_state_dict(saved["model"], strict=False)
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"], gen)
        result = TrainResult(saved["epochs_done"], list(saved["losses"]),
                             list(saved.get("val_top1", [None] * saved["epochs_done"])),
                             resumed_from=saved["epochs_done"])
    total_steps = cfg.epochs * steps_per_epoch
    done = result.epochs_done * steps_per_epoch
    check_every_step = device.type != "cuda"
    started = time.perf_counter()
    for epoch in range(result.epochs_done, cfg.epochs):
        trained.train()
        if isinstance(model, EpochAware):
            model.on_epoch_start(epoch, cfg.epochs)
        loss_sum = torch.zeros((), device=device)
        seen = 0
        batch_iter = batches.iterate(cfg.batch_size, shuffle=True, generator=gen, pad_last=True)
        for (x, y), real in zip(batch_iter, sizes):
            t0 = time.perf_counter()
            loss = step(x, y, weights[real])
            if result.first_step_s is None:
                loss.item()  # wait for the step to finish
                result.first_step_s = time.perf_counter() - t0
            done += 1
            if check_every_step and not math.isfinite(loss.item()):
                raise Diverged(f"non-finite training loss at step {done} (epoch {epoch + 1})")
            sched.step()
            loss_sum += loss * real
            seen += real
            if on_step:
                on_step(done, total_steps)
        epoch_loss = float(loss_sum) / seen
        if not math.isfinite(epoch_loss):
            raise Diverged(f"non-finite training loss in epoch {epoch + 1}")
        val = None
        if val_batches is not None:
            val = evaluate(model, val_batches, cfg.eval_batch_size, precision, device)
        result.losses.append(epoch_loss)
        result.val_top1.append(val)
        result.epochs_done = epoch + 1
        if on_epoch:
            on_epoch(EpochEnd(epoch + 1, cfg.epochs, epoch_loss, val, time.perf_counter() - started))
        if checkpoint and checkpoint.due(result.epochs_done, cfg.epochs):
            checkpoint.save({**fits, "model": trainable_state(model), "optimizer": opt.state_dict(),
                             "scheduler": sched.state_dict(), "rng": rng_state(gen),
                             "epochs_done": result.epochs_done, "losses": result.losses,
                             "val_top1": result.val_top1})
    return result


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Batches, batch_size: int, precision: str, device: torch.device,
             on_batch: Callable[[int], None] | None = None, compile: bool = False) -> float:
    """Top-1 accuracy in percent, one pass over the split. Compiled, every batch has ``batch_size`` images
    (one static shape: the last batch is padded and the padding's logits dropped); eager, nothing is padded."""
    model.eval()
    autocast = autocast_factory(precision, device)
    run = compile_once(forward) if compile else forward
    correct = torch.zeros((), dtype=torch.long, device=device)
    batch_iter = batches.iterate(batch_size, pad_last=compile)
    for (x, y), real in zip(batch_iter, real_sizes(len(batches.data), batch_size)):
        with autocast():
            logits, _ = split_output(run(model, x))
            logits = logits[:real]
        correct += (logits.argmax(dim=-1) == y[:real]).sum()
        if on_batch:
            on_batch(real)
    return 100.0 * int(correct) / len(batches.data)
