"""Confidence-head diagnostics and STS calibration for DSpark drafts.

The confidence head gives one logit per draft slot k = 1..γ; ``c_k = σ(logit_k / T_k)`` is the
predicted probability that slot k is accepted given slots 1..k−1 were, and the prefix survival
``a_k = Π_{i≤k} c_i`` predicts that slots 1..k are all accepted. The eval stage records each
decoding round in ``rounds.jsonl``; a round whose whole block was verified (proposal_len == gamma)
labels every slot: ``survived_k = accepted >= k``.

STS (sequential temperature scaling, DSpark paper §3.2.1): left to right, T_k is the grid point
that minimises the ECE of a_k with T_1..T_{k−1} already fixed. Temperatures are positive, so each
slot's ranking of rounds is unchanged (order-preserving); only the probabilities move.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from deepspec.errors import DeepSpecError
from deepspec.fsio import atomic_write

CALIBRATION_FILE = "calibration.json"
ROUND_KEYS = ("task", "prompt_index", "round", "gamma", "proposal_len", "accepted", "conf_logits")


class CalibrationError(DeepSpecError, ValueError):
    """Unusable rounds or calibration file; the message says what to do."""


def _is_torch(x) -> bool:
    # the engine may pass torch tensors; avoid importing torch just to check
    return "torch" in sys.modules and sys.modules["torch"].is_tensor(x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free form of 1 / (1 + e^-x)


# ----------------------------------------------------------------------------- probabilities


def prefix_survival(conf_probs):
    """a_k = Π_{i≤k} c_i along the last axis (numpy or torch in, same kind out)."""
    if _is_torch(conf_probs):
        return conf_probs.cumprod(dim=-1)
    return np.cumprod(np.asarray(conf_probs, dtype=np.float64), axis=-1)


def apply_temperatures(conf_logits, temperatures):
    """Per-slot probabilities c_k = σ(logit_k / T_k); ``temperatures`` has one entry per slot."""
    if not _is_torch(conf_logits):
        conf_logits = np.asarray(conf_logits, dtype=np.float64)
    temps = [float(t) for t in temperatures]
    if not all(t > 0 and math.isfinite(t) for t in temps):
        raise CalibrationError(f"temperatures must be positive and finite (order-preserving), got {temps}")
    if conf_logits.shape[-1] != len(temps):
        raise CalibrationError(
            f"{len(temps)} temperatures for {conf_logits.shape[-1]} confidence slots; the calibration "
            "was fitted for another block size (gamma): re-run scripts/eval/calibrate.py for this gamma"
        )
    if _is_torch(conf_logits):
        torch = sys.modules["torch"]
        return torch.sigmoid(conf_logits.float() / torch.tensor(temps, device=conf_logits.device))
    return _sigmoid(conf_logits / np.asarray(temps))


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
            prefix = prefix * _sigmoid(logits[:, k])
            continue
        eces = np.array(
            [
                expected_calibration_error(prefix * _sigmoid(logits[:, k] / t), labels[:, k], num_bins=num_bins)
                for t in grid
            ]
        )
        near_best = np.flatnonzero(eces <= eces.min() + 1e-12)
        best = float(grid[near_best[np.argmin(np.abs(np.log(grid[near_best])))]])
        temps.append(best)
        prefix = prefix * _sigmoid(logits[:, k] / best)
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


# ----------------------------------------------------------------------------- files


def to_jsonable(obj):
    """Replace NaN/inf floats by None (strict JSON) inside dicts and lists."""
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


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


def load_calibration(draft_dir, *, gamma: int | None = None) -> list[float] | None:
    """STS temperatures from ``<draft_dir>/calibration.json``; None when the draft is uncalibrated."""
    path = Path(draft_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    return read_calibration_file(path, gamma=gamma)


def read_calibration_file(path, *, gamma: int | None = None) -> list[float]:
    """The temperatures of a calibration JSON (``{"temperatures": [T_1..T_γ]}``, as calibrate.py writes it)."""
    path = Path(path)
    redo = "re-run scripts/eval/calibrate.py (or pass the calibration.json it wrote)"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CalibrationError(f"{path}: no such file; {redo}") from None
    except IsADirectoryError:
        raise CalibrationError(f"{path} is a folder; pass the calibration.json file inside it") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CalibrationError(f"{path} is not valid JSON ({e}); delete it or {redo}") from None
    temps = data.get("temperatures") if isinstance(data, dict) else None
    if (
        not isinstance(temps, list)
        or not temps
        or data.get("method", "sts") != "sts"
        or data.get("gamma", len(temps)) != len(temps)
    ):
        raise CalibrationError(
            f'{path} is not an STS calibration file (it needs a non-empty "temperatures" list, one per slot); {redo}'
        )
    if not all(_is_number(t) and t > 0 for t in temps):
        raise CalibrationError(f"{path} holds temperatures that are not positive finite numbers ({temps}); {redo}")
    if gamma is not None and gamma != len(temps):
        raise CalibrationError(
            f"{path} was fitted for gamma={len(temps)} but this run uses gamma={gamma}; re-run "
            "scripts/eval/calibrate.py on rounds recorded with this gamma, or delete the file"
        )
    return [float(t) for t in temps]


def _is_number(v) -> bool:
    """A finite int or float; JSON's true/false are not numbers here."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


RECORD_HINT = "run eval.py with --confidence-threshold 0 first to record them"


def read_rounds(paths) -> list[dict]:
    """All rounds from one or more rounds.jsonl files, validated; errors name file and line.

    The one place round records are checked (calibrate.py, threshold_sweep.py, simulate_serving.py).
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise CalibrationError(f"no rounds files given; {RECORD_HINT}")
    rounds = []
    for path in paths:
        if Path(path).is_dir():
            raise CalibrationError(f"{path} is a folder; pass the rounds.jsonl file that eval.py wrote in it")
        if not Path(path).is_file():
            raise CalibrationError(f"{path}: no such file; pass the rounds.jsonl written by eval.py")
        count = 0
        try:
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    where = f"{path}:{lineno}"
                    try:
                        r = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise CalibrationError(
                            f"{where}: malformed JSON ({e.msg}); the file may be truncated"
                        ) from None
                    rounds.append(check_round(r, where=where))
                    count += 1
        except UnicodeDecodeError:
            raise CalibrationError(f"{path} is not a text file; pass the rounds.jsonl written by eval.py") from None
        if count == 0:
            raise CalibrationError(f"rounds file {path} is empty (0 records): {RECORD_HINT}")
    return rounds


def check_round(r, *, where: str) -> dict:
    """One round record as eval.py writes it, or a CalibrationError naming ``where`` (file:line)."""
    if not isinstance(r, dict):
        raise CalibrationError(f"{where}: expected a JSON object per line")
    missing = [k for k in ROUND_KEYS if k not in r]
    if missing:
        raise CalibrationError(f"{where}: missing keys {missing}; is this a rounds.jsonl from eval.py?")
    if not isinstance(r["task"], str):
        raise CalibrationError(f"{where}: task must be a string, got {r['task']!r}")
    ints = {k: r[k] for k in ("prompt_index", "round", "gamma", "proposal_len", "accepted")}
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints.values()):
        raise CalibrationError(f"{where}: {', '.join(ints)} must be integers, got {ints}")
    g, ell, acc = r["gamma"], r["proposal_len"], r["accepted"]
    if not (0 <= acc <= ell <= g and g >= 1):
        raise CalibrationError(f"{where}: need integers 0 <= accepted <= proposal_len <= gamma, got {acc}, {ell}, {g}")
    c = r["conf_logits"]
    if c is not None and (not isinstance(c, list) or len(c) != g or not all(_is_number(v) for v in c)):
        bad = [v for v in c if not _is_number(v)] if isinstance(c, list) else c
        raise CalibrationError(
            f"{where}: conf_logits must be null or a list of gamma={g} finite numbers, got "
            f"{bad if bad else c}; was the draft's confidence head diverged (NaN/inf)? "
            "Fix or re-record the rounds with eval.py"
        )
    return r


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


# ----------------------------------------------------------------------------- plots


def _draw_reliability(ax, pred, label, *, num_bins: int, title: str) -> None:
    pred = np.asarray(pred, dtype=np.float64)
    label = np.asarray(label).astype(np.float64)
    pred, label = pred.reshape(pred.shape[0], -1), label.reshape(label.shape[0], -1)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    for k in range(pred.shape[1]):
        bins = np.clip((pred[:, k] * num_bins).astype(np.int64), 0, num_bins - 1)
        n = np.bincount(bins, minlength=num_bins)
        keep = n > 0
        mean_p = np.bincount(bins, weights=pred[:, k], minlength=num_bins)[keep] / n[keep]
        mean_y = np.bincount(bins, weights=label[:, k], minlength=num_bins)[keep] / n[keep]
        ece = expected_calibration_error(pred[:, k], label[:, k], num_bins=num_bins)
        ax.plot(mean_p, mean_y, "o-", ms=3, label=f"k={k + 1} ECE {ece:.1%}")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted prefix survival a_k", ylabel="empirical survival", title=title)
    ax.legend(fontsize=7, loc="upper left")


def plot_reliability(pred, label, *, path, title: str, num_bins: int = 10) -> None:
    """Reliability diagram PNG: one line per position k (pred, label: [N, γ]) plus the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    _draw_reliability(ax, pred, label, num_bins=num_bins, title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_reliability_before_after(pred_before, pred_after, label, *, path, title: str, num_bins: int = 10) -> None:
    """Two reliability diagrams side by side: uncalibrated and calibrated, same labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    _draw_reliability(axes[0], pred_before, label, num_bins=num_bins, title=f"{title}: before")
    _draw_reliability(axes[1], pred_after, label, num_bins=num_bins, title=f"{title}: after STS")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
