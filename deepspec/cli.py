"""What entry points share about the strings a user types: numeric option types and local-path-or-hub-id.

The ``argparse`` type functions refuse a bad value at parse time (``--steps 0``, ``--seed -1``,
``--held-out-fraction nan``) with argparse's own one-line usage error and exit code 2, before any
work is done::

    p.add_argument("--steps", type=positive_int, default=200)
    p.add_argument("--held-out-fraction", type=probability, default=0.5)

:func:`local_or_hub_id` is the one rule that tells a local path from a Hugging Face hub id, so a
mistyped folder says "no such folder" instead of a hub error about repo id syntax.
"""

from __future__ import annotations

import argparse
import math
import os
import re

from deepspec.errors import DeepSpecError


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


# -- local path or hub id --------------------------------------------------------------------------
class NoSuchFolderError(DeepSpecError, FileNotFoundError):
    """A string that names a local path which does not exist (and cannot be a hub id)."""


# owner/name as the hub accepts it: letters, digits, '-', '_', '.'; no '--' or '..'; not starting or
# ending with '-' or '.'; at most 96 characters.
_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
_HUB_ID_RE = re.compile(rf"^{_HUB_PART}/{_HUB_PART}$")


def is_hub_id(text: str) -> bool:
    """Whether ``text`` is a syntactically valid ``owner/name`` hub id."""
    return bool(_HUB_ID_RE.match(text)) and "--" not in text and ".." not in text and len(text) <= 96


def local_or_hub_id(name_or_path, *, what: str = "folder") -> tuple[str, bool]:
    """``(path, True)`` for an existing local path, ``(hub_id, False)`` for a hub id, else NoSuchFolderError.

    A string is taken as a local path -- and must exist -- when it starts with '.', '/' or '~', has
    no '/' or more than one, or its first component is an existing folder (``runs/nope`` when
    ``runs/`` exists). Only a valid ``owner/name`` that is none of these goes to the hub.
    """
    text = str(name_or_path)
    path = os.path.expanduser(text)
    if text and os.path.exists(path):
        return path, True
    if text and os.path.islink(path):  # e.g. a step_latest whose step_N was deleted or not copied along
        hint = (
            f"; pass the checkpoint folder {os.path.dirname(path) or '.'} (its newest complete step is used) "
            "or an existing step_N folder"
            if os.path.basename(path.rstrip("/")) == "step_latest"
            else ""
        )
        raise NoSuchFolderError(
            f"{text} is a dangling symlink: it points at {os.readlink(path)}, which does not exist{hint}"
        )
    first = text.split("/", 1)[0]
    local = (
        not text
        or text.startswith((".", "/", "~", "\\"))
        or text.count("/") != 1
        or os.path.isdir(os.path.expanduser(first))
        or not is_hub_id(text)
    )
    if local:
        raise NoSuchFolderError(
            f"no such folder: {text or repr(text)} (the {what} must be an existing local folder, or a hub id "
            "of the form owner/name); check the path and the current directory"
        )
    return text, False
