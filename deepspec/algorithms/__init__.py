"""The algorithm registry: one module per draft algorithm, one line per algorithm in :data:`ALGORITHMS`.

``model.algorithm`` names an entry; everything that differs between algorithms is read from it. The
layering runs one way: targets -> :mod:`deepspec.draft_specs` (what a draft saves and how its fields are
checked) -> models -> decoding -> this registry -> training / eval / export. Models and proposers never
look themselves up here; whoever builds them passes what they need.

A fourth algorithm is:

- its :class:`~deepspec.draft_specs.DraftSpec` in ``deepspec.draft_specs.SPECS``: ``name`` (the
  ``model.algorithm`` value), ``architecture`` (the saved ``architectures`` suffix, ``Qwen3DSparkModel``;
  algorithms sharing one share the model class and saved fields, and ``is_saved_as`` tells them apart),
  and its ``fields`` (:class:`~deepspec.draft_specs.DraftField`: key, type, default, bound, saved or not,
  where a speculators config keeps it), from which the saved fields, their values and the one validator
  ``check`` follow;
- a draft class for a new architecture (a subclass of ``DraftPreTrainedModel`` with its own
  ``draft_architecture``), or an existing architecture;
- one module ``deepspec/algorithms/<name>.py`` defining ``ALGORITHM = Algorithm(spec, ...)``
  (:mod:`deepspec.algorithms.contract`): ``compute_sums`` (one micro-batch to loss sums),
  ``summarize``, ``build_proposer``, ``recipe`` (the paper's ``cfg.model``), ``trainer_name``,
  ``speculators`` (its :class:`~deepspec.algorithms.contract.SpeculatorsAdapter`: the speculators class,
  layer-id key, layout flags, what has no equivalent) and ``trained_tokens`` (tokens per round it was
  trained for), plus its line in :data:`ALGORITHMS`.
"""

from __future__ import annotations

from deepspec.algorithms import dflash, dspark, eagle3
from deepspec.algorithms.contract import Algorithm
from deepspec.errors import DeepSpecError
from deepspec.draft_specs import (
    UnknownAlgorithmError,
    architecture_fields,
    architectures,
    field_reader,
    saved_architecture,
    spec_of,
)

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "SpeculativeTokensError",
    "UnknownAlgorithmError",
    "algorithm_of",
    "architecture_fields",
    "architectures",
    "build_proposer",
    "field_reader",
    "get_algorithm",
    "saved_architecture",
    "speculative_tokens",
]

ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (dspark.ALGORITHM, dflash.ALGORITHM, eagle3.ALGORITHM)}


def get_algorithm(name: str, *, key: str = "model.algorithm") -> Algorithm:
    try:
        return ALGORITHMS[str(name).lower()]
    except KeyError:
        raise UnknownAlgorithmError(f"{key} must be one of {tuple(ALGORITHMS)}, got {name!r}") from None


def algorithm_of(draft_config) -> Algorithm:
    """The algorithm a draft config (or a loaded draft's config) was trained with."""
    return get_algorithm(spec_of(draft_config).name)


class SpeculativeTokensError(DeepSpecError, ValueError):
    """More speculative tokens asked of a draft than it was trained to propose; the message says the bound."""


def speculative_tokens(draft_config, requested: int | None = None) -> int:
    """Tokens a draft proposes per round: ``requested`` (an engine's num_speculative_tokens, 1..trained), or
    what it was trained for (block_size / ttt_length) when None."""
    algorithm = algorithm_of(draft_config)
    trained = algorithm.trained_tokens(draft_config)
    if requested is None:
        return trained
    if isinstance(requested, bool) or int(requested) != requested or not 1 <= requested <= trained:
        raise SpeculativeTokensError(
            f"--num-speculative-tokens {requested}: this {algorithm.name} draft was trained to propose {trained} "
            f"tokens per round, so it takes 1..{trained}; positions past its training were never learned "
            "(engines would draft garbage there)"
        )
    return int(requested)


def build_proposer(draft, *, num_speculative_tokens: int | None = None):
    """The decoding proposer for a loaded draft model (its algorithm's), proposing
    :func:`speculative_tokens` tokens per round."""
    gamma = speculative_tokens(draft.config, num_speculative_tokens)
    return algorithm_of(draft.config).build_proposer(draft, gamma=gamma)
