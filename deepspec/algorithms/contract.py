"""The contract every registry entry fulfils: a draft spec (what the draft saves and checks, from
:mod:`deepspec.draft_specs`, below the models) plus what only training and decoding need.

This module imports nothing of ours; the algorithm modules import it, and the registry
(:mod:`deepspec.algorithms`) imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Algorithm:
    spec: Any  # deepspec.draft_specs.DraftSpec: name, architecture, saved fields, their values and check
    compute_sums: Callable[..., dict]  # one micro-batch to loss sums (deepspec.models.losses)
    summarize: Callable[[dict], dict]  # readable metrics from the all-reduced sums
    build_proposer: Callable[[Any], Any]  # the decoding proposer for a loaded draft
    recipe: Callable[..., dict]  # the paper's cfg.model section
    trainer_name: str  # the train.trainer_cls value older configs use for it (checked, not needed)

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
