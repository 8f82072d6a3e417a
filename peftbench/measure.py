"""Parameter counts, inference FLOPs (attention included) and timm-style throughput."""

from __future__ import annotations

import copy
import resource
import sys
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> dict[str, int]:
    """Trainable = parameters with requires_grad (never by name); the classifier also alone."""
    params = {id(p): p for p in model.parameters()}.values()
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    head = 0
    if hasattr(model, "get_classifier"):
        head = sum(p.numel() for p in model.get_classifier().parameters())
    return {"trainable_params": trainable, "head_params": head, "total_params": total}


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


def throughput(step: Callable[[torch.Tensor, torch.Tensor], None], batch: int, img_size: tuple[int, int],
               num_classes: int, device: torch.device, steps: int, warmup: int) -> float:
    """Images/s of ``step`` on a fixed random batch on the device, after warm-up (as timm's benchmark)."""
    x = torch.randn(batch, 3, *img_size, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    for _ in range(warmup):
        step(x, y)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    _sync(device)
    return batch * steps / (time.perf_counter() - start)


def measure_throughput(model: nn.Module, make_train_step: Callable[[nn.Module], Callable], img_size: tuple[int, int],
                       num_classes: int, device: torch.device, batch: int, steps: int, warmup: int,
                       autocast: Callable) -> dict[str, float | None]:
    """Training and inference images/s on a copy of the trained model (the result is untouched)."""
    if steps <= 0:
        return {"train_img_per_s": None, "infer_img_per_s": None}
    bench = copy.deepcopy(model)
    bench.eval()

    def infer(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.inference_mode(), autocast():
            bench(x)

    infer_ips = throughput(infer, batch, img_size, num_classes, device, steps, warmup)
    bench.train()
    train_ips = throughput(make_train_step(bench), batch, img_size, num_classes, device, steps, warmup)
    return {"train_img_per_s": train_ips, "infer_img_per_s": infer_ips}


def peak_memory(device: torch.device) -> tuple[int | None, str]:
    """CUDA: peak allocated bytes since the last reset. CPU: the process's peak resident set."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "process_peak_rss"
