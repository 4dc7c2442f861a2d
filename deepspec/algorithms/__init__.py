"""The algorithm registry: one module per draft algorithm, one line per algorithm in :data:`ALGORITHMS`.

``model.algorithm`` names an entry; everything that differs between algorithms is read from it:
the draft config fields, their checks, the draft model class, the trainer's loss step, the metrics
summary, the decoding proposer and the paper recipe. Nothing else in the tree branches on the
algorithm's name, so an algorithm missing a piece fails loudly here instead of silently taking
another algorithm's path.

A fourth algorithm is one new module ``deepspec/algorithms/<name>.py`` defining ``ALGORITHM =
Algorithm(...)`` with every field below, plus its line in :data:`ALGORITHMS`:

- ``name``: the ``model.algorithm`` value.
- ``architecture``: the draft model architecture, the suffix of the saved ``architectures`` entry
  (``Qwen3DSparkModel``). Algorithms sharing one (DSpark and DFlash) share the model class and the
  saved fields, and ``is_saved_as`` tells them apart in a saved config.
- ``draft_fields``: the fields the draft's ``config.json`` carries beyond the target's text config,
  ``name -> (type, default)``.
- ``draft_field_values(model_cfg, *, mask_token_id)``: those fields' values from ``cfg.model``.
- ``check(values, *, prefix, error)``: the one validator of those fields, used for the run config
  (``prefix="model."``) and for draft configs (``prefix=""``); raises ``error`` saying what to change.
- ``model_class()``: the draft ``nn.Module`` class (imported on call: the registry stays light, so
  the config layer can read it before torch is imported).
- ``compute_sums(...)``: one micro-batch to loss sums (see :mod:`deepspec.models.losses`).
- ``summarize(sums)``: readable metrics from the all-reduced sums.
- ``build_proposer(draft)``: the decoding proposer (:mod:`deepspec.decoding.proposers`).
- ``recipe(*, target, target_layer_ids, mask_token_id)``: the paper's ``cfg.model`` section.
- ``trainer_name``: the ``train.trainer_cls`` value older configs use for it (checked, not needed).

Export formats keep their own per-algorithm mapping (:mod:`deepspec.export.speculators`) and refuse
an algorithm they do not know.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from deepspec.errors import DeepSpecError


class UnknownAlgorithmError(DeepSpecError, ValueError):
    """``model.algorithm`` (or a saved draft) names no registered algorithm."""


@dataclass(frozen=True)
class Algorithm:
    name: str
    architecture: str
    draft_fields: Mapping[str, tuple[type, Any]]
    draft_field_values: Callable[..., dict]
    check: Callable[..., None]
    is_saved_as: Callable[[Any], bool]
    model_class: Callable[[], type]
    compute_sums: Callable[..., dict]
    summarize: Callable[[dict], dict]
    build_proposer: Callable[[Any], Any]
    recipe: Callable[..., dict]
    trainer_name: str


def field_reader(values) -> Callable[..., Any]:
    """``get(key, default)`` over a run config's ``model`` mapping or a draft config object, for the validators."""
    if isinstance(values, Mapping):
        return values.get
    return lambda key, default=None: getattr(values, key, default)


def _registry() -> dict[str, Algorithm]:
    from deepspec.algorithms import dflash, dspark, eagle3

    return {a.name: a for a in (dspark.ALGORITHM, dflash.ALGORITHM, eagle3.ALGORITHM)}


ALGORITHMS: dict[str, Algorithm] = _registry()  # read on every lookup, never copied


def architectures() -> tuple[str, ...]:
    return tuple(dict.fromkeys(a.architecture for a in ALGORITHMS.values()))


def get_algorithm(name: str, *, key: str = "model.algorithm") -> Algorithm:
    try:
        return ALGORITHMS[str(name).lower()]
    except KeyError:
        raise UnknownAlgorithmError(f"{key} must be one of {tuple(ALGORITHMS)}, got {name!r}") from None


def architecture_fields(architecture: str) -> dict[str, tuple[type, Any]]:
    """The saved fields of a draft architecture (its algorithms must declare the same ones)."""
    members = [a for a in ALGORITHMS.values() if a.architecture == architecture]
    if not members:
        raise UnknownAlgorithmError(f"draft architecture must be one of {architectures()}, got {architecture!r}")
    fields = dict(members[0].draft_fields)
    for other in members[1:]:
        assert dict(other.draft_fields) == fields, f"{other.name} and {members[0].name} share {architecture}"
    return fields


def algorithm_of(draft_config) -> Algorithm:
    """The algorithm a draft config (or a loaded draft's config) was trained with."""
    architecture = draft_config.draft_architecture
    for algorithm in ALGORITHMS.values():
        if algorithm.architecture == architecture and algorithm.is_saved_as(draft_config):
            return algorithm
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
