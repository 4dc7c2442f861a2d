"""DSpark: a parallel block drafter with a Markov head (left-to-right bias from the token drawn before)
and a confidence head; trained with CE + L1 to the target + BCE on the confidence.

The architecture (``DSpark``, :class:`deepspec.models.dspark.DSparkDraftModel`) is shared with DFlash
(:mod:`deepspec.algorithms.dflash`), which is this model without the two heads.
"""

from __future__ import annotations

from deepspec.algorithms import Algorithm, field_reader

MARKOV_HEAD_TYPES = ("vanilla", "gated", "rnn")
ARCHITECTURE = "DSpark"
# Saved in the draft's config.json (the public DeepSpec layout), with their defaults.
DRAFT_FIELDS = {
    "block_size": (int, 7),
    "mask_token_id": (int, None),
    "num_anchors": (int, 512),
    "markov_rank": (int, 0),
    "markov_head_type": (str, "vanilla"),
    "enable_confidence_head": (bool, False),
    "confidence_head_with_markov": (bool, False),
}


def block_field_values(model_cfg, *, mask_token_id, heads: bool) -> dict:
    """The block drafter's saved fields from ``cfg.model``; ``heads=False`` (DFlash): no confidence head."""
    markov_rank = int(model_cfg.get("markov_rank", 0))
    mask = model_cfg.get("mask_token_id")  # unset or None: the target family's mask token
    conf = heads and float(model_cfg.get("confidence_head_alpha", 0.0)) > 0
    return dict(
        block_size=int(model_cfg.get("block_size", 7)),
        mask_token_id=mask_token_id if mask is None else int(mask),
        num_anchors=int(model_cfg.get("num_anchors", 512)),
        markov_rank=markov_rank,
        markov_head_type=str(model_cfg.get("markov_head_type", "vanilla")),
        enable_confidence_head=conf,
        confidence_head_with_markov=bool(
            conf and model_cfg.get("confidence_head_with_markov", False) and markov_rank > 0
        ),
    )


def check_block_fields(values, *, prefix: str, error: type[Exception], vocab_size: int | None = None) -> None:
    """Block-drafter fields present in ``values`` (a run config's ``model`` or a draft config)."""
    get = field_reader(values)
    block_size = get("block_size")
    if block_size is not None and block_size < 2:
        raise error(f"{prefix}block_size must be >= 2 (anchor + at least one mask), got {block_size}")
    rank = get("markov_rank")
    if rank is not None and rank < 0:
        raise error(f"{prefix}markov_rank must be >= 0 (0 = no Markov head), got {rank}")
    head = get("markov_head_type")
    if head is not None and head not in MARKOV_HEAD_TYPES:
        raise error(f"{prefix}markov_head_type must be one of {MARKOV_HEAD_TYPES}, got {head!r}")
    if vocab_size is not None:
        mask = get("mask_token_id")
        if mask is None or not 0 <= int(mask) < int(vocab_size):
            raise error(
                f"{prefix}mask_token_id {mask!r} must be a token id in [0, {vocab_size}); "
                "use the family's mask token (deepspec.targets.FAMILIES, e.g. deepspec.recipes.QWEN3_MASK_TOKEN_ID)"
            )
    if get("confidence_head_with_markov") and get("enable_confidence_head") is not None:
        if not (get("enable_confidence_head") and (rank or 0) > 0):
            raise error(
                f"{prefix}confidence_head_with_markov needs enable_confidence_head=True and markov_rank > 0; "
                "set confidence_head_with_markov=False for a confidence head on h_k alone"
            )


def has_heads(config) -> bool:
    return config.markov_rank > 0 or config.enable_confidence_head


def block_model_class():
    from deepspec.models.dspark import DSparkDraftModel

    return DSparkDraftModel


def block_compute_sums(*, model, draft, batch, model_cfg, generator, target_logits) -> dict:
    """Sample anchors, run the block drafter, compare each slot with the target (CE / L1 / BCE sums)."""
    from deepspec.models.dspark import sample_anchors
    from deepspec.models.losses import parallel_draft_loss

    m = model_cfg
    anchors, valid = sample_anchors(
        batch["loss_mask"], num_anchors=int(m.num_anchors), block_size=int(m.block_size), generator=generator
    )
    out = model(
        input_ids=batch["input_ids"],
        hidden_states=batch["hidden_states"],
        loss_mask=batch["loss_mask"],
        anchors=anchors,
        anchor_valid=valid,
        attention_backend=m.attention_backend,
    )
    reference = target_logits(lambda: draft.gather_target_logits(batch["last_hidden_state"], out.targets))
    return parallel_draft_loss(
        logits=out.logits,
        target_logits=reference,
        labels=out.targets.labels,
        slot_mask=out.targets.slot_mask,
        confidence_logits=out.confidence_logits,
        loss_decay_gamma=float(m.loss_decay_gamma),
        ce_loss_alpha=float(m.ce_loss_alpha),
        l1_loss_alpha=float(m.l1_loss_alpha),
        confidence_head_alpha=float(m.confidence_head_alpha),
    )


def block_summary(sums: dict) -> dict:
    from deepspec.models.losses import parallel_draft_metrics

    return parallel_draft_metrics(sums)


def block_proposer(draft):
    from deepspec.decoding.proposers import ParallelProposer

    return ParallelProposer(draft)


def block_recipe(*, target: str, target_layer_ids: list[int], mask_token_id: int | None, heads: bool) -> dict:
    """The paper's block drafter: block 7, 5 layers, 512 anchors; with heads (DSpark) Markov rank 256,
    confidence head and 0.1 CE + 0.9 L1, without (DFlash) CE only."""
    return dict(
        algorithm="dspark" if heads else "dflash",
        target_model_name_or_path=target,
        block_size=7,
        num_draft_layers=5,
        target_layer_ids=list(target_layer_ids),
        mask_token_id=mask_token_id,
        num_anchors=512,
        markov_rank=256 if heads else 0,
        markov_head_type="vanilla",
        confidence_head_alpha=1.0 if heads else 0.0,
        confidence_head_with_markov=heads,
        loss_decay_gamma=4.0,
        ce_loss_alpha=0.1 if heads else 1.0,
        l1_loss_alpha=0.9 if heads else 0.0,
        attention_backend="auto",  # flex on CUDA, sdpa with an explicit mask on CPU
    )


def block_algorithm(*, name: str, heads: bool, check, is_saved_as) -> Algorithm:
    """A registry entry for the block drafter, with (DSpark) or without (DFlash) its two heads."""
    return Algorithm(
        name=name,
        architecture=ARCHITECTURE,
        draft_fields=DRAFT_FIELDS,
        draft_field_values=lambda model_cfg, *, mask_token_id: block_field_values(
            model_cfg, mask_token_id=mask_token_id, heads=heads
        ),
        check=check,
        is_saved_as=is_saved_as,
        model_class=block_model_class,
        compute_sums=block_compute_sums,
        summarize=block_summary,
        build_proposer=block_proposer,
        recipe=lambda *, target, target_layer_ids, mask_token_id=None: block_recipe(
            target=target, target_layer_ids=target_layer_ids, mask_token_id=mask_token_id, heads=heads
        ),
        trainer_name="DSparkTrainer",
    )


ALGORITHM = block_algorithm(name="dspark", heads=True, check=check_block_fields, is_saved_as=has_heads)
