"""DFlash: the DSpark block drafter without its Markov and confidence heads, trained with CE only.

It is the ``DSpark`` architecture (same model class and saved fields) with ``markov_rank == 0`` and no
confidence head, which is how a saved config is recognised as DFlash.
"""

from __future__ import annotations

from deepspec.algorithms import Algorithm
from deepspec.algorithms.dspark import (
    ARCHITECTURE,
    DRAFT_FIELDS,
    block_compute_sums,
    block_field_values,
    block_model_class,
    block_proposer,
    block_recipe,
    block_summary,
    check_block_fields,
    has_heads,
)


def check(values, *, prefix: str, error: type[Exception], vocab_size: int | None = None) -> None:
    check_block_fields(values, prefix=prefix, error=error, vocab_size=vocab_size)
    get = values.get if hasattr(values, "get") else lambda k, d=None: getattr(values, k, d)
    if get("markov_rank"):
        raise error(f"DFlash has no Markov head: set {prefix}markov_rank=0 (got {get('markov_rank')})")


ALGORITHM = Algorithm(
    name="dflash",
    architecture=ARCHITECTURE,
    draft_fields=DRAFT_FIELDS,
    draft_field_values=lambda model_cfg, *, mask_token_id: block_field_values(
        model_cfg, mask_token_id=mask_token_id, heads=False
    ),
    check=check,
    is_saved_as=lambda config: not has_heads(config),
    model_class=block_model_class,
    compute_sums=block_compute_sums,
    summarize=block_summary,
    build_proposer=block_proposer,
    recipe=lambda *, target, target_layer_ids, mask_token_id=None: block_recipe(
        target=target, target_layer_ids=target_layer_ids, mask_token_id=mask_token_id, heads=False
    ),
    trainer_name="DSparkTrainer",
)
