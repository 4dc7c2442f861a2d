"""Learning-rate schedule: linear warmup over ``warmup_ratio`` of the steps, then cosine to zero."""

from __future__ import annotations

import math

import torch


def warmup_cosine(step: int, *, total_steps: int, warmup_steps: int) -> float:
    """LR multiplier for optimizer step ``step`` (0-based: the multiplier used by the (step+1)-th update)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_ratio: float):
    warmup = int(math.ceil(warmup_ratio * total_steps))
    # The lambda itself is not saved (LambdaLR keeps last_epoch and base_lrs); on resume it is rebuilt from
    # the config, and the multiplier depends only on the restored step counter.
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, total_steps=total_steps, warmup_steps=warmup)
    )
