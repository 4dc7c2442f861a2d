"""Eagle3: a one-layer autoregressive draft over fused low/middle/high target features, trained with a
training-time test (TTT): ``ttt_length`` chained steps, each fed its own previous output, with a soft
cross-entropy to the target decaying by ``step_loss_decay`` per step."""

from __future__ import annotations

from deepspec.algorithms.contract import Algorithm
from deepspec.draft_specs import EAGLE3


def compute_sums(*, model, draft, batch, model_cfg, generator, target_logits) -> dict:
    """The TTT chain over every position, then the decayed per-step soft-CE sums."""
    from deepspec.models.losses import eagle3_loss

    out = model(
        input_ids=batch["input_ids"],
        hidden_states=batch["hidden_states"],
        loss_mask=batch["loss_mask"],
        attention_mask=batch["attention_mask"],
        attention_backend=model_cfg.attention_backend,
    )
    reference = target_logits(lambda: draft.gather_target_logits(batch["last_hidden_state"], out.target_positions))
    return eagle3_loss(
        logits=out.logits,
        target_logits=reference,
        step_mask=out.step_mask,
        step_loss_decay=float(model_cfg.step_loss_decay),
    )


def summarize(sums: dict) -> dict:
    from deepspec.models.losses import eagle3_metrics

    return eagle3_metrics(sums)


def build_proposer(draft):
    from deepspec.decoding.proposers import Eagle3Proposer

    return Eagle3Proposer(draft)


def recipe(*, target: str, target_layer_ids: list[int], mask_token_id=None) -> dict:
    """One-layer autoregressive draft trained with a 7-step training-time test."""
    return dict(
        algorithm="eagle3",
        target_model_name_or_path=target,
        num_draft_layers=1,
        target_layer_ids=list(target_layer_ids),
        ttt_length=7,
        step_loss_decay=0.8,
        attention_backend="auto",
    )


ALGORITHM = Algorithm(
    spec=EAGLE3,
    compute_sums=compute_sums,
    summarize=summarize,
    build_proposer=build_proposer,
    recipe=recipe,
    trainer_name="Eagle3Trainer",
)
