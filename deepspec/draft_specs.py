"""What each draft algorithm saves in its ``config.json`` and how those fields are checked: one
:class:`DraftSpec` per algorithm, in :data:`SPECS`.

This sits below the models that read it (the draft config, the draft classes), outside the models
package so the config layer reads it without importing torch, and above nothing of ours but
:mod:`deepspec.errors`. The algorithm registry (:mod:`deepspec.algorithms`), above the
models, pairs each spec with what only training and decoding need: the loss step, the metrics, the
proposer and the paper recipe. Which class builds an architecture is the models' own fact
(``deepspec.models.blocks.DraftPreTrainedModel.architecture_class``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from deepspec.errors import DeepSpecError


class UnknownAlgorithmError(DeepSpecError, ValueError):
    """``model.algorithm`` (or a saved draft) names no registered algorithm."""


@dataclass(frozen=True)
class DraftSpec:
    name: str  # the model.algorithm value
    architecture: str  # suffix of the saved architectures entry (Qwen3DSparkModel); shared by DSpark and DFlash
    draft_fields: Mapping[str, tuple[type, Any]]  # saved beyond the target's text config: name -> (type, default)
    draft_field_values: Callable[..., dict]  # (model_cfg, *, mask_token_id) -> those fields' values
    check: Callable[..., None]  # (values, *, prefix, error, vocab_size=None): the one validator
    is_saved_as: Callable[[Any], bool]  # tells algorithms sharing an architecture apart in a saved config


def field_reader(values) -> Callable[..., Any]:
    """``get(key, default)`` over a run config's ``model`` mapping or a draft config object, for the validators."""
    if isinstance(values, Mapping):
        return values.get
    return lambda key, default=None: getattr(values, key, default)


# The attention kernels every draft can run with (model.attention_backend): auto = flex on CUDA, sdpa on CPU.
# Here, torch-free, so the run config checks the option when it loads (deepspec.models.blocks resolves it).
ATTENTION_BACKENDS = ("auto", "sdpa", "eager", "flex")

# ----------------------------------------------------------------------------- the block drafter (DSpark, DFlash)

MARKOV_HEAD_TYPES = ("vanilla", "gated", "rnn")
BLOCK_ARCHITECTURE = "DSpark"
BLOCK_FIELDS = {
    "block_size": (int, 7),
    "mask_token_id": (int, None),
    "num_anchors": (int, 512),
    "markov_rank": (int, 0),
    "markov_head_type": (str, "vanilla"),
    "enable_confidence_head": (bool, False),
    "confidence_head_with_markov": (bool, False),
}


def _default(fields: Mapping[str, tuple[type, Any]], key: str) -> Any:
    return fields[key][1]


def block_field_values(model_cfg, *, mask_token_id, heads: bool) -> dict:
    """The block drafter's saved fields from ``cfg.model``; ``heads=False`` (DFlash): no confidence head."""
    get = field_reader(model_cfg)
    markov_rank = int(get("markov_rank", _default(BLOCK_FIELDS, "markov_rank")))
    mask = get("mask_token_id")  # unset or None: the target family's mask token
    conf = heads and float(get("confidence_head_alpha", 0.0)) > 0
    return dict(
        block_size=int(get("block_size", _default(BLOCK_FIELDS, "block_size"))),
        mask_token_id=mask_token_id if mask is None else int(mask),
        num_anchors=int(get("num_anchors", _default(BLOCK_FIELDS, "num_anchors"))),
        markov_rank=markov_rank,
        markov_head_type=str(get("markov_head_type", _default(BLOCK_FIELDS, "markov_head_type"))),
        enable_confidence_head=conf,
        confidence_head_with_markov=bool(conf and get("confidence_head_with_markov", False) and markov_rank > 0),
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


def check_dflash_fields(values, *, prefix: str, error: type[Exception], vocab_size: int | None = None) -> None:
    check_block_fields(values, prefix=prefix, error=error, vocab_size=vocab_size)
    get = field_reader(values)
    if get("markov_rank"):
        raise error(f"DFlash has no Markov head: set {prefix}markov_rank=0 (got {get('markov_rank')})")


def has_heads(config) -> bool:
    return config.markov_rank > 0 or config.enable_confidence_head


def block_spec(*, name: str, heads: bool, check, is_saved_as) -> DraftSpec:
    """The block drafter's spec, with (DSpark) or without (DFlash) its two heads."""
    return DraftSpec(
        name=name,
        architecture=BLOCK_ARCHITECTURE,
        draft_fields=BLOCK_FIELDS,
        draft_field_values=lambda model_cfg, *, mask_token_id: block_field_values(
            model_cfg, mask_token_id=mask_token_id, heads=heads
        ),
        check=check,
        is_saved_as=is_saved_as,
    )


DSPARK = block_spec(name="dspark", heads=True, check=check_block_fields, is_saved_as=has_heads)
DFLASH = block_spec(
    name="dflash", heads=False, check=check_dflash_fields, is_saved_as=lambda config: not has_heads(config)
)

# ----------------------------------------------------------------------------- Eagle3

EAGLE3_FIELDS = {
    "ttt_length": (int, 7),
    "step_loss_decay": (float, 0.8),
    "draft_num_hidden_layers": (int, 1),
}


def eagle3_field_values(model_cfg, *, mask_token_id=None) -> dict:
    get = field_reader(model_cfg)
    return dict(
        ttt_length=int(get("ttt_length", _default(EAGLE3_FIELDS, "ttt_length"))),
        step_loss_decay=float(get("step_loss_decay", _default(EAGLE3_FIELDS, "step_loss_decay"))),
        draft_num_hidden_layers=int(get("num_draft_layers", _default(EAGLE3_FIELDS, "draft_num_hidden_layers"))),
    )


def check_eagle3_fields(values, *, prefix: str, error: type[Exception], vocab_size: int | None = None) -> None:
    get = field_reader(values)
    ttt = get("ttt_length")
    if ttt is not None and ttt < 1:
        raise error(f"{prefix}ttt_length must be >= 1, got {ttt}")


EAGLE3 = DraftSpec(
    name="eagle3",
    architecture="Eagle3",
    draft_fields=EAGLE3_FIELDS,
    draft_field_values=eagle3_field_values,
    check=check_eagle3_fields,
    is_saved_as=lambda config: True,
)

# ----------------------------------------------------------------------------- lookups

SPECS: dict[str, DraftSpec] = {s.name: s for s in (DSPARK, DFLASH, EAGLE3)}  # read on every lookup


def get_spec(name: str, *, key: str = "model.algorithm") -> DraftSpec:
    try:
        return SPECS[str(name).lower()]
    except KeyError:
        raise UnknownAlgorithmError(f"{key} must be one of {tuple(SPECS)}, got {name!r}") from None


def architectures() -> tuple[str, ...]:
    return tuple(dict.fromkeys(s.architecture for s in SPECS.values()))


def architecture_fields(architecture: str) -> dict[str, tuple[type, Any]]:
    """The saved fields of a draft architecture (its algorithms must declare the same ones)."""
    members = [s for s in SPECS.values() if s.architecture == architecture]
    if not members:
        raise UnknownAlgorithmError(f"draft architecture must be one of {architectures()}, got {architecture!r}")
    fields = dict(members[0].draft_fields)
    for other in members[1:]:
        assert dict(other.draft_fields) == fields, f"{other.name} and {members[0].name} share {architecture}"
    return fields


def spec_of(draft_config) -> DraftSpec:
    """The spec of the algorithm a draft config (or a loaded draft's config) was trained with."""
    architecture = draft_config.draft_architecture
    for spec in SPECS.values():
        if spec.architecture == architecture and spec.is_saved_as(draft_config):
            return spec
    raise UnknownAlgorithmError(f"no registered algorithm matches this {architecture} draft config")


def saved_architecture(config_dict: Mapping[str, Any]) -> str | None:
    """The draft architecture of a saved ``config.json`` dict: its ``architectures`` name, else its own fields."""
    names = " ".join(config_dict.get("architectures") or ())
    known = architectures()
    for architecture in known:
        if f"{architecture}Model" in names:
            return architecture
    for architecture in known:
        own = set(architecture_fields(architecture)) - {
            k for other in known if other != architecture for k in architecture_fields(other)
        }
        if own & set(config_dict):
            return architecture
    return None
