"""Every draft algorithm's settings, declared once: one :class:`DraftSpec` per algorithm, in :data:`SPECS`.

A spec lists its :class:`DraftField` s: the ``cfg.model`` key, the type, the default, the bound, and
whether the field is saved in the draft's ``config.json`` (``saved``) and where a speculators config
keeps it (``speculators``). Everything else is derived from that list: the saved fields and their
values (:meth:`DraftSpec.draft_field_values`), the one validator (:meth:`DraftSpec.check`, which the run
config, the draft config and the registry all call) and the speculators field mapping
(:mod:`deepspec.export.speculators` reads ``fields``).

This sits below the models that read it (the draft config, the draft classes), outside the models
package so the config layer reads it without importing torch, and above nothing of ours but
:mod:`deepspec.errors`. The algorithm registry (:mod:`deepspec.algorithms`), above the models, pairs
each spec with what only training, decoding and export need: the loss step, the metrics, the proposer,
the paper recipe and the speculators adapter. Which class builds an architecture is the models' own fact
(``deepspec.models.blocks.DraftPreTrainedModel.architecture_class``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from deepspec.errors import DeepSpecError


class UnknownAlgorithmError(DeepSpecError, ValueError):
    """``model.algorithm`` (or a saved draft) names no registered algorithm."""


@dataclass(frozen=True)
class DraftField:
    """One draft setting. ``name`` is its key in a saved ``config.json`` and, unless ``option`` names
    another, in ``cfg.model``; ``saved=False`` marks a training setting that no checkpoint keeps."""

    name: str
    kind: type  # int, float, str, bool or list
    default: Any = None  # what an absent key means (for training-only fields: the paper recipe's value)
    saved: bool = True
    option: str = ""  # the cfg.model key, when it is not `name`
    low: float | None = None  # the lower bound
    low_open: bool = False  # the bound itself is refused
    why: str = ""  # said after the bound when a value breaks it
    choices: tuple = ()
    speculators: str = "top"  # a speculators config keeps it: "top" level, under our "deepspec" key, or "" (not)
    derived: bool = False  # saved, but follows from other fields (DraftSpec.derive): no recipe sets it

    @property
    def key(self) -> str:
        return self.option or self.name

    def check(self, value, *, prefix: str, error: type[Exception], key: str) -> None:
        """``value`` (not None) against the type, the bound and the choices."""
        where = f"{prefix}{key}"
        if self.choices:
            if value not in self.choices:
                raise error(f"{where} must be one of {self.choices}, got {value!r}")
        elif self.kind is bool:
            if not isinstance(value, bool):
                raise error(f"{where} must be True or False, got {value!r}")
        elif self.kind in (int, float):
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or (self.kind is int and not float(value).is_integer()):
                raise error(f"{where} must be a finite {'integer' if self.kind is int else 'number'}, got {value!r}")
            if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
                why = f" ({self.why})" if self.why else ""
                raise error(f"{where} must be {'>' if self.low_open else '>='} {self.low}{why}, got {value!r}")


def field_reader(values) -> Callable[..., Any]:
    """``get(key, default)`` over a run config's ``model`` mapping or a draft config object, for the validators."""
    if isinstance(values, Mapping):
        return values.get
    return lambda key, default=None: getattr(values, key, default)


def _no_rules(get, *, prefix: str, error: type[Exception], vocab_size: int | None) -> None:
    """A spec without rules across its fields."""


@dataclass(frozen=True)
class DraftSpec:
    name: str  # the model.algorithm value
    architecture: str  # suffix of the saved architectures entry (Qwen3DSparkModel); shared by DSpark and DFlash
    fields: tuple[DraftField, ...]  # every setting of the algorithm's draft, saved or not
    derive: Callable[..., dict]  # (values, get, *, mask_token_id) -> values: the saved fields that follow from others
    rules: Callable[..., None]  # (get, *, prefix, error, vocab_size): the checks across fields
    is_saved_as: Callable[[Any], bool]  # tells algorithms sharing an architecture apart in a saved config

    @property
    def draft_fields(self) -> dict[str, tuple[type, Any]]:
        """The fields saved beyond the target's text config: name -> (type, default)."""
        return {f.name: (f.kind, f.default) for f in self.fields if f.saved}

    def defaults(self) -> dict[str, Any]:
        """``cfg.model`` key -> default, for every field with one (the recipes start from these)."""
        return {f.key: f.default for f in self.fields if f.default is not None and not f.derived}

    def draft_field_values(self, model_cfg, *, mask_token_id: int | None = None) -> dict:
        """The saved fields' values for a run config's ``model`` section (absent keys: the defaults)."""
        get = field_reader(model_cfg)
        values = {}
        for f in self.fields:
            if f.saved:
                value = get(f.key, f.default)
                values[f.name] = value if value is None else f.kind(value)
        return self.derive(values, get, mask_token_id=mask_token_id)

    def check(self, values, *, prefix: str, error: type[Exception], vocab_size: int | None = None) -> None:
        """The one validator, over a run config's ``model`` mapping (prefix ``model.``, cfg.model keys) or a
        draft config object (saved names): every field present, then the rules across fields."""
        from_run_config = isinstance(values, Mapping)
        get = field_reader(values)
        for f in self.fields:
            key = f.key if from_run_config else f.name
            if from_run_config or f.saved:
                value = get(key)
                if value is not None:
                    f.check(value, prefix=prefix, error=error, key=key)
        self.rules(get, prefix=prefix, error=error, vocab_size=vocab_size)


# Fields every draft saves, whatever its algorithm (the draft config class adds them to the spec's).
COMMON_FIELDS = (
    DraftField("target_layer_ids", list, speculators=""),  # kept as the aux layer ids (+1)
    DraftField("num_target_layers", int, speculators="deepspec"),
)

# The attention kernels every draft can run with (model.attention_backend): auto = flex on CUDA, sdpa on CPU.
# Here, torch-free, so the run config checks the option when it loads (deepspec.models.blocks resolves it).
ATTENTION_BACKENDS = ("auto", "sdpa", "eager", "flex")

# ----------------------------------------------------------------------------- the block drafter (DSpark, DFlash)

MARKOV_HEAD_TYPES = ("vanilla", "gated", "rnn")
BLOCK_ARCHITECTURE = "DSpark"


def block_fields(*, heads: bool) -> tuple[DraftField, ...]:
    """The block drafter's fields; ``heads`` (DSpark) sets the loss weights of CE + L1 + confidence,
    without (DFlash) CE alone. The saved ones are the same for both: they share the architecture."""
    return (
        DraftField("block_size", int, 7, low=2, why="anchor + at least one mask"),
        # The block layout: true (DeepSpec's) = slot k predicts token p+k+1, block_size drafts per round;
        # false (vLLM / SGLang / z-lab DFlash) = slot 0 is the bonus token, slot k predicts token p+k,
        # block_size - 1 drafts per round.
        DraftField("sample_from_anchor", bool, True),
        DraftField("mask_token_id", int),  # None: the target family's mask token
        DraftField("num_anchors", int, 512, low=1, speculators="deepspec"),
        DraftField("markov_rank", int, 0, low=0, why="0 = no Markov head"),
        DraftField("markov_head_type", str, "vanilla", choices=MARKOV_HEAD_TYPES),
        DraftField("enable_confidence_head", bool, False, derived=True),  # from confidence_head_alpha > 0
        DraftField("confidence_head_with_markov", bool, False),
        DraftField("loss_decay_gamma", float, 4.0, saved=False, low=0, low_open=True, speculators=""),
        DraftField("ce_loss_alpha", float, 0.1 if heads else 1.0, saved=False, low=0, speculators=""),
        DraftField("l1_loss_alpha", float, 0.9 if heads else 0.0, saved=False, low=0, speculators=""),
        DraftField("confidence_head_alpha", float, 1.0 if heads else 0.0, saved=False, low=0, speculators=""),
    )


def block_values(values: dict, get, *, mask_token_id: int | None, heads: bool) -> dict:
    """The saved fields that follow from others: the family's mask token when none is set, the confidence
    head from its loss weight when one is given (never without ``heads``), and its Markov input only with
    a Markov head."""
    if values["mask_token_id"] is None:
        values["mask_token_id"] = mask_token_id
    alpha = get("confidence_head_alpha")  # a run config's loss weight; a saved config says it directly
    conf = heads and (float(alpha) > 0 if alpha is not None else bool(values["enable_confidence_head"]))
    values["enable_confidence_head"] = conf
    values["confidence_head_with_markov"] = bool(
        conf and get("confidence_head_with_markov", False) and values["markov_rank"] > 0
    )
    return values


def block_rules(get, *, prefix: str, error: type[Exception], vocab_size: int | None) -> None:
    if vocab_size is not None:
        mask = get("mask_token_id")
        if mask is None or not 0 <= int(mask) < int(vocab_size):
            raise error(
                f"{prefix}mask_token_id {mask!r} must be a token id in [0, {vocab_size}); "
                "use the family's mask token (deepspec.targets.FAMILIES, e.g. deepspec.recipes.QWEN3_MASK_TOKEN_ID)"
            )
    rank = get("markov_rank")
    if get("confidence_head_with_markov") and get("enable_confidence_head") is not None:
        if not (get("enable_confidence_head") and (rank or 0) > 0):
            raise error(
                f"{prefix}confidence_head_with_markov needs enable_confidence_head=True and markov_rank > 0; "
                "set confidence_head_with_markov=False for a confidence head on h_k alone"
            )


def dflash_rules(get, *, prefix: str, error: type[Exception], vocab_size: int | None) -> None:
    block_rules(get, prefix=prefix, error=error, vocab_size=vocab_size)
    if get("markov_rank"):
        raise error(f"DFlash has no Markov head: set {prefix}markov_rank=0 (got {get('markov_rank')})")


def has_heads(config) -> bool:
    return config.markov_rank > 0 or config.enable_confidence_head


def block_spec(*, name: str, heads: bool, rules, is_saved_as) -> DraftSpec:
    """The block drafter's spec, with (DSpark) or without (DFlash) its two heads."""
    return DraftSpec(
        name=name,
        architecture=BLOCK_ARCHITECTURE,
        fields=block_fields(heads=heads),
        derive=lambda values, get, *, mask_token_id: block_values(
            values, get, mask_token_id=mask_token_id, heads=heads
        ),
        rules=rules,
        is_saved_as=is_saved_as,
    )


DSPARK = block_spec(name="dspark", heads=True, rules=block_rules, is_saved_as=has_heads)
DFLASH = block_spec(name="dflash", heads=False, rules=dflash_rules, is_saved_as=lambda config: not has_heads(config))

# ----------------------------------------------------------------------------- Eagle3

EAGLE3 = DraftSpec(
    name="eagle3",
    architecture="Eagle3",
    fields=(
        DraftField("ttt_length", int, 7, low=1, speculators="deepspec"),
        DraftField("step_loss_decay", float, 0.8, low=0, low_open=True, speculators="deepspec"),
        # The speculators layer config's num_hidden_layers says it (and only one-layer drafts map).
        DraftField("draft_num_hidden_layers", int, 1, option="num_draft_layers", low=1, speculators=""),
    ),
    derive=lambda values, get, *, mask_token_id: values,
    rules=_no_rules,
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
    """The saved fields of a draft architecture (its algorithms must declare the same ones), common ones first."""
    members = [s for s in SPECS.values() if s.architecture == architecture]
    if not members:
        raise UnknownAlgorithmError(f"draft architecture must be one of {architectures()}, got {architecture!r}")
    fields = dict(members[0].draft_fields)
    for other in members[1:]:
        assert other.draft_fields == fields, f"{other.name} and {members[0].name} share {architecture}"
    return {**{f.name: (f.kind, f.default) for f in COMMON_FIELDS}, **fields}


def spec_of(draft_config) -> DraftSpec:
    """The spec of the algorithm a draft config (or a loaded draft's config) was trained with."""
    architecture = draft_config.draft_architecture
    for spec in SPECS.values():
        if spec.architecture == architecture and spec.is_saved_as(draft_config):
            return spec
    raise UnknownAlgorithmError(f"no registered algorithm matches this {architecture} draft config")


def is_speculators_config(config: Mapping[str, Any]) -> bool:
    """A vllm-project/speculators ``config.json`` (read by ``deepspec.export.speculators``), not ours."""
    return "speculators_model_type" in config


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
