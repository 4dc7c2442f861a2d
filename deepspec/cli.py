"""What entry points share about the strings a user types: numeric option types and one name per thing.

The ``argparse`` type functions refuse a bad value at parse time (``--steps 0``, ``--seed -1``,
``--held-out-fraction nan``) with argparse's own one-line usage error and exit code 2, before any
work is done::

    p.add_argument("--steps", type=positive_int, default=200)
    p.add_argument("--held-out-fraction", type=probability, default=0.5)

One vocabulary: every tool names a thing with the same flag, added through :func:`add_target`,
:func:`add_draft`, :func:`add_output_dir`, :func:`add_output_file`, :func:`add_overwrite`,
:func:`add_max_new_tokens` and :func:`add_num_samples`. The tools of the public DeepSpec release keep
their own spellings (``eval.py --target_name_or_path / --draft_name_or_path``, ``generate_train_data.py
--model / --max-tokens``, ``download_and_split.py --sample-size``). A tool's older spelling stays
accepted as an alias that ``--help`` does not show (:func:`hide_aliases`).

Whether a string is a local path or a hub id is :func:`deepspec.hub.local_or_hub_id`'s rule.
"""

from __future__ import annotations

import argparse
import copy
import math
from typing import Sequence


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


# -- one name per thing ------------------------------------------------------------------------------
class _HidesAliases:
    """A help formatter mixin that leaves out the option strings an action lists in ``hidden_aliases``."""

    def _format_action_invocation(self, action):
        hidden = getattr(action, "hidden_aliases", ())
        if hidden:
            action = copy.copy(action)
            action.option_strings = [s for s in action.option_strings if s not in hidden]
        return super()._format_action_invocation(action)


def hide_aliases(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``parser``'s help leave out old spellings (call it once per parser that has argument groups;
    the ``add_*`` helpers call it themselves when given the parser)."""
    base = parser.formatter_class
    if not issubclass(base, _HidesAliases):
        parser.formatter_class = type(f"AliasHiding{base.__name__}", (_HidesAliases, base), {})
    return parser


def add_flag(container, name: str, *, aliases: Sequence[str] = (), **kwargs) -> argparse.Action:
    """``container.add_argument(name, *aliases, **kwargs)`` with ``aliases`` accepted but not shown in help."""
    if not kwargs.get("help"):
        raise ValueError(f"{name} needs help text")
    action = container.add_argument(name, *aliases, **kwargs)
    action.hidden_aliases = tuple(aliases)
    if isinstance(container, argparse.ArgumentParser):
        hide_aliases(container)
    return action


def add_target(container, *, help: str, aliases: Sequence[str] = (), **kwargs) -> argparse.Action:
    """``--target``: the target model, a local folder or a hub id."""
    return add_flag(container, "--target", aliases=aliases, help=help, **kwargs)


def add_draft(container, *, help: str, aliases: Sequence[str] = (), **kwargs) -> argparse.Action:
    """``--draft``: a trained draft (a checkpoint folder, a step folder or an exported draft)."""
    return add_flag(container, "--draft", aliases=aliases, help=help, **kwargs)


def add_output_dir(container, *, help: str, aliases: Sequence[str] = (), **kwargs) -> argparse.Action:
    """``--output-dir``: the folder a tool writes."""
    return add_flag(container, "--output-dir", aliases=aliases, help=help, **kwargs)


def add_output_file(container, *, help: str, aliases: Sequence[str] = (), **kwargs) -> argparse.Action:
    """``--output-file-path``: the one file a tool writes."""
    return add_flag(container, "--output-file-path", aliases=aliases, help=help, **kwargs)


def add_overwrite(container, *, help: str, aliases: Sequence[str] = ()) -> argparse.Action:
    """``--overwrite``: replace what an earlier run wrote (without it, a tool refuses to)."""
    return add_flag(container, "--overwrite", aliases=aliases, action="store_true", help=help)


def add_max_new_tokens(container, *, help: str, aliases: Sequence[str] = (), **kwargs) -> argparse.Action:
    """``--max-new-tokens``: the token budget of each generated answer."""
    kwargs.setdefault("type", positive_int)
    return add_flag(container, "--max-new-tokens", aliases=aliases, help=help, **kwargs)


def add_num_samples(container, *, help: str, aliases: Sequence[str] = (), **kwargs) -> argparse.Action:
    """``--num-samples``: how many samples (rows, prompts, conversations) a tool takes."""
    kwargs.setdefault("type", positive_int)
    return add_flag(container, "--num-samples", aliases=aliases, help=help, **kwargs)
