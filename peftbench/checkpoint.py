"""Per-epoch training checkpoints, so an interrupted run resumes where it stopped.

One file per run, ``<out>/.checkpoints/<run_id>.pt``: the model's trainable parameters and
buffers, optimiser, schedule, epochs done, losses so far and every random-number state
(python, numpy, torch, CUDA, the shuffle generator). Written atomically, read with
``weights_only=True`` (no pickled code runs), so a resumed run continues bit for bit on
the same device. A damaged or mismatched file is reported and ignored: the run starts over.
A checkpoint that cannot be saved (a full disk) is reported once and checkpointing stops for
that run: losing a checkpoint must never throw away the training itself.
"""

from __future__ import annotations

import random
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .atomic import atomic_write, write_problem

FORMAT = 2  # 2: optimizer groups in timm's order (no-decay first); a format-1 checkpoint is ignored


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG the loop draws from, as tensors and plain values (loadable with weights_only)."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {"python": [py_version, list(py_internal), py_gauss],
            "numpy": [np_kind, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss),
                      float(np_gauss)],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "shuffle": generator.get_state()}


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["shuffle"])


def trainable_keys(model: nn.Module) -> list[str]:
    """What training changes: parameters that require grad, and buffers (frozen weights are rebuilt)."""
    keep = {n for n, p in model.named_parameters() if p.requires_grad} | {n for n, _ in model.named_buffers()}
    return [k for k in model.state_dict(keep_vars=True) if k in keep]


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    keys = set(trainable_keys(model))
    return {k: v for k, v in model.state_dict().items() if k in keys}


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C / SIGTERM until the block ends, then deliver it to the handler that was in place.

    torch.save writes through C++: a KeyboardInterrupt raised inside its write callback comes out as a
    RuntimeError ("unexpected pos"), which would read as a failed save and swallow the interrupt. A save
    takes milliseconds, so the interrupt is simply delivered right after it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught:
        signal.raise_signal(caught[0])  # the CLI's handlers turn it into KeyboardInterrupt


@dataclass
class Checkpointer:
    """Saves every ``every`` epochs (0 = never) and loads whatever a previous attempt left."""

    path: Path
    every: int = 0
    note: Callable[[str], None] = field(default=lambda text: None)

    def __post_init__(self) -> None:
        self.failed = False

    def due(self, epochs_done: int, epochs: int) -> bool:
        return self.every > 0 and not self.failed and epochs_done % self.every == 0 and epochs_done < epochs

    def save(self, state: dict[str, Any]) -> None:
        """Write the state atomically; on failure warn (naming the cause) and stop checkpointing this run."""
        # through a Python file object, so a full disk surfaces as OSError(ENOSPC), not torch's "unexpected pos"
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                torch.save({"format": FORMAT, **state}, fh)

        try:
            with interrupts_deferred():
                atomic_write(self.path, write)
        except (OSError, RuntimeError) as exc:
            self.failed = True
            cause = write_problem(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
            self.note(f"warning: cannot save the training checkpoint {self.path} after epoch "
                      f"{state.get('epochs_done', '?')} ({cause}); training goes on without checkpoints "
                      f"(an interruption now restarts from {self._kept()})")

    def _kept(self) -> str:
        return "the last saved checkpoint" if self.path.is_file() else "the beginning"

    def load(self, expect: dict[str, Any]) -> dict[str, Any] | None:
        """The saved state if it exists, is readable and matches ``expect`` (e.g. epochs); else None."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated, foreign or pickled-code file: never fatal, never executed
            self.note(f"checkpoint {self.path} ignored (unreadable: {type(exc).__name__}); starting the run over")
            return None
        if not isinstance(state, dict) or state.get("format") != FORMAT or any(
                state.get(k) != v for k, v in expect.items()):
            self.note(f"checkpoint {self.path} ignored (does not match this run); starting the run over")
            return None
        self.note(f"resuming from epoch {state.get('epochs_done')} of {state.get('epochs', '?')} "
                  f"(checkpoint {self.path})")
        return state

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
