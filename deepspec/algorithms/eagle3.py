"""Eagle3: a one-layer autoregressive draft over fused low/middle/high target features, trained with a
training-time test (TTT): ``ttt_length`` chained steps, each fed its own previous output, with a soft
cross-entropy to the target decaying by ``step_loss_decay`` per step."""

from __future__ import annotations

from deepspec.algorithms.contract import Algorithm, SpeculatorsAdapter
from deepspec.draft_specs import EAGLE3, field_reader


def compute_sums(*, model, draft, batch, model_cfg, generator, target_logits, attention_backend) -> dict:
    """The TTT chain over every position, then the decayed per-step soft-CE sums."""
    from deepspec.models.losses import eagle3_loss

    out = model(
        input_ids=batch["input_ids"],
        hidden_states=batch["hidden_states"],
        loss_mask=batch["loss_mask"],
        attention_mask=batch["attention_mask"],
        attention_backend=attention_backend,
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


def build_proposer(draft, *, gamma: int | None = None):
    from deepspec.decoding.proposers import Eagle3Proposer

    return Eagle3Proposer(draft, gamma=gamma)


def recipe(*, target: str, target_layer_ids: list[int], mask_token_id=None) -> dict:
    """The spec's defaults: one autoregressive layer trained with a 7-step training-time test, step decay 0.8."""
    return dict(
        EAGLE3.defaults(),
        algorithm="eagle3",
        target_model_name_or_path=target,
        target_layer_ids=list(target_layer_ids),
        attention_backend="auto",
    )


def refuse_speculators(config: dict) -> str | None:
    layers = int(config["num_hidden_layers"])
    if layers != 1:
        return (
            f"an Eagle3 draft with {layers} layers: ours fuses [embeds ; features] in every layer, the speculators "
            "format (and vLLM) only in layer 0, so there is no equivalent; only one-layer Eagle3 drafts map "
            "(model.num_draft_layers=1, the default)"
        )
    return None


# Our layer fuses [input_layernorm(embeds) ; hidden_norm(x)] and keeps the un-normalised x as residual:
# all four speculators norm flags false (vLLM reads a missing norm_before_residual as true).
SPECULATORS = SpeculatorsAdapter(
    architecture="Eagle3Speculator",
    aux_key="eagle_aux_hidden_state_layer_ids",
    flags={
        "norm_before_residual": (False, True),
        "norm_before_fc": (False, False),
        "fc_norm": (False, False),
        "norm_output": (False, False),
    },
    flags_refused=(
        "Eagle3 with {flags}; DeepSpec's Eagle3 layer normalises embeds and features separately and keeps the "
        "un-normalised features as residual (all four flags false), so it has no equivalent"
    ),
    import_defaults={},
    import_fixed={},
    refuse=refuse_speculators,
)

ALGORITHM = Algorithm(
    spec=EAGLE3,
    compute_sums=compute_sums,
    summarize=summarize,
    build_proposer=build_proposer,
    recipe=recipe,
    trainer_name="Eagle3Trainer",
    speculators=SPECULATORS,
    trained_tokens=lambda config: int(field_reader(config)("ttt_length")),
)
