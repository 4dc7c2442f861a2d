"""Losses and metrics of the drafts, as *sums* plus weight sums.

The trainer adds the sums over micro-batches and ranks, then divides once
(``loss = loss_sum / weight_sum`` after an all-reduce of both), so the result
does not depend on how tokens are split across ranks.

Parallel drafters (DSpark / DFlash), per supervised slot k (0-based) with weight
``w_k = exp(-k / loss_decay_gamma)``:
  ce_k   = -log p_d(label_k)
  l1_k   = Σ_v |p_d - p_t|                      (p_t: frozen target, no grad)
  conf_k = BCE(c_k, 1 - ½·l1_k)                 (target of the confidence head detached)
  loss   = ce_alpha·Σ w·ce + l1_alpha·Σ w·l1 + conf_alpha·Σ w·conf,   weight_sum = Σ w
Metrics (greedy, teacher-forced: every slot is conditioned on the true previous tokens):
  accept_hits[k] = #blocks whose draft argmax equals the target argmax at slots 0..k,
  accept_base[k] = #blocks with slots 0..k-1 matched and slot k supervised;
  accept_rate@k  = hits[k] / base[k]   (conditional on the prefix being accepted),
  accept_cum@k   = hits[k] / #blocks   (probability a greedy verifier accepts ≥ k+1 tokens).
  tau_probabilistic = mean over blocks of 1 + Σ_k Π_{i≤k} α_i with α_i = 1 - ½·l1_i (the expected
  accepted length under rejection sampling if each slot saw the accepted prefix); unsupervised slots
  count α = 0, so blocks cut by the end of the loss span under-count.

Eagle3, per TTT step s with weight ``step_loss_decay**s``: soft cross-entropy against the
target distribution, -Σ_v p_t log p_d, summed over supervised positions and divided by B·T of the
micro-batch (DeepSpec's ``local_mean``: every sequence weighs the same at local batch 1; a global
token mean lets long sequences dominate, which DeepSpec found to degrade acceptance). So an
Eagle3 micro-batch contributes its loss with weight 1 and the trainer averages micro-batches and
ranks. accuracy@s = draft argmax == target argmax.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def slot_weights(block_size: int, *, loss_decay_gamma: float, device=None) -> torch.Tensor:
    assert loss_decay_gamma > 0, f"loss_decay_gamma must be > 0, got {loss_decay_gamma}"
    return torch.exp(-torch.arange(block_size, dtype=torch.float32, device=device) / loss_decay_gamma)


def parallel_draft_loss(
    *,
    logits: torch.Tensor,
    target_logits: torch.Tensor,
    labels: torch.Tensor,
    slot_mask: torch.Tensor,
    confidence_logits: torch.Tensor | None = None,
    loss_decay_gamma: float = 4.0,
    ce_loss_alpha: float = 1.0,
    l1_loss_alpha: float = 0.0,
    confidence_head_alpha: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Weighted loss sums and metric counts for [..., G, V] slot logits (see module docstring).

    Returns float32 tensors: ``loss_sum`` (differentiable), ``weight_sum``, ``ce_sum``, ``l1_sum``,
    ``conf_sum``, ``tau_sum``, ``block_count`` (scalars) and ``accept_hits``, ``accept_base`` [G].
    """
    assert logits.shape == target_logits.shape, (
        f"draft logits {tuple(logits.shape)} and target logits {tuple(target_logits.shape)} must match"
    )
    assert labels.shape == slot_mask.shape == logits.shape[:-1], (
        f"labels {tuple(labels.shape)} / slot_mask {tuple(slot_mask.shape)} must be logits.shape[:-1] = "
        f"{tuple(logits.shape[:-1])}"
    )
    if confidence_head_alpha and confidence_logits is None:
        raise ValueError(
            "confidence_head_alpha > 0 but the draft has no confidence head; "
            "set model.confidence_head_alpha=0 or build the draft with enable_confidence_head"
        )
    G, V = logits.shape[-2], logits.shape[-1]
    mask = slot_mask.bool()
    w = slot_weights(G, loss_decay_gamma=loss_decay_gamma, device=logits.device) * mask.float()

    logp = torch.log_softmax(logits.float(), dim=-1)
    with torch.no_grad():
        p_t = torch.softmax(target_logits.float(), dim=-1)
    ce = F.nll_loss(logp.reshape(-1, V), labels.reshape(-1).clamp(0, V - 1), reduction="none").view_as(w)
    l1 = (logp.exp() - p_t).abs().sum(dim=-1)
    out = {"weight_sum": w.sum(), "ce_sum": (w * ce).sum(), "l1_sum": (w * l1).sum()}
    loss = ce_loss_alpha * out["ce_sum"] + l1_loss_alpha * out["l1_sum"]
    if confidence_logits is not None:
        conf_target = (1.0 - 0.5 * l1).detach().clamp(0.0, 1.0)
        bce = F.binary_cross_entropy_with_logits(confidence_logits.float(), conf_target, reduction="none")
        out["conf_sum"] = (w * bce).sum()
        loss = loss + confidence_head_alpha * out["conf_sum"]
    else:
        out["conf_sum"] = torch.zeros((), device=logits.device)
    out["loss_sum"] = loss

    with torch.no_grad():
        match = (logits.argmax(-1) == target_logits.argmax(-1)) & mask
        prefix = match.long().cumprod(dim=-1).bool()
        before = torch.cat([mask[..., :1], prefix[..., :-1]], dim=-1) & mask
        out["accept_hits"] = prefix.reshape(-1, G).sum(0).float()
        out["accept_base"] = before.reshape(-1, G).sum(0).float()
        alpha = (1.0 - 0.5 * l1.detach()) * mask.float()
        blocks = mask[..., 0]
        tau = 1.0 + alpha.cumprod(dim=-1).sum(dim=-1)
        out["tau_sum"] = (tau * blocks.float()).sum()
        out["block_count"] = blocks.float().sum()
    return out


def eagle3_loss(
    *, logits: torch.Tensor, target_logits: torch.Tensor, step_mask: torch.Tensor, step_loss_decay: float
) -> dict[str, torch.Tensor]:
    """TTT loss sums for step logits [S, ..., V] (step first) and step_mask [S, ...].

    Returns ``loss_sum`` (differentiable, Σ_s decay^s · Σ soft-CE / (B·T)), ``weight_sum`` (1: one
    micro-batch), ``step_ce_sum`` [S], ``step_correct`` [S], ``step_count`` [S].
    """
    assert logits.shape == target_logits.shape, (
        f"draft logits {tuple(logits.shape)} and target logits {tuple(target_logits.shape)} must match"
    )
    assert step_mask.shape == logits.shape[:-1], f"step_mask {tuple(step_mask.shape)} != {tuple(logits.shape[:-1])}"
    S = logits.shape[0]
    mask = step_mask.float()
    decay = torch.tensor([step_loss_decay**s for s in range(S)], device=logits.device)
    logp = torch.log_softmax(logits.float(), dim=-1)
    with torch.no_grad():
        p_t = torch.softmax(target_logits.float(), dim=-1)
    ce = -(p_t * logp).sum(dim=-1) * mask
    step_ce = ce.reshape(S, -1).sum(1)
    step_count = mask.reshape(S, -1).sum(1)
    with torch.no_grad():
        correct = ((logits.argmax(-1) == target_logits.argmax(-1)).float() * mask).reshape(S, -1).sum(1)
    positions = mask[0].numel()  # B·T of this micro-batch (padding included, as DeepSpec)
    return {
        "loss_sum": (decay * step_ce).sum() / positions,
        "weight_sum": torch.ones((), device=logits.device),
        "step_ce_sum": step_ce.detach(),
        "step_correct": correct,
        "step_count": step_count,
    }


def _ratio(a, b) -> float:
    a, b = float(torch.as_tensor(a).detach()), float(torch.as_tensor(b).detach())
    return a / b if b > 0 else math.nan


def parallel_draft_metrics(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """Readable metrics from (reduced) :func:`parallel_draft_loss` sums."""
    w = sums["weight_sum"]
    out = dict(
        loss=_ratio(sums["loss_sum"], w),
        ce=_ratio(sums["ce_sum"], w),
        l1=_ratio(sums["l1_sum"], w),
        conf_bce=_ratio(sums["conf_sum"], w),
        tau_probabilistic=_ratio(sums["tau_sum"], sums["block_count"]),
    )
    for k, (hit, base) in enumerate(zip(sums["accept_hits"].tolist(), sums["accept_base"].tolist())):
        out[f"accept_rate@{k}"] = _ratio(hit, base)
        out[f"accept_cum@{k}"] = _ratio(hit, sums["block_count"])
    return out


def eagle3_metrics(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """Readable metrics from (reduced) :func:`eagle3_loss` sums."""
    out = {"loss": _ratio(sums["loss_sum"], sums["weight_sum"])}
    for s, (c, n) in enumerate(zip(sums["step_correct"].tolist(), sums["step_count"].tolist())):
        out[f"accuracy@{s}"] = _ratio(c, n)
    return out
