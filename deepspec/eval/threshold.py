"""Replay of the confidence-threshold rules on rounds recorded at threshold 0 (DSpark paper Figure 5).

The rules themselves (per-slot and cumulative, :data:`deepspec.decoding.confidence.RULES`) are the
ones the engine's policies run; this module only asks what they would have done. The target accepts
slot k only if it accepts every slot before it, and that decision does not depend on whether later
slots were proposed, so on a threshold-0 round (all γ slots verified) the same round at threshold t
would have accepted ``min(accepted, ℓ)`` and rejected the rest of its ℓ slots: the replay is exact
per round, for either rule, without running the target again.
"""

from __future__ import annotations

import numpy as np

from deepspec.decoding.confidence import CalibrationError, apply_temperatures, proposal_lengths

DEFAULT_THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(10))


def replay_threshold(
    conf_logits, accepted, *, threshold: float, rule: str = "per-slot", temperatures=None, proposal_len=None
) -> dict:
    """Per-step averages at ``threshold`` under ``rule`` (see ``RULES``) from threshold-0 rounds.

    ``proposal_len`` (optional, [N]) caps ℓ for rounds whose block was cut short (end of the
    generation budget). Acceptance rate is Σ accepted' / Σ ℓ over all rounds (rounds with ℓ = 0 are
    plain target steps and count towards the per-step averages).
    """
    if not 0.0 <= threshold <= 1.0:
        raise CalibrationError(f"threshold must be in [0, 1], got {threshold}")
    logits = np.asarray(conf_logits, dtype=np.float64)
    accepted = np.asarray(accepted, dtype=np.int64).reshape(-1)
    if logits.ndim != 2 or logits.shape[0] != accepted.size or accepted.size == 0:
        raise CalibrationError(
            f"need conf_logits [N, gamma] and accepted [N] with N > 0, got {logits.shape} and {accepted.shape}"
        )
    temps = [1.0] * logits.shape[1] if temperatures is None else temperatures
    ell = proposal_lengths(apply_temperatures(logits, temps), threshold=threshold, rule=rule)
    if proposal_len is not None:
        ell = np.minimum(ell, np.asarray(proposal_len, dtype=np.int64).reshape(-1))
    if np.any(accepted > (logits.shape[1] if proposal_len is None else np.asarray(proposal_len))):
        raise CalibrationError("accepted exceeds the recorded proposal length; the rounds file is inconsistent")
    acc = np.minimum(accepted, ell)
    total_ell = int(ell.sum())
    return {
        "threshold": float(threshold),
        "rule": rule,
        "num_rounds": int(accepted.size),
        "avg_accepted": float(acc.mean()),
        "avg_rejected": float((ell - acc).mean()),
        "acceptance_rate": float(acc.sum() / total_ell) if total_ell else float("nan"),
        "avg_committed": float((acc + 1).mean()),  # accepted drafts + the target's own token
        "avg_proposal_len": float(ell.mean()),
    }


def sweep_thresholds(
    conf_logits,
    accepted,
    *,
    thresholds=DEFAULT_THRESHOLDS,
    rule: str = "per-slot",
    temperatures=None,
    proposal_len=None,
) -> list[dict]:
    """:func:`replay_threshold` for each threshold, in the given order."""
    return [
        replay_threshold(
            conf_logits, accepted, threshold=t, rule=rule, temperatures=temperatures, proposal_len=proposal_len
        )
        for t in thresholds
    ]
