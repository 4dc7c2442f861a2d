"""The contract every registry entry fulfils: a draft spec (what the draft saves and checks, from
:mod:`deepspec.draft_specs`, below the models) plus what only training and decoding need.

This module imports nothing of ours; the algorithm modules import it, and the registry
(:mod:`deepspec.algorithms`) imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class SpeculatorsAdapter:
    """How a speculators config (vllm-project/speculators) holds this algorithm's draft; which of the spec's
    fields go where is each field's own ``speculators`` (:mod:`deepspec.export.speculators` reads both)."""

    architecture: str  # the speculators class name (DSparkSpeculator)
    aux_key: str  # where the captured target layers go, counted as speculators does (our ids + 1)
    flags: Mapping[str, tuple[bool, bool]]  # layout flag -> (the value our layout has, speculators' default)
    flags_refused: str  # why other flag values have no equivalent here; "{flags}" names them
    import_defaults: Mapping[str, Any]  # speculators' values for the top-level fields a foreign config omits
    import_fixed: Mapping[str, Any]  # our values whatever a foreign config says (DFlash: no heads)
    refuse: Callable[[dict], "str | None"]  # why our config dict has no equivalent in the format, else None
    # Why an engine would decode this format's export of our config dict wrongly, else None. Export only:
    # DeepSpec itself reads such a folder right, so an import is not refused for it.
    export_refused: Callable[[dict], "str | None"] = lambda config: None


@dataclass(frozen=True)
class Algorithm:
    spec: Any  # deepspec.draft_specs.DraftSpec: name, architecture, saved fields, their values and check
    # one micro-batch to loss sums (deepspec.models.losses); keyword arguments model, draft, batch, model_cfg,
    # generator, target_logits and attention_backend (the kernel the trainer runs: flex, sdpa or eager)
    compute_sums: Callable[..., dict]
    summarize: Callable[[dict], dict]  # readable metrics from the all-reduced sums
    build_proposer: Callable[..., Any]  # (draft, *, gamma=None): the decoding proposer for a loaded draft
    recipe: Callable[..., dict]  # the paper's cfg.model section
    trainer_name: str  # the train.trainer_cls value older configs use for it (checked, not needed)
    speculators: SpeculatorsAdapter  # its speculators-format mapping (deepspec.export.speculators)
    # Tokens the draft was trained to propose per round, from its config (a dict or a config object): the
    # most an engine's num_speculative_tokens may ask of it, and the default.
    trained_tokens: Callable[[Any], int]

    # The spec's facts, read through the entry (one object per algorithm for the trainer and the checks).
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def architecture(self) -> str:
        return self.spec.architecture

    @property
    def draft_fields(self):
        return self.spec.draft_fields

    @property
    def draft_field_values(self) -> Callable[..., dict]:
        return self.spec.draft_field_values

    @property
    def check(self) -> Callable[..., None]:
        return self.spec.check

    @property
    def is_saved_as(self) -> Callable[[Any], bool]:
        return self.spec.is_saved_as
