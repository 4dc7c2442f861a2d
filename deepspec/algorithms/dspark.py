"""DSpark: a parallel block drafter with a Markov head (left-to-right bias from the token drawn before)
and a confidence head; trained with CE + L1 to the target + BCE on the confidence.

The architecture (``DSpark``, :class:`deepspec.models.dspark.DSparkDraftModel`) is shared with DFlash
(:mod:`deepspec.algorithms.dflash`), which is this model without the two heads. What the draft saves and
how it is checked is its spec, :data:`deepspec.draft_specs.DSPARK`.
"""

from __future__ import annotations

from deepspec.algorithms.contract import Algorithm, SpeculatorsAdapter
from deepspec.draft_specs import DFLASH, DSPARK, DraftSpec, field_reader


def block_compute_sums(*, model, draft, batch, model_cfg, generator, target_logits, attention_backend) -> dict:
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
        attention_backend=attention_backend,
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


def block_proposer(draft, *, gamma: int | None = None):
    from deepspec.decoding.proposers import ParallelProposer

    return ParallelProposer(draft, gamma=gamma)


def block_recipe(*, target: str, target_layer_ids: list[int], mask_token_id: int | None, heads: bool) -> dict:
    """The paper's block drafter: the spec's defaults (block 7, 512 anchors, the loss weights: with heads
    0.1 CE + 0.9 L1 + the confidence BCE, without CE only), 5 layers and, with heads (DSpark), Markov rank 256."""
    spec = DSPARK if heads else DFLASH
    return dict(
        spec.defaults(),
        algorithm=spec.name,
        target_model_name_or_path=target,
        num_draft_layers=5,
        target_layer_ids=list(target_layer_ids),
        mask_token_id=mask_token_id,
        markov_rank=256 if heads else 0,
        confidence_head_with_markov=heads,
        attention_backend="auto",  # flex on CUDA, sdpa with an explicit mask on CPU
    )


# Why DeepSpec's DFlash layout gets no speculators export (issue 31, measured in vLLM 0.32's CPU build).
DFLASH_SPECULATORS_REFUSED = (
    "DFlash in DeepSpec's block layout (sample_from_anchor: true, slot k predicts token p+k+1) has no "
    "speculators export that an engine decodes right: vLLM's dflash method takes slot 0 for the bonus token, so "
    "its V1 model runner loads such a folder without a word and reads every prediction one slot off (measured: "
    "tau 1.09 instead of 1.17), and its V2 runner refuses it. Export it with --format deepspec and serve it with "
    "method dspark (vLLM's V2 GPU model runner), or train it in the engines' layout (model.sample_from_anchor=False), "
    "which vLLM's dflash method serves"
)


def samples_from_anchor(config) -> bool:
    """The block layout of a draft config (dict or object): True for DeepSpec's (the default)."""
    value = field_reader(config)("sample_from_anchor")
    return True if value is None else bool(value)


def dflash_export_refused(config) -> str | None:
    return DFLASH_SPECULATORS_REFUSED if samples_from_anchor(config) else None


def block_speculators(*, heads: bool) -> SpeculatorsAdapter:
    """The block drafter in the speculators format (``sample_from_anchor``, a field of ours, says the layout).
    A foreign DSpark folder that omits a field gets speculators' defaults; a DFlash one never has heads."""
    return SpeculatorsAdapter(
        architecture="DSparkSpeculator" if heads else "DFlashSpeculator",
        aux_key="aux_hidden_state_layer_ids",
        flags={},
        flags_refused="",
        import_defaults=(
            dict(
                block_size=8,
                markov_rank=256,
                enable_confidence_head=True,
                confidence_head_with_markov=True,
                sample_from_anchor=True,
            )
            if heads
            else dict(block_size=8, sample_from_anchor=False)
        ),
        import_fixed={} if heads else dict(markov_rank=0, enable_confidence_head=False),
        refuse=lambda config: None,
        export_refused=(lambda config: None) if heads else dflash_export_refused,
    )


def block_algorithm(spec: DraftSpec, *, heads: bool) -> Algorithm:
    """A registry entry for the block drafter, with (DSpark) or without (DFlash) its two heads."""
    return Algorithm(
        spec=spec,
        compute_sums=block_compute_sums,
        summarize=block_summary,
        build_proposer=block_proposer,
        recipe=lambda *, target, target_layer_ids, mask_token_id=None: block_recipe(
            target=target, target_layer_ids=target_layer_ids, mask_token_id=mask_token_id, heads=heads
        ),
        trainer_name="DSparkTrainer",
        speculators=block_speculators(heads=heads),
        trained_tokens=lambda config: (
            int(field_reader(config)("block_size")) - (0 if samples_from_anchor(config) else 1)
        ),
    )


ALGORITHM = block_algorithm(DSPARK, heads=True)
