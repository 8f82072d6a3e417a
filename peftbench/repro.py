"""Numerical reproducibility across machines: what a run pins, and what it records about the rest.

On a CPU the result of a run depends on the intra-op thread count (reductions and GEMMs split
their work per thread, so the summation order changes) and on the instruction set the BLAS
(MKL) and oneDNN kernels dispatch to (AVX2, AVX-512, AMX: different blockings). torch's default
thread count is the number of cores, so the same command gave different accuracies on machines
with different core counts. A sweep therefore pins the thread count (``--threads``, default 1 on
a CPU, the same on every machine) and records it with the kernel ISA, so two records can be
compared knowing whether they should agree bit for bit.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .errors import UsageError

DEFAULT_CPU_THREADS = 1  # the same on every machine; tiny models gain little from more on a CPU


def pin_threads(device: torch.device, threads: int | None) -> int:
    """Fix intra-op threads (CPU default: 1) and turn on torch's deterministic algorithms on a CPU;
    returns the intra-op thread count now in force.

    On CUDA the thread count only affects host-side work, so torch's default is kept unless asked;
    deterministic algorithms stay off there (they need CUBLAS_WORKSPACE_CONFIG and cost speed).
    """
    if threads is not None and threads < 1:
        raise UsageError(f"--threads {threads}: must be at least 1")
    if threads is None and device.type == "cpu":
        threads = DEFAULT_CPU_THREADS
    if threads is not None:
        torch.set_num_threads(threads)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.get_num_threads()


def numerics() -> dict[str, Any]:
    """What decides the low bits of a run's numbers, for the record's provenance."""
    return {"intra_op_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "mkl_cbwr": os.environ.get("MKL_CBWR"), "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA")}
