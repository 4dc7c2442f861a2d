"""Draft models: DSpark / DFlash (parallel block drafter) and Eagle3, one implementation each for every target family.

Trainer-facing API::

    config = draft_config_from_target(target.model.config, cfg.model)
    draft = build_draft(config); draft.load_target_weights(target)   # frozen embedding + LM head
    # or, without loading the target model (what the trainer does):
    draft.load_frozen_weights(embed=..., lm_head=...)                 # deepspec.target_files.load_frozen_target_pieces
    draft = load_draft(folder)                                          # any saved draft (from_pretrained)
"""

from deepspec.models.draft_config import (
    DraftConfig,
    DraftConfigError,
    draft_config_class,
    draft_config_from_dict,
    draft_config_from_target,
    load_draft_config,
)
from deepspec.models.dspark import DSparkDraftModel, DSparkTrainOutput, block_targets, sample_anchors
from deepspec.models.eagle3 import Eagle3DraftModel, Eagle3TrainOutput
from deepspec.models.loading import DraftLoadError, load_state_strict
from deepspec.models.losses import eagle3_loss, eagle3_metrics, parallel_draft_loss, parallel_draft_metrics

__all__ = [
    "DraftConfig",
    "DraftConfigError",
    "draft_config_class",
    "draft_config_from_dict",
    "draft_config_from_target",
    "load_draft_config",
    "DSparkDraftModel",
    "DSparkTrainOutput",
    "Eagle3DraftModel",
    "Eagle3TrainOutput",
    "block_targets",
    "sample_anchors",
    "parallel_draft_loss",
    "eagle3_loss",
    "parallel_draft_metrics",
    "eagle3_metrics",
    "build_draft",
    "load_draft",
    "DraftLoadError",
    "load_state_strict",
]


def build_draft(config):
    """A freshly initialised draft for a draft config (its per-family class, e.g. ``Qwen3DSparkModel``)."""
    from deepspec.models.blocks import DraftPreTrainedModel

    return DraftPreTrainedModel.architecture_class(config.draft_architecture)(config)


def load_draft(path, **kwargs):
    """Load a saved draft strictly: a folder (``config.json`` + ``model.safetensors``) or a hub id.

    ``kwargs``: ``config``, ``dtype``, ``device``, ``reader``. The class comes from the config's
    architecture (see ``DraftPreTrainedModel.from_pretrained``); a tensor that does not fit is a
    :class:`~deepspec.models.loading.DraftLoadError` naming it. Speculators-format folders load through
    ``deepspec.export.load_any_draft``.
    """
    from deepspec.models.blocks import DraftPreTrainedModel

    return DraftPreTrainedModel.from_pretrained(path, **kwargs)
