"""How well the confidence head is calibrated, and STS fitting to improve it (offline, on recorded rounds).

A round whose whole block was verified (proposal_len == gamma) labels every slot of the confidence
head: ``survived_k = accepted >= k``. The reliability metrics (ECE, AUROC, Brier) compare the
predicted prefix survival a_k (:mod:`deepspec.decoding.confidence`) with those labels.

STS (sequential temperature scaling, DSpark paper §3.2.1): left to right, T_k is the grid point
that minimises the ECE of a_k with T_1..T_{k−1} already fixed. Temperatures are positive, so each
slot's ranking of rounds is unchanged (order-preserving); only the probabilities move. The fitted
temperatures go to ``calibration.json``, which the decode reads back through
:func:`deepspec.decoding.confidence.read_calibration_file`. Plots of all this: :mod:`deepspec.eval.plots`.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from deepspec.decoding.confidence import (
    CALIBRATION_FILE,
    CalibrationError,
    apply_temperatures,
    prefix_survival,
    sigmoid,
)
from deepspec.decoding.rounds import RECORD_HINT
from deepspec.eval.report import to_jsonable
from deepspec.fsio import atomic_write


def survival_labels(accepted, gamma: int) -> np.ndarray:
    """[N, γ] bool: slot k (1-based) survived iff ``accepted >= k``."""
    if gamma < 1:
        raise CalibrationError(f"gamma must be >= 1, got {gamma}")
    accepted = np.asarray(accepted).reshape(-1)
    return accepted[:, None] >= np.arange(1, gamma + 1)[None, :]


# ----------------------------------------------------------------------------- metrics


def _flat_pair(pred, label) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    label = np.asarray(label).reshape(-1).astype(bool)
    if pred.size != label.size:
        raise CalibrationError(f"{pred.size} predictions but {label.size} labels")
    if pred.size == 0:
        raise CalibrationError("no predictions to score")
    return pred, label


def expected_calibration_error(pred, label, *, num_bins: int = 10) -> float:
    """ECE: Σ_b (n_b / N)·|mean pred_b − mean label_b| over equal-width bins on [0, 1]."""
    pred, label = _flat_pair(pred, label)
    if pred.min() < -1e-9 or pred.max() > 1 + 1e-9:
        raise CalibrationError("ECE needs probabilities in [0, 1]; apply the sigmoid to the logits first")
    bins = np.clip((pred * num_bins).astype(np.int64), 0, num_bins - 1)  # p == 1 goes to the last bin
    sum_p = np.bincount(bins, weights=pred, minlength=num_bins)
    sum_y = np.bincount(bins, weights=label.astype(np.float64), minlength=num_bins)
    # (n_b/N)·|Σp/n_b − Σy/n_b| = |Σp − Σy| / N
    return float(np.abs(sum_p - sum_y).sum() / pred.size)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x, tied values sharing the mean of their ranks."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inverse]


def auroc(pred, label) -> float:
    """Area under the ROC curve (Mann–Whitney U, ties count ½); NaN when only one class is present."""
    pred, label = _flat_pair(pred, label)
    n_pos = int(label.sum())
    n_neg = label.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(pred)
    return float((ranks[label].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def brier_score(pred, label) -> float:
    """Mean squared error between predicted probability and the 0/1 outcome."""
    pred, label = _flat_pair(pred, label)
    return float(np.mean((pred - label) ** 2))


# ----------------------------------------------------------------------------- STS


def default_grid() -> np.ndarray:
    """Geometric temperatures 0.05..20 (200 points) plus exactly 1.0 (no change)."""
    return np.unique(np.concatenate([np.geomspace(0.05, 20.0, 200), [1.0]]))


def _check_arrays(conf_logits, accepted) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(conf_logits, dtype=np.float64)
    accepted = np.asarray(accepted, dtype=np.int64).reshape(-1)
    if logits.ndim != 2 or logits.shape[0] != accepted.size:
        raise CalibrationError(f"need conf_logits [N, gamma] and accepted [N], got {logits.shape} and {accepted.shape}")
    if logits.shape[0] == 0:
        raise CalibrationError("no rounds to calibrate on")
    if accepted.min() < 0 or accepted.max() > logits.shape[1]:
        raise CalibrationError(f"accepted must lie in 0..{logits.shape[1]} (gamma)")
    return logits, accepted


def fit_sts(conf_logits, accepted, *, grid=None, num_bins: int = 10, min_events: int = 20) -> list[float]:
    """Sequential temperature scaling: one temperature per slot, fitted left to right.

    T_k minimises ECE(Π_{i≤k} σ(logit_i/T_i), accepted >= k) over ``grid`` with T_1..T_{k−1}
    fixed; among (near-)ties the temperature closest to 1 wins, so flat regions change nothing.
    A slot with fewer than ``min_events`` survived or failed rounds keeps T = 1: with a handful of
    events the ECE minimum is noise (it drives T to the grid's edge) and hurts held-out rounds.
    """
    logits, accepted = _check_arrays(conf_logits, accepted)
    grid = default_grid() if grid is None else np.asarray(grid, dtype=np.float64).reshape(-1)
    if grid.size == 0 or not np.all(grid > 0) or not np.all(np.isfinite(grid)):
        raise CalibrationError("the temperature grid must hold positive finite values (order-preserving)")
    labels = survival_labels(accepted, logits.shape[1])
    temps: list[float] = []
    prefix = np.ones(logits.shape[0])
    for k in range(logits.shape[1]):
        survived = int(labels[:, k].sum())
        if min(survived, labels.shape[0] - survived) < min_events:
            temps.append(1.0)
            prefix = prefix * sigmoid(logits[:, k])
            continue
        eces = np.array(
            [
                expected_calibration_error(prefix * sigmoid(logits[:, k] / t), labels[:, k], num_bins=num_bins)
                for t in grid
            ]
        )
        near_best = np.flatnonzero(eces <= eces.min() + 1e-12)
        best = float(grid[near_best[np.argmin(np.abs(np.log(grid[near_best])))]])
        temps.append(best)
        prefix = prefix * sigmoid(logits[:, k] / best)
    return temps


def confidence_report(conf_logits, accepted, *, temperatures=None, num_bins: int = 10) -> dict:
    """Per-position diagnostics of the prefix survival a_k against the recorded acceptance."""
    logits, accepted = _check_arrays(conf_logits, accepted)
    gamma = logits.shape[1]
    temps = [1.0] * gamma if temperatures is None else list(temperatures)
    pred = prefix_survival(apply_temperatures(logits, temps))
    labels = survival_labels(accepted, gamma)
    cols = [(pred[:, k], labels[:, k]) for k in range(gamma)]
    return {
        "num_rounds": int(logits.shape[0]),
        "temperatures": [float(t) for t in temps],
        "ece": [expected_calibration_error(p, y, num_bins=num_bins) for p, y in cols],
        "auroc": [auroc(p, y) for p, y in cols],
        "brier": [brier_score(p, y) for p, y in cols],
        "mean_predicted": [float(p.mean()) for p, _ in cols],
        "empirical_survival": [float(y.mean()) for _, y in cols],
    }


def save_calibration(
    draft_dir, *, temperatures, report_before: dict, report_after: dict, extra: dict | None = None
) -> Path:
    """Write ``<draft_dir>/calibration.json`` atomically; returns its path."""
    draft_dir = Path(draft_dir)
    if not draft_dir.is_dir():
        raise CalibrationError(f"draft folder {draft_dir} does not exist; pass the draft checkpoint folder")
    temps = [float(t) for t in temperatures]
    if not temps or not all(t > 0 and math.isfinite(t) for t in temps):  # never write a file that cannot be used
        raise CalibrationError(
            f"refusing to write {CALIBRATION_FILE}: temperatures must be positive and finite, got {temps}"
        )
    data = {
        "method": "sts",
        "temperatures": temps,
        "gamma": len(temps),
        "ece_before": report_before["ece"],
        "ece_after": report_after["ece"],
        "report_before": report_before,
        "report_after": report_after,
        **(extra or {}),
    }
    path = draft_dir / CALIBRATION_FILE
    atomic_write(path, json.dumps(to_jsonable(data), indent=2) + "\n")
    return path


# ----------------------------------------------------------------------------- rounds -> arrays


def split_rounds(rounds, *, held_out_fraction: float = 0.5, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(fit, held_out), split by hashed (task, prompt_index) so one prompt's rounds stay together."""
    if not 0.0 <= held_out_fraction < 1.0:
        raise CalibrationError(f"held_out_fraction must be in [0, 1), got {held_out_fraction}")
    fit, held = [], []
    for r in rounds:
        # sha256, not hash(): stable across processes and Python versions
        digest = hashlib.sha256(f"{seed}\0{r['task']}\0{r['prompt_index']}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2.0**64
        (held if u < held_out_fraction else fit).append(r)
    return fit, held


def calibration_arrays(rounds, *, full_blocks_only: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(conf_logits [N, γ], accepted [N], proposal_len [N]) from rounds that carry confidence logits.

    With ``full_blocks_only`` only rounds whose whole block was verified are kept: they label all γ slots.
    """
    if not rounds:
        raise CalibrationError(f"no rounds given (0 records): {RECORD_HINT}")
    with_conf = [r for r in rounds if r["conf_logits"] is not None]
    usable = [r for r in with_conf if r["proposal_len"] == r["gamma"]] if full_blocks_only else with_conf
    if not usable:
        why = (
            "no round has confidence logits: the draft has no confidence head (enable_confidence_head)"
            if not with_conf
            else "no round verified a full block: record rounds with threshold 0 (eval.py --confidence-threshold 0)"
        )
        raise CalibrationError(f"no usable rounds among {len(rounds)}: {why}")
    gammas = sorted({r["gamma"] for r in usable})
    if len(gammas) > 1:
        raise CalibrationError(f"rounds mix gamma values {gammas}; pass rounds recorded with one gamma")
    return (
        np.array([r["conf_logits"] for r in usable], dtype=np.float64),
        np.array([r["accepted"] for r in usable], dtype=np.int64),
        np.array([r["proposal_len"] for r in usable], dtype=np.int64),
    )
