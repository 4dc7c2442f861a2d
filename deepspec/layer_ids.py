"""Target layer ids: the one validator, and the spread rule the shipped configs follow.

Light on purpose (no torch): the run config is checked with it before anything heavy is imported.
"""

from __future__ import annotations

from numbers import Integral
from typing import Sequence


def check_layer_ids(
    layer_ids: Sequence[int],
    *,
    num_layers: int | None = None,
    error: type[Exception] = ValueError,
    key: str = "target_layer_ids",
) -> list[int]:
    """Strictly increasing ints in [-1, num_layers - 2] (-1 = embedding output); the last layer is never captured.

    Without ``num_layers`` (the run config, before the target is read) the upper bound is not checked.
    """
    if isinstance(layer_ids, (str, bytes)) or not isinstance(layer_ids, Sequence):
        raise error(f"{key} must be a non-empty list of ints, got {layer_ids!r}")
    if any(isinstance(i, bool) or not isinstance(i, Integral) for i in layer_ids):
        raise error(f"{key} must be a non-empty list of ints, got {list(layer_ids)!r}")
    ids = [int(i) for i in layer_ids]
    if not ids:
        raise error(f"{key} is empty; give at least one layer id (e.g. [1, 9, 17, 25, 33])")
    if any(b <= a for a, b in zip(ids, ids[1:])):
        raise error(f"{key} must be strictly increasing, got {ids}")
    if ids[0] < -1:
        raise error(f"{key}: -1 (embedding output) is the smallest id, got {ids}")
    if num_layers is not None and ids[-1] >= num_layers - 1:
        raise error(
            f"{key} {ids}: the target has {num_layers} layers (ids -1..{num_layers - 1}); "
            f"the last layer ({num_layers - 1}) and beyond cannot be captured, use ids <= {num_layers - 2}"
        )
    return ids


def spread_layer_ids(num_layers: int, *, count: int = 5, first: int = 1) -> list[int]:
    """``count`` evenly spaced ids from ``first`` to ``num_layers - 3`` (inclusive).

    Early enough to see token identity, late enough to see the target's next-token plan, and never
    the last layer (whose output is the post-norm state stored separately). Qwen3-4B (36 layers):
    the paper's [1, 9, 17, 25, 33].
    """
    last = num_layers - 3
    if last - first < count - 1:
        raise ValueError(f"{num_layers} layers are too few for {count} distinct ids in [{first}, {last}]")
    step = (last - first) / (count - 1)
    return [round(first + i * step) for i in range(count)]
