"""What a training step runs on: the model compiled (``train.torch_compile``) or eager, and the attention
kernel (``model.attention_backend`` resolved for the device: flex, SDPA or eager).

Both fast paths can fail where nothing else does: torch.compile on a compiler error, flex attention on a GPU
whose shared memory is too small for its kernels, or on a CPU (torch has no CPU backward for flex). They fail
at the first step, when the kernels are built. The trainer then switches once, says on stderr what failed and
what it runs instead, drops the step's partial gradients and runs the step again (:func:`fallback`): flex
attention gives way to SDPA (same mask) first, then the compiled model to the eager one. Past the first step
nothing is caught. ``metrics.jsonl`` records ``attention_backend`` and ``compiled`` on every line, so a run's
numerics are never changed silently.

The ranks are assumed to fail alike (same model, shapes and hardware); a failure on one rank only would
leave the others waiting in a collective.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

import torch

KERNEL_NAMES = {"flex": "flex attention", "sdpa": "SDPA", "eager": "eager attention"}


@dataclass(frozen=True)
class StepPaths:
    compiled: bool  # the draft (DDP / FSDP wrapped) runs through torch.compile
    attention_backend: str  # resolved: flex, sdpa or eager


@dataclass(frozen=True)
class Fallback:
    paths: StepPaths  # what the step runs on next
    message: str  # said once, on rank 0


def fallback(paths: StepPaths, exc: BaseException) -> Fallback | None:
    """The next paths to try after the first step failed with ``exc``; None when nothing is left to drop."""
    reason = describe(exc)
    if paths.attention_backend == "flex":
        new = replace(paths, attention_backend="sdpa")
        what, instead = "flex attention", "SDPA with the same mask (a dense [B, Lq, Lk] mask: more memory)"
    elif paths.compiled:
        new = replace(paths, compiled=False)
        what, instead = "torch.compile", "the eager model"
    else:
        return None
    return Fallback(
        paths=new,
        message=(
            f"[train] warning: {what} failed at the first step ({reason}); running {instead} from here on. "
            "The first step is run again from its start; metrics.jsonl records attention_backend="
            f"{new.attention_backend} and compiled={str(new.compiled).lower()}"
        ),
    )


def describe(exc: BaseException, *, depth: int = 3) -> str:
    """``Type: first line`` of ``exc`` and of what it wraps (dynamo's ``BackendCompilerFailed`` names the
    backend; the compiler's own error is its ``inner_exception``)."""
    parts = []
    while exc is not None and len(parts) < depth:
        parts.append(f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}")
        exc = getattr(exc, "inner_exception", None) or exc.__cause__
    return " <- ".join(parts)[:500]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def mark_sequence_dynamic(batch: dict[str, torch.Tensor]) -> None:
    """Tell dynamo the sequence length (dim 1 of every [B, T, ...] input) varies from batch to batch.

    Otherwise the first batch's length is compiled in, and each new one recompiles: a second graph at step 2
    (automatic dynamic shapes), or one per length where a value specialises it, until dynamo's recompile limit
    is reached and the model silently runs eagerly.
    """
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            torch._dynamo.maybe_mark_dynamic(value, 1)
