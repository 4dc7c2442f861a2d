"""Confidence-threshold rules, and their replay on rounds recorded at threshold 0 (DSpark paper Figure 5).

Two rules cut the γ drafted slots at threshold t, both on the calibrated per-slot confidences
c_k = σ(conf_logit_k / T_k):

- ``per-slot`` (:func:`per_slot_lengths`) — DeepSpec's ``--confidence-threshold``: ℓ = the index of
  the first slot whose own c_k < t (γ if none).
- ``cumulative`` (:func:`cumulative_lengths`) — ℓ = the number of leading slots whose prefix
  survival a_k = Π_{i≤k} c_i ≥ t (``eval.py --survival-threshold``).

The online policies (:mod:`deepspec.decoding.scheduler`) and the replay below call these same two
functions. Replay: the target accepts slot k only if it accepts every slot before it, and that
decision does not depend on whether later slots were proposed, so on a threshold-0 round (all γ
slots verified) the same round at threshold t would have accepted ``min(accepted, ℓ)`` and
rejected the rest of its ℓ slots: the replay is exact per round, for either rule, without running
the target again.
"""

from __future__ import annotations

import numpy as np

from deepspec.decoding.calibration import CalibrationError, apply_temperatures, prefix_survival

DEFAULT_THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(10))
RULES = ("per-slot", "cumulative")


def _leading(keep: np.ndarray) -> np.ndarray:
    # cumprod stops the count at the first False, even if a later slot passes again
    return np.cumprod(keep, axis=-1).sum(axis=-1)


def per_slot_lengths(confidences, *, threshold: float) -> np.ndarray:
    """[N] index of the first slot with c_k < threshold, γ if none (confidences: [N, γ] in [0, 1])."""
    return _leading(np.asarray(confidences, dtype=np.float64) >= threshold)


def cumulative_lengths(confidences, *, threshold: float) -> np.ndarray:
    """[N] number of leading slots with a_k = Π_{i≤k} c_i >= threshold (confidences: [N, γ] in [0, 1])."""
    return _leading(prefix_survival(np.asarray(confidences, dtype=np.float64)) >= threshold)


def proposal_lengths(confidences, *, threshold: float, rule: str) -> np.ndarray:
    """[N] proposal lengths under ``rule`` ("per-slot" or "cumulative")."""
    if rule == "per-slot":
        return per_slot_lengths(confidences, threshold=threshold)
    if rule == "cumulative":
        return cumulative_lengths(confidences, threshold=threshold)
    raise CalibrationError(f"unknown threshold rule {rule!r}; choose one of {', '.join(RULES)}")


def replay_threshold(
    conf_logits, accepted, *, threshold: float, rule: str = "per-slot", temperatures=None, proposal_len=None
) -> dict:
    """Per-step averages at ``threshold`` under ``rule`` (see :data:`RULES`) from threshold-0 rounds.

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


def plot_threshold_sweep(results: list[dict], *, path, title: str) -> None:
    """Grouped bars per threshold: accepted vs rejected draft tokens per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(results))
    width = 0.4
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(results) + 2), 4))
    ax.bar(x - width / 2, [r["avg_accepted"] for r in results], width, label="accepted / step", color="tab:green")
    ax.bar(x + width / 2, [r["avg_rejected"] for r in results], width, label="rejected / step", color="tab:red")
    ax.set_xticks(x, [f"{r['threshold']:g}" for r in results])
    on = {"per-slot": "per-slot confidence c_k", "cumulative": "prefix survival a_k"}.get(results[0].get("rule"), "?")
    ax.set(xlabel=f"confidence threshold on {on}", ylabel="draft tokens per step", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
