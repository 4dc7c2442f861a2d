"""DFlash: the DSpark block drafter without its Markov and confidence heads, trained with CE only.

It is the ``DSpark`` architecture (same model class and saved fields) with ``markov_rank == 0`` and no
confidence head, which is how a saved config is recognised as DFlash.
"""

from __future__ import annotations

from deepspec.algorithms import field_reader
from deepspec.algorithms.dspark import block_algorithm, check_block_fields, has_heads


def check(values, *, prefix: str, error: type[Exception], vocab_size: int | None = None) -> None:
    check_block_fields(values, prefix=prefix, error=error, vocab_size=vocab_size)
    get = field_reader(values)
    if get("markov_rank"):
        raise error(f"DFlash has no Markov head: set {prefix}markov_rank=0 (got {get('markov_rank')})")


ALGORITHM = block_algorithm(name="dflash", heads=False, check=check, is_saved_as=lambda config: not has_heads(config))
