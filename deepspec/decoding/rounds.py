"""The round record: one line of ``rounds.jsonl`` per verification round of one request.

::

    {"task": str, "prompt_index": int, "round": int, "gamma": int,
     "proposal_len": int, "accepted": int, "conf_logits": [float, ...] | None}

``gamma`` (γ) = draft slots produced, ``proposal_len`` (ℓ ≤ γ) = slots sent to the target (less
than γ only when a confidence threshold or the prefix scheduler truncated the block),
``accepted`` (0..ℓ) = draft tokens the target accepted, ``conf_logits`` = the confidence head's raw
logits for the γ slots (None for drafts without one). A round commits ``accepted + 1`` tokens: the
accepted prefix plus the target's resampled (on rejection) or bonus (all accepted) token.

This module is the record's one definition: the engine builds it (:func:`engine_round`), the eval
runner tags it with its prompt and writes the file (:func:`file_round`, :func:`write_rounds`), and
every reader — metrics, confidence diagnostics, calibrate.py, threshold_sweep.py,
simulate_serving.py — validates it with :func:`check_round` / :func:`check_counts`. It lives in
``decoding/`` because the engine writes it and decoding never imports ``deepspec.eval``; it needs
nothing heavier than numpy (through :mod:`deepspec.decoding.confidence`, for the error class), so
analysis code and scripts import it without torch or matplotlib.
"""

from __future__ import annotations

import json
import numbers
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from deepspec.decoding.confidence import CalibrationError, is_finite_number
from deepspec.fsio import atomic_write

ROUNDS_FILE = "rounds.jsonl"
ENGINE_KEYS = ("round", "gamma", "proposal_len", "accepted", "conf_logits")  # what the engine knows
ROUND_KEYS = ("task", "prompt_index", *ENGINE_KEYS)  # a line of rounds.jsonl, in file order
COUNT_KEYS = ("gamma", "proposal_len", "accepted")  # all that acceptance metrics need
CONF_LOGIT_DIGITS = 5  # logits are stored rounded: the file stays small, calibration is unaffected
RECORD_HINT = "run eval.py with --confidence-threshold 0 first to record them"


class RoundsError(CalibrationError):
    """A rounds.jsonl file or round record that no correct engine wrote; the message names it.

    A :class:`CalibrationError` because the calibration and replay scripts, the records' main
    readers, report that one class.
    """


# ----------------------------------------------------------------------------- building


def engine_round(
    *, index: int, gamma: int, proposal_len: int, accepted: int, conf_logits: Sequence[float] | None
) -> dict:
    """The engine's record of one round (no task or prompt yet: the engine does not know them)."""
    return {
        "round": int(index),
        "gamma": int(gamma),
        "proposal_len": int(proposal_len),
        "accepted": int(accepted),
        "conf_logits": None if conf_logits is None else [round(float(c), CONF_LOGIT_DIGITS) for c in conf_logits],
    }


def file_round(record: Mapping, *, task: str, prompt_index: int) -> dict:
    """An engine record as a rounds.jsonl line: task and prompt first, so every line reads the same."""
    return {"task": task, "prompt_index": prompt_index, **record}


# ----------------------------------------------------------------------------- checking


def _check_object(r, *, keys: Sequence[str], where: str) -> None:
    if not isinstance(r, Mapping):
        raise RoundsError(f"{where}: expected a JSON object per line, got {type(r).__name__}")
    missing = [k for k in keys if k not in r]
    if missing:
        raise RoundsError(f"{where}: missing keys {missing}; is this a rounds.jsonl from eval.py?")


def _check_integers(r: Mapping, *, keys: Sequence[str], where: str) -> None:
    ints = {k: r[k] for k in keys}
    # bool is an int subclass, but true/false in a count means the record was not written by the engine
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in ints.values()):
        raise RoundsError(f"{where}: {', '.join(ints)} must be integers, got {ints}")


def _check_bounds(r: Mapping, *, where: str, gamma: int | None) -> tuple[int, int, int]:
    g, ell, acc = int(r["gamma"]), int(r["proposal_len"]), int(r["accepted"])
    # A record outside these bounds means the engine's bookkeeping is wrong: stop, don't average it.
    if gamma is not None and not 1 <= g <= gamma:
        raise RoundsError(
            f"{where}: gamma={g} is outside 1..{gamma} (the run's gamma); pass the gamma the engine drafted with"
        )
    if not (0 <= acc <= ell <= g and g >= 1):
        raise RoundsError(
            f"{where}: need integers 0 <= accepted <= proposal_len <= gamma, "
            f"got accepted={acc}, proposal_len={ell}, gamma={g}"
        )
    return g, ell, acc


def check_counts(r, *, where: str, gamma: int | None = None) -> tuple[int, int, int]:
    """(gamma, proposal_len, accepted) of a record, checked; ``gamma`` bounds the record's γ by the run's.

    The part of :func:`check_round` that acceptance metrics rely on; records may omit the other keys.
    """
    _check_object(r, keys=COUNT_KEYS, where=where)
    _check_integers(r, keys=COUNT_KEYS, where=where)
    return _check_bounds(r, where=where, gamma=gamma)


def check_round(r, *, where: str) -> dict:
    """One full rounds.jsonl record as eval.py writes it, or a :class:`RoundsError` naming ``where``."""
    _check_object(r, keys=ROUND_KEYS, where=where)
    if not isinstance(r["task"], str):
        raise RoundsError(f"{where}: task must be a string, got {r['task']!r}")
    _check_integers(r, keys=("prompt_index", "round", *COUNT_KEYS), where=where)
    g, _, _ = _check_bounds(r, where=where, gamma=None)
    c = r["conf_logits"]
    if c is not None and (not isinstance(c, list) or len(c) != g or not all(is_finite_number(v) for v in c)):
        bad = [v for v in c if not is_finite_number(v)] if isinstance(c, list) else c
        raise RoundsError(
            f"{where}: conf_logits must be null or a list of gamma={g} finite numbers, got "
            f"{bad if bad else c}; was the draft's confidence head diverged (NaN/inf)? "
            "Fix or re-record the rounds with eval.py"
        )
    return r


# ----------------------------------------------------------------------------- files


def write_rounds(path: str | os.PathLike, rounds: Iterable[Mapping]) -> None:
    """``rounds`` as JSON lines, written atomically (a crash leaves the old file, never half a new one)."""
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in rounds))


def read_rounds(paths) -> list[dict]:
    """All rounds from one or more rounds.jsonl files, validated; errors name file and line.

    The one reader of round files (calibrate.py, threshold_sweep.py, simulate_serving.py).
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise RoundsError(f"no rounds files given; {RECORD_HINT}")
    rounds = []
    for path in paths:
        if Path(path).is_dir():
            raise RoundsError(f"{path} is a folder; pass the {ROUNDS_FILE} file that eval.py wrote in it")
        if not Path(path).is_file():
            raise RoundsError(f"{path}: no such file; pass the {ROUNDS_FILE} written by eval.py")
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
                        raise RoundsError(f"{where}: malformed JSON ({e.msg}); the file may be truncated") from None
                    rounds.append(check_round(r, where=where))
                    count += 1
        except UnicodeDecodeError:
            raise RoundsError(f"{path} is not a text file; pass the {ROUNDS_FILE} written by eval.py") from None
        if count == 0:
            raise RoundsError(f"rounds file {path} is empty (0 records): {RECORD_HINT}")
    return rounds
