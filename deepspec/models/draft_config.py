"""Draft-model configs: the target's text config plus the draft's own fields.

Public DeepSpec layout: a draft's ``config.json`` *is* the target's text config
(same ``model_type``, e.g. ``qwen3`` / ``gemma4_text``) with ``num_hidden_layers``
set to the number of draft layers, ``tie_word_embeddings: false``, an
``architectures`` entry naming the draft (``Qwen3DSparkModel``, ``Gemma4Eagle3Model``,
...) and the draft fields below. DFlash is the DSpark architecture with
``markov_rank == 0`` and no confidence head.

We keep that layout by subclassing the family's own config class once per
(family, algorithm) at runtime (:func:`draft_config_class`): the family's
modules (MLP, norms, attention, rotary) then get exactly the config type they
expect, and the draft fields are typed dataclass fields with defaults.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

from deepspec.draft_specs import (
    UnknownAlgorithmError,
    architecture_fields,
    get_spec,
    saved_architecture,
    spec_of,
)
from deepspec.errors import DeepSpecError
from deepspec.targets import family_of, validate_layer_ids

# Every draft layer uses this attention type of the family: the draft attends to the whole
# context (no sliding window), so the family's "full" layer settings apply (Gemma 4: global
# head dim and proportional rope).
DRAFT_LAYER_TYPE = "full_attention"

# Rope keys of targets whose attention rotates part of the head or by several position grids (Qwen3.5:
# partial_rotary_factor 0.25, mrope). A draft built from another family's layers rotates the whole head
# with one position, so these keys are dropped: a saved config that kept them would tell vLLM to rotate
# a quarter of the head of weights trained with all of it (DeepSpec issue #71).
_FOREIGN_ROPE_KEYS = ("partial_rotary_factor", "mrope_section", "mrope_interleaved")


class DraftConfigError(DeepSpecError, ValueError):
    """A draft config that cannot work; the message says which key to change."""


class DraftConfig:
    """Marker + checks mixed into every draft config class (see :func:`draft_config_class`).

    ``isinstance(cfg, DraftConfig)`` tells a draft config from a plain target config.
    ``draft_architecture`` is a class attribute: ``"DSpark"`` (DSpark/DFlash) or ``"Eagle3"``
    (:func:`deepspec.draft_specs.architectures`).
    """

    draft_architecture: str = ""

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.tie_word_embeddings = False  # embedding and LM head are separate frozen copies of the target's
        # No validation here: transformers builds default instances (no target_layer_ids) internally;
        # the draft models call validate_draft() when they are built.

    def to_dict(self):
        out = super().to_dict()
        # Keys the family folds into per_layer_config are written flat too, for readers that expect them
        # (TargetFamily.flat_per_layer_keys; our loader ignores them when per_layer_config is present).
        layers = out.get("per_layer_config") or {}
        first = layers.get("0", layers.get(0))
        if first:
            for flat, per_layer in family_of(self).flat_per_layer_keys.items():
                out.setdefault(flat, int(first.get(per_layer, out.get(per_layer))))
        return out

    @property
    def num_context_features(self) -> int:
        """How many captured target layers ``fc`` concatenates."""
        return len(self.target_layer_ids or ())

    @property
    def algorithm(self) -> str:
        """The registered algorithm's name (``dspark`` / ``dflash`` / ``eagle3``)."""
        return spec_of(self).name

    def validate_draft(self) -> None:
        ids = self.target_layer_ids
        if not ids:
            raise DraftConfigError(
                "draft config needs target_layer_ids (the captured target layers), e.g. [1, 9, 17, 25, 33]"
            )
        if self.num_target_layers is not None:
            validate_layer_ids(ids, num_layers=int(self.num_target_layers))
        spec_of(self).check(self, prefix="", error=DraftConfigError, vocab_size=int(self.vocab_size))


def architecture_name(family_name: str, algorithm: str) -> str:
    """The saved ``architectures`` entry: family + the algorithm's architecture (``Qwen3DSparkModel``)."""
    prefix = family_name[:1].upper() + family_name[1:]  # qwen3 -> Qwen3, gemma4 -> Gemma4
    return f"{prefix}{get_spec(algorithm).architecture}Model"


@functools.lru_cache(maxsize=None)
def draft_config_class(model_type: str, architecture: str) -> type:
    """The draft config class for a family text ``model_type`` and a draft architecture (``DSpark`` / ``Eagle3``)."""
    from transformers import CONFIG_MAPPING

    try:
        fields = architecture_fields(architecture)  # the common fields and the algorithm's saved ones
    except UnknownAlgorithmError as exc:
        raise DraftConfigError(str(exc)) from None
    base = CONFIG_MAPPING[model_type]
    name = f"{base.__name__.removesuffix('Config')}{architecture}DraftConfig"
    namespace = {
        "__module__": __name__,
        "__qualname__": name,
        "__annotations__": {key: ann | None for key, (ann, _) in fields.items()},
        "draft_architecture": architecture,
        **{key: default for key, (_, default) in fields.items()},
    }
    cls = type(name, (DraftConfig, base), namespace)
    globals()[name] = cls  # importable by name, so configs pickle (dataloader workers, DDP spawn)
    return cls


def draft_config_architecture(config_dict: Mapping[str, Any]) -> str:
    """``"DSpark"`` or ``"Eagle3"`` from a saved config dict (architectures first, then fields)."""
    architecture = saved_architecture(config_dict)
    if architecture is None:
        raise DraftConfigError(
            f"not a DeepSpec draft config (architectures={config_dict.get('architectures')}); "
            "expected e.g. Qwen3DSparkModel or Qwen3Eagle3Model"
        )
    return architecture


def draft_config_from_dict(config_dict: Mapping[str, Any]):
    """Rebuild a draft config from a ``config.json`` dict (the public layout)."""
    data = dict(config_dict)
    cls = draft_config_class(data.pop("model_type"), draft_config_architecture(data))
    data.pop("transformers_version", None)
    config = cls(**data)
    for key in family_of(config).flat_per_layer_keys:  # folded into per_layer_config; kept for re-export
        if key in config_dict:
            setattr(config, key, config_dict[key])
    return config


def load_draft_config(path):
    """Read ``<path>/config.json`` as a draft config."""
    import json
    import os

    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    with open(file) as fh:
        return draft_config_from_dict(json.load(fh))


def draft_config_from_target(target_hf_config, model_cfg: Mapping[str, Any]):
    """Build a draft config from the target's transformers config and our ``cfg.model`` dict.

    ``model_cfg`` keys (see ``deepspec/recipes.py``): ``algorithm`` (dspark / dflash / eagle3),
    ``num_draft_layers``, ``target_layer_ids``; DSpark/DFlash: ``block_size``, ``mask_token_id``,
    ``num_anchors``, ``markov_rank``, ``markov_head_type``, ``confidence_head_alpha`` (> 0 enables the
    confidence head), ``confidence_head_with_markov``; Eagle3: ``ttt_length``, ``step_loss_decay``.
    """
    target_family = family_of(target_hf_config)
    text = target_family.text_config(target_hf_config)
    family = target_family.drafting_family()  # whose layers and config class the draft uses
    try:
        algorithm = get_spec(model_cfg.get("algorithm", ""))
    except UnknownAlgorithmError as exc:
        raise DraftConfigError(str(exc)) from None
    num_target_layers = int(text.num_hidden_layers)
    layer_ids = validate_layer_ids(model_cfg["target_layer_ids"], num_layers=num_target_layers)
    num_layers = int(model_cfg.get("num_draft_layers", 1))
    if num_layers < 1:
        raise DraftConfigError(f"model.num_draft_layers must be >= 1, got {num_layers}")

    base = text.to_dict()
    if family is not target_family:  # e.g. a Llama target's draft: the drafting family's config, the target's sizes
        from transformers import CONFIG_MAPPING

        known = set(CONFIG_MAPPING[family.model_types[0]]().to_dict())
        base = {k: v for k, v in base.items() if k in known}
        if isinstance(base.get("rope_parameters"), dict):
            base["rope_parameters"] = {k: v for k, v in base["rope_parameters"].items() if k not in _FOREIGN_ROPE_KEYS}
        if target_family.draft_intermediate_size is not None:
            base["intermediate_size"] = target_family.draft_intermediate_size(text)
    heterogeneous = "per_layer_config" in base
    per_layer = {str(k): v for k, v in (base.pop("per_layer_config", None) or {}).items()}
    for key in (
        "architectures",
        "layer_types",
        "_name_or_path",
        "transformers_version",
        "auto_map",
        "model_type",
        "num_hidden_layers",
        "tie_word_embeddings",
        "dtype",
        "torch_dtype",
        "sliding_window",
    ):
        base.pop(key, None)
    fields: dict[str, Any] = dict(
        architectures=[architecture_name(family.name, algorithm.name)],
        num_hidden_layers=num_layers,
        layer_types=[DRAFT_LAYER_TYPE] * num_layers,
        target_layer_ids=layer_ids,
        num_target_layers=num_target_layers,
        tie_word_embeddings=False,
    )
    if heterogeneous:
        # Per-layer overrides (Gemma 4: head dim of full-attention layers) are stored by layer
        # index, and only where they differ: give every draft layer those of a target layer of
        # the draft's type. Passing the dict (even empty) stops the family re-deriving defaults.
        types = list(getattr(text, "layer_types", None) or [])
        same_type = [i for i, t in enumerate(types) if t == DRAFT_LAYER_TYPE]
        overrides = dict(per_layer.get(str(same_type[0]), {})) if same_type else {}
        fields["per_layer_config"] = {i: dict(overrides) for i in range(num_layers)}
    # Every draft layer has its own k (and v) projection: no shared KV layers, no sliding window,
    # no per-layer input gates. Gemma 4's k=v attention (``attention_k_eq_v``) is kept from the target,
    # as DeepSpec does: values are then the key projection and the layer has no v_proj.
    for key, value in (
        ("num_kv_shared_layers", 0),
        ("use_sliding_window", False),
        ("hidden_size_per_layer_input", 0),
        ("use_bidirectional_attention", None),
        ("enable_moe_block", False),
    ):
        if key in base:
            base[key] = value
    algorithm.check(model_cfg, prefix="model.", error=DraftConfigError)
    fields.update(algorithm.draft_field_values(model_cfg, mask_token_id=target_family.mask_token_id))
    model_type = text.model_type if family is target_family else family.model_types[0]
    cls = draft_config_class(model_type, algorithm.architecture)
    config = cls(**{**base, **fields})
    config.validate_draft()
    return config
