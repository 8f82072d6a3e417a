"""Parameter counts, inference FLOPs (attention included) and timm-style throughput."""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import gc
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from .method_api import HasClassifier, Merges


def count_params(model: nn.Module) -> dict[str, int]:
    """Trainable = parameters with requires_grad (never by name); the classifier also alone."""
    params = {id(p): p for p in model.parameters()}.values()
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    head = 0
    if isinstance(model, HasClassifier):
        head = sum(p.numel() for p in model.get_classifier().parameters())
    return {"trainable_params": trainable, "head_params": head, "total_params": total}


def tensor_ids(module: nn.Module) -> frozenset[int]:
    """Identities of a module's parameters and buffers: taken from the backbone before a method is built."""
    return frozenset(id(t) for t in (*module.parameters(), *module.buffers()))


def stored_per_task(model: nn.Module, backbone: frozenset[int]) -> int:
    """Values a user keeps for each task besides the shared pre-trained backbone.

    Every trainable parameter, plus every frozen parameter or persistent buffer that the method
    added (not among ``backbone``, the pre-trained model's tensors): SHIP's prototype bank, say.
    Found structurally, from the state dict, never by names; non-persistent buffers are
    recomputed, not stored.
    """
    state = {id(t): t for t in model.state_dict(keep_vars=True).values()}.values()
    return sum(t.numel() for t in state if t.requires_grad or id(t) not in backbone)


class Inference(NamedTuple):
    """The model inference cost is measured on, whether it is a merge, and why a merge failed (None: it did not)."""

    model: nn.Module
    merged: bool
    merge_error: BaseException | None = None


def inference_model(model: nn.Module) -> Inference:
    """The model inference cost is measured on: its ``merge()`` (adaptation folded into plain
    backbone weights, what a user deploys) when the method offers one, else the model itself. A
    ``merge()`` that raises leaves the model itself, with the exception to report."""
    if isinstance(model, Merges):
        try:
            with torch.no_grad():
                return Inference(model.merge(), True)
        except torch.cuda.OutOfMemoryError:  # the run's own fate (status oom), not a bug of the method
            raise
        except Exception as exc:  # a method's (a plugin's) bug: the run is still measured, unmerged
            return Inference(model, False, exc)
    return Inference(model, False)


@torch.no_grad()
def logits_problem(model: nn.Module, num_classes: int, img_size: tuple[int, int],
                   device: torch.device | str = "cpu") -> str | None:
    """What is wrong with the logits of an evaluation-mode forward on 2 images (None: nothing).

    Every consumer relies on (images, classes) logits: a wrong shape would otherwise fail deep in the
    loss, or worse, train and score silently on the wrong number of classes."""
    was_training = model.training
    model.eval()
    try:
        out = model(torch.zeros(2, 3, *img_size, device=device))
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        return f"its forward in evaluation mode returned {type(out).__name__}, not a tensor of logits"
    if tuple(out.shape) != (2, num_classes):
        return (f"its forward returned logits of shape {tuple(out.shape)} for 2 images; expected (2, {num_classes}), "
                "(images, classes)")
    return None


@torch.no_grad()
def inference_gflops(model: nn.Module, img_size: tuple[int, int], device: torch.device | str = "cpu") -> float:
    """GFLOPs for one image (2 × multiply-accumulates), matmuls inside attention included.

    torch's FlopCounterMode counts the fused SDPA kernels on CUDA but not CPU's flash kernel,
    so attention is forced onto the math backend here, where it decomposes into counted bmm's.
    """
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, *img_size, device=device)
    counter = FlopCounterMode(display=False)
    try:
        with sdpa_kernel(SDPBackend.MATH), counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


TIMING_WINDOWS = 5  # a run's throughput is the median of this many short timing windows


def throughput(step: Callable[[torch.Tensor, torch.Tensor], None], batch: int, img_size: tuple[int, int],
               num_classes: int, device: torch.device, steps: int, warmup: int) -> list[float]:
    """Images/s of ``step`` on a fixed random batch on the device, after warm-up (as timm's benchmark), in
    ``TIMING_WINDOWS`` windows of ``steps // TIMING_WINDOWS`` steps (at least one) each: one rate per window,
    so that a burst of other work on the machine shows as one outlying window, not as the run's figure."""
    x = torch.randn(batch, 3, *img_size, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    for _ in range(warmup):
        step(x, y)
    per_window = max(1, steps // TIMING_WINDOWS)
    rates = []
    for _ in range(TIMING_WINDOWS):
        _sync(device)
        start = time.perf_counter()
        for _ in range(per_window):
            step(x, y)
        _sync(device)
        rates.append(batch * per_window / (time.perf_counter() - start))
    return rates


class BenchShape(NamedTuple):
    """What throughput is timed on: synthetic batches of ``batch`` images, ``warmup`` untimed steps, then
    the timing windows of ``steps`` steps each."""

    img_size: tuple[int, int]
    num_classes: int
    batch: int
    steps: int
    warmup: int


def measure_throughput(model: nn.Module, make_train_step: Callable[[nn.Module], Callable], shape: BenchShape,
                       device: torch.device, autocast: Callable, inference: nn.Module | None = None) -> dict[str, Any]:
    """Training and inference images/s (the median of the timing windows, all of them under
    ``throughput_windows``) on copies of the trained model (the result is untouched); inference on
    ``inference`` (e.g. the merged model) when given."""
    img_size, num_classes, batch, steps, warmup = shape
    if steps <= 0:
        return {"train_img_per_s": None, "infer_img_per_s": None}
    bench = copy.deepcopy(model if inference is None else inference)
    bench.eval()

    def infer(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.inference_mode(), autocast():
            bench(x)

    infer_ips = throughput(infer, batch, img_size, num_classes, device, steps, warmup)
    if inference is not None:
        bench = copy.deepcopy(model)
    bench.train()
    train_ips = throughput(make_train_step(bench), batch, img_size, num_classes, device, steps, warmup)
    return {"train_img_per_s": statistics.median(train_ips), "infer_img_per_s": statistics.median(infer_ips),
            "throughput_windows": {"train": train_ips, "infer": infer_ips}}


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _release_freed_heap() -> None:
    """Hand memory freed by earlier runs back to the OS (glibc keeps it resident otherwise)."""
    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peak may then include memory an earlier run freed
        pass


def _vm_hwm_bytes() -> int | None:
    try:
        match = re.search(r"^VmHWM:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


class RunMemory:
    """Peak memory of one run, not of the process: a sweep runs many in one process.

    CUDA: torch's peak allocated bytes since :meth:`start`. CPU: the peak resident set since
    :meth:`start`, from Linux's high-water mark ``VmHWM``, which writing "5" to
    ``/proc/self/clear_refs`` resets to the current resident set. The figure includes what the
    process already holds when the run starts (interpreter, torch, the shared backbone weights and
    decoded images), the same for every run of a sweep. Where that reset is unavailable (not Linux)
    the peak is None (the report shows "—"): a lifetime maximum would grow with sweep order.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.kind: str | None = None

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda_max_allocated"
            return
        _release_freed_heap()
        try:
            _CLEAR_REFS.write_text("5")
        except OSError:
            self.kind = None
            return
        self.kind = "run_peak_rss" if _vm_hwm_bytes() is not None else None

    def peak(self) -> tuple[int | None, str | None]:
        """(bytes, kind) since :meth:`start`; (None, None) where this platform cannot tell."""
        if self.kind == "cuda_max_allocated":
            return int(torch.cuda.max_memory_allocated(self.device)), self.kind
        if self.kind == "run_peak_rss":
            return _vm_hwm_bytes(), self.kind
        return None, None
