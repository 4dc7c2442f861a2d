"""What entry points share about the strings a user types: numeric option types.

The ``argparse`` type functions refuse a bad value at parse time (``--steps 0``, ``--seed -1``,
``--held-out-fraction nan``) with argparse's own one-line usage error and exit code 2, before any
work is done::

    p.add_argument("--steps", type=positive_int, default=200)
    p.add_argument("--held-out-fraction", type=probability, default=0.5)

Whether a string is a local path or a hub id is :func:`deepspec.hub.local_or_hub_id`'s rule.
"""

from __future__ import annotations

import argparse
import math


# -- argparse type functions -------------------------------------------------------------------------
def _number(text: str, kind: type, what: str):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):  # nan / inf parse as floats but mean nothing here
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (counts, steps, sizes)."""
    value = _number(text, int, "an integer >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer >= 0 (seeds, optional counts where 0 means none)."""
    value = _number(text, int, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (temperatures, times, rates)."""
    value = _number(text, float, "a finite number > 0")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number >= 0 (added costs, margins)."""
    value = _number(text, float, "a finite number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def probability(text: str) -> float:
    """A number in [0, 1] (thresholds, fractions)."""
    value = _number(text, float, "a number in [0, 1]")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value
