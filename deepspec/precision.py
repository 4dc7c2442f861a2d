"""Which compute dtype is fast here: bf16 on GPUs, and on CPUs only where the hardware has it.

CPUs with native bf16 matrix units (AVX512-BF16, AMX) train ~1.8x faster under bf16 autocast;
AVX2-only CPUs (e.g. AMD EPYC Zen 3) emulate bf16 at 7-16x the cost of fp32, so ``auto`` picks fp32
there. The choice reads CPU flags, not a timing, so a build on one machine is reproducible.
Override with ``DEEPSPEC_CPU_BF16=1`` / ``0``.
"""

from __future__ import annotations

import functools
import os

import torch

PRECISIONS = ("auto", "bf16", "fp32")
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    forced = os.environ.get("DEEPSPEC_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return any(flag in line.split() for flag in _NATIVE_BF16_FLAGS)
    except OSError:
        pass
    return torch.backends.mps.is_available()  # Apple silicon has bf16; elsewhere assume emulation


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``bf16`` or ``fp32`` for ``precision`` in :data:`PRECISIONS` on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    kind = torch.device(device).type
    return "bf16" if kind == "cuda" or (kind == "cpu" and cpu_has_native_bf16()) else "fp32"


def describe_choice(precision: str, device: torch.device | str) -> dict:
    """What ``precision`` resolves to on ``device`` and why, for markers, metrics and the one log line."""
    chosen = resolve_precision(precision, device)
    kind = torch.device(device).type
    if precision != "auto":
        why = f"{precision} as configured"
    elif kind != "cpu":
        why = f"{kind} device"
    elif os.environ.get("DEEPSPEC_CPU_BF16") in ("0", "1"):
        why = f"DEEPSPEC_CPU_BF16={os.environ['DEEPSPEC_CPU_BF16']}"
    elif chosen == "bf16":
        why = "CPU has native bf16 (" + "/".join(_NATIVE_BF16_FLAGS) + " in /proc/cpuinfo, or Apple silicon)"
    else:
        why = (
            "CPU lacks native bf16 (no " + "/".join(_NATIVE_BF16_FLAGS) + " in /proc/cpuinfo): "
            "bf16 would be emulated at 7-16x the cost of fp32"
        )
    return {"requested": precision, "compute_dtype": chosen, "device": kind, "reason": why}


def target_precision(device: torch.device | str) -> str:
    """The frozen target's forward dtype, the same for the cache builder and online training.

    One rule for both producers of training batches, so a cache and the live target agree: the ``auto`` choice.
    """
    return resolve_precision("auto", device)
