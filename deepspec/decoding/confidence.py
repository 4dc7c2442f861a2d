"""What a decode does with the confidence head: calibrated probabilities and the threshold rules.

The confidence head gives one logit per draft slot k = 1..γ; ``c_k = σ(logit_k / T_k)`` is the
predicted probability that slot k is accepted given slots 1..k−1 were, and the prefix survival
``a_k = Π_{i≤k} c_i`` predicts that slots 1..k are all accepted. The temperatures T_k come from
the draft's ``calibration.json`` (fitted offline by :mod:`deepspec.eval.calibration`, STS);
without one T_k = 1. Temperatures are positive, so each slot's ranking of rounds is unchanged.

Two rules cut the γ drafted slots at threshold t, both on the calibrated per-slot confidences:

- ``per-slot`` (:func:`per_slot_lengths`) — DeepSpec's ``--confidence-threshold``: ℓ = the index of
  the first slot whose own c_k < t (γ if none).
- ``cumulative`` (:func:`cumulative_lengths`) — ℓ = the number of leading slots whose prefix
  survival a_k ≥ t (``eval.py --survival-threshold``).

The online policies (:mod:`deepspec.decoding.scheduler`) and the offline replay
(:mod:`deepspec.eval.threshold`) call these same functions, so the replay measures the rule the
engine runs. This module needs numpy only (torch when the engine passes tensors): the analysis
half (fitting, metrics, plots) lives in :mod:`deepspec.eval` and is never imported by a decode.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from deepspec.errors import DeepSpecError

CALIBRATION_FILE = "calibration.json"
RULES = ("per-slot", "cumulative")


class CalibrationError(DeepSpecError, ValueError):
    """Unusable rounds or calibration file; the message says what to do."""


def _is_torch(x) -> bool:
    # the engine may pass torch tensors; avoid importing torch just to check
    return "torch" in sys.modules and sys.modules["torch"].is_tensor(x)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """σ(x) in the overflow-free form 0.5·(1 + tanh(x/2)) (1 / (1 + e^-x) overflows for large −x)."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def is_finite_number(v) -> bool:
    """A finite int or float; JSON's true/false are not numbers here."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


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
    return sigmoid(conf_logits / np.asarray(temps))


# ----------------------------------------------------------------------------- threshold rules


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


# ----------------------------------------------------------------------------- calibration.json


def load_calibration(draft_dir, *, gamma: int | None = None) -> list[float] | None:
    """STS temperatures from ``<draft_dir>/calibration.json``; None when the draft is uncalibrated."""
    path = Path(draft_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    return read_calibration_file(path, gamma=gamma)


def read_calibration_file(path, *, gamma: int | None = None) -> list[float]:
    """The temperatures of a calibration JSON (``{"temperatures": [T_1..T_γ]}``, as calibrate.py writes it).

    The one check of calibration files: eval.py, threshold_sweep.py and simulate_serving.py all read them here.
    """
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
    if not all(is_finite_number(t) and t > 0 for t in temps):
        raise CalibrationError(f"{path} holds temperatures that are not positive finite numbers ({temps}); {redo}")
    if gamma is not None and gamma != len(temps):
        raise CalibrationError(
            f"{path} was fitted for gamma={len(temps)} but this run uses gamma={gamma}; re-run "
            "scripts/eval/calibrate.py on rounds recorded with this gamma, or delete the file"
        )
    return [float(t) for t in temps]
