"""The speculators format (vllm-project/speculators 0.9): our drafts out, any such draft in.

A speculators folder is ``config.json`` + ``model.safetensors``. The config nests the draft layers'
transformers config under ``transformer_layer_config`` and puts the algorithm's fields on top
(``speculators_model_type`` dspark / dflash / eagle3, ``aux_hidden_state_layer_ids`` or, for Eagle3,
``eagle_aux_hidden_state_layer_ids``, ``block_size``, ``mask_token_id``, the Markov and confidence
fields, ``sample_from_anchor``) plus ``speculators_config`` (algorithm, proposal methods, verifier).
vLLM reads such a folder with ``--speculative-config '{"method": <type>, "model": <folder>}'`` (or
``vllm serve <folder>``, which takes the target from ``verifier.name_or_path``).

How our layout maps, and why each rule:

- Layer ids: speculators and vLLM count a captured state by the target layer it feeds, so
  ``aux ids = our target_layer_ids + 1`` (our id L is the output of target layer L).
- Tensor names are ours already: ``layers.N.*``, ``fc``, ``hidden_norm``, ``norm``,
  ``markov_head.markov_w1/markov_w2`` (+ ``gate_proj`` / ``joint_proj``, same equations),
  ``confidence_head.proj``, ``embed_tokens``, ``lm_head`` (Gemma 4's ``layer_scalar`` buffers ride
  along). Speculators-only tensors are dropped on import: ``verifier_norm`` / ``verifier_lm_head``
  (training-time copies of the target's) and identity ``d2t`` / ``t2d`` tables.
- The block layout is our ``sample_from_anchor`` field, written as it is: true (DeepSpec's, slot k
  predicts token p+k+1) or false (the engines' DFlash layout: slot 0 is the bonus token, slot k predicts
  token p+k, ``block_size - 1`` drafts). DFlash in DeepSpec's layout is not exported at all (the
  adapter's ``export_refused``): vLLM's ``dflash`` method reads slot 0 as the bonus token, and its V1
  runner would decode such a folder one slot off without a word; folders earlier versions wrote still
  import.
- Eagle3: our layer fuses ``[input_layernorm(embeds) ; hidden_norm(x)]`` and keeps the un-normalised
  x as residual (``norm_before_residual: false``). Speculators feeds the 2H input to layer 0 only,
  so only one-layer Eagle3 drafts have an equivalent; the other Eagle3 norm variants have none here.
- Fields only DeepSpec uses (``num_anchors``, ``num_target_layers``, ``ttt_length``,
  ``step_loss_decay``) are kept under a ``deepspec`` key so the round trip is exact; a foreign folder
  without it gets our defaults.
- A reduced draft vocabulary (``draft_vocab_size`` < the target's, with ``d2t`` / ``t2d``) has no
  equivalent in our drafts: refused.

What engines do with it (docs/serving.md): vLLM maps a ``dspark`` folder to its
``Qwen3DSparkModel`` (Qwen 3 only) and an ``eagle3`` folder to ``Eagle3Qwen3ForCausalLM`` /
``Eagle3LlamaForCausalLM``.
:func:`deepspec.export.vllm_layout.vllm_caveat` says which exports vLLM cannot serve from this format.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from deepspec.algorithms import ALGORITHMS, Algorithm, UnknownAlgorithmError, algorithm_of, get_algorithm
from deepspec.draft_specs import COMMON_FIELDS, DraftField
from deepspec.errors import DeepSpecError, InputProtectionError, check_outputs_apart
from deepspec.fsio import write_failed
from deepspec.models.loading import is_speculators_config

SPECULATORS_VERSION = "0.9.0"
_DROPPED_ON_IMPORT = ("verifier_norm.weight", "verifier_lm_head.weight")


class SpeculatorsFormatError(DeepSpecError, ValueError):
    """A draft that has no equivalent across the two formats; the message says why and what to do."""


def read_config_json(folder: str | os.PathLike) -> dict:
    """``<folder>/config.json`` (models/loading's reader), its errors as this format's."""
    from deepspec.models.loading import DraftLoadError, read_config_dict

    try:
        return read_config_dict(folder)
    except DraftLoadError as exc:
        raise SpeculatorsFormatError(str(exc)) from None


def _algorithm(config: dict) -> Algorithm:
    from deepspec.models.draft_config import draft_config_from_dict

    return algorithm_of(draft_config_from_dict(config))


def _fields(algorithm: Algorithm, where: str) -> list[DraftField]:
    """The saved fields (common ones too) a speculators config keeps ``where``: "top", "deepspec" or ""."""
    return [f for f in (*COMMON_FIELDS, *algorithm.spec.fields) if f.saved and f.speculators == where]


# ----------------------------------------------------------------------------- ours -> speculators


def to_speculators_config(
    config: dict, *, verifier_name_or_path: str | None = None, verifier_architectures: list[str] | None = None
) -> dict:
    """Our draft ``config.json`` dict as a speculators config dict (see the module docstring)."""
    algorithm = _algorithm(config)
    adapter = algorithm.speculators
    why_not = adapter.refuse(config)
    if why_not:
        raise SpeculatorsFormatError(f"{why_not}. Export a draft that has one")
    served_wrongly = adapter.export_refused(config)
    if served_wrongly:
        raise SpeculatorsFormatError(served_wrongly)
    ours = {"architectures", *(f.name for f in (*COMMON_FIELDS, *algorithm.spec.fields) if f.saved)}
    out = {
        "architectures": [adapter.architecture],
        "speculators_model_type": algorithm.name,
        "speculators_version": SPECULATORS_VERSION,
        "transformer_layer_config": {k: v for k, v in config.items() if k not in ours},
        "draft_vocab_size": int(config["vocab_size"]),
        "target_hidden_size": int(config["hidden_size"]),
        "deepspec": {f.name: config[f.name] for f in _fields(algorithm, "deepspec") if config.get(f.name) is not None},
        **{f.name: config.get(f.name, f.default) for f in _fields(algorithm, "top")},
        adapter.aux_key: [int(i) + 1 for i in config["target_layer_ids"]],
        **{flag: ours_value for flag, (ours_value, _) in adapter.flags.items()},
    }
    out["speculators_config"] = {
        "algorithm": algorithm.name,
        "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": algorithm.trained_tokens(config)}],
        "default_proposal_method": "greedy",
        "verifier": {"name_or_path": verifier_name_or_path, "architectures": list(verifier_architectures or [])},
    }
    return out


def _verifier_architectures(name_or_path: str | None) -> list[str]:
    if name_or_path and os.path.isfile(os.path.join(name_or_path, "config.json")):
        try:
            return list(json.loads(Path(name_or_path, "config.json").read_text()).get("architectures") or [])
        except ValueError:
            return []
    return []


# ----------------------------------------------------------------------------- speculators -> ours


def from_speculators_config(spec: dict, *, source: str = "config.json") -> dict:
    """A speculators config dict as our draft ``config.json`` dict; refuses what has no equivalent."""
    kind = spec.get("speculators_model_type")
    try:
        algorithm = get_algorithm(kind)
    except UnknownAlgorithmError:
        raise SpeculatorsFormatError(
            f"{source}: speculators_model_type {kind!r}; DeepSpec reads {sorted(ALGORITHMS)}"
        ) from None
    adapter = algorithm.speculators
    ours = _layer_config(spec, algorithm=algorithm, source=source)
    found = {flag: bool(spec.get(flag, default)) for flag, (_, default) in adapter.flags.items()}
    bad = ", ".join(f"{flag}={str(value).lower()}" for flag, value in found.items() if value != adapter.flags[flag][0])
    if bad:
        raise SpeculatorsFormatError(f"{source}: {adapter.flags_refused.format(flags=bad)}")
    why_not = adapter.refuse(ours)
    if why_not:
        raise SpeculatorsFormatError(f"{source}: {why_not}")
    extra = dict(spec.get("deepspec") or {})
    for f in _fields(algorithm, "top"):
        value = spec.get(f.name, adapter.import_defaults.get(f.name, f.default))
        ours[f.name] = value if value is None else f.kind(value)
    for f in _fields(algorithm, "deepspec"):
        value = extra.get(f.name, f.default)
        ours[f.name] = value if value is None else f.kind(value)
    ours.update(adapter.import_fixed)
    ours = algorithm.spec.derive(ours, ours.get, mask_token_id=ours.get("mask_token_id"))
    aux = spec.get(adapter.aux_key)
    if not aux:
        raise SpeculatorsFormatError(f"{source}: no {adapter.aux_key}; DeepSpec needs the captured target layers")
    ours["target_layer_ids"] = [int(i) - 1 for i in aux]
    return ours


def _layer_config(spec: dict, *, algorithm: Algorithm, source: str) -> dict:
    """The draft layers' transformers config of a speculators config, as the base of ours (refusing a
    reduced vocabulary, another width and sliding-window layers)."""
    from deepspec.models.draft_config import DRAFT_LAYER_TYPE, architecture_name
    from deepspec.targets import TargetError, family_of

    layer = dict(spec.get("transformer_layer_config") or {})
    if not layer:
        raise SpeculatorsFormatError(f"{source}: no transformer_layer_config (the draft layers' config)")
    layer.setdefault("model_type", "qwen3")  # speculators' default layer config class
    try:
        family = family_of(type("Cfg", (), {"model_type": layer["model_type"]}))
    except TargetError as exc:
        raise SpeculatorsFormatError(f"{source}: {exc}") from None
    vocab = int(layer.get("vocab_size") or 0)
    if spec.get("draft_vocab_size") not in (None, vocab):
        raise SpeculatorsFormatError(
            f"{source}: draft_vocab_size {spec['draft_vocab_size']} < the target's {vocab} (a reduced draft "
            "vocabulary with d2t / t2d tables); DeepSpec drafts predict over the full vocabulary, so it cannot "
            "be loaded here"
        )
    if spec.get("target_hidden_size") not in (None, layer.get("hidden_size")):
        raise SpeculatorsFormatError(
            f"{source}: target_hidden_size {spec['target_hidden_size']} differs from the "
            f"draft's hidden_size {layer.get('hidden_size')}; DeepSpec drafts share the "
            "target's width"
        )
    types = layer.get("layer_types") or []
    if any(t != DRAFT_LAYER_TYPE for t in types):
        raise SpeculatorsFormatError(
            f"{source}: layer_types {types}; DeepSpec draft layers all use {DRAFT_LAYER_TYPE} (no sliding window)"
        )
    n_layers = int(layer.get("num_hidden_layers", 1))
    ours = {k: v for k, v in layer.items() if k != "architectures"}
    ours.update(
        num_hidden_layers=n_layers,
        layer_types=[DRAFT_LAYER_TYPE] * n_layers,
        tie_word_embeddings=False,
        architectures=[architecture_name(family.name, algorithm.name)],
    )
    return ours


def from_speculators_state(state: dict[str, torch.Tensor], *, source: str) -> dict[str, torch.Tensor]:
    """Drop the tensors only the speculators format has; refuse non-identity vocabulary tables."""
    state = {k: v for k, v in state.items() if k not in _DROPPED_ON_IMPORT}
    d2t, t2d = state.pop("d2t", None), state.pop("t2d", None)
    if (d2t is not None and d2t.any()) or (t2d is not None and not t2d.all()):
        raise SpeculatorsFormatError(
            f"{source}: d2t / t2d map a reduced draft vocabulary; DeepSpec drafts predict "
            "over the full vocabulary, so it cannot be loaded here"
        )
    return state


def read_speculators_folder(
    folder: str | os.PathLike, *, frozen_target: str | None = None
) -> tuple[dict, dict[str, torch.Tensor]]:
    """(our config dict, our tensors) of a speculators-format draft folder (ours or another tool's).

    Engines share the target's embedding / LM head, so some folders omit them: ``frozen_target`` (a
    target name or path) fills them from the target's safetensors; without it a missing one is an error.
    """
    from deepspec.models.loading import read_safetensors

    source = str(folder)
    config = from_speculators_config(read_config_json(folder), source=f"{source}/config.json")
    state = from_speculators_state(read_safetensors(folder), source=source)
    missing = [k for k in ("embed_tokens.weight", "lm_head.weight") if k not in state]
    if missing:
        if frozen_target is None:
            raise SpeculatorsFormatError(
                f"{source} has no {' / '.join(missing)} (engines share the target's); pass the target "
                "(export_draft.py --target, eval.py uses its --target_model_name_or_path) to fill them"
            )
        from deepspec.target_files import load_frozen_target_pieces

        embed, head = load_frozen_target_pieces(frozen_target)
        want = (int(config["vocab_size"]), int(config["hidden_size"]))
        if tuple(embed.shape) != want:  # another target: its pieces would load, and draft garbage
            raise SpeculatorsFormatError(
                f"target {frozen_target} has an embedding of {tuple(embed.shape)} (vocab x hidden), but the "
                f"draft {source} was made for {want}; pass the target this draft was trained for"
            )
        state.setdefault("embed_tokens.weight", embed)
        state.setdefault("lm_head.weight", head.clone() if head.data_ptr() == embed.data_ptr() else head)  # tied
    return config, state


# ----------------------------------------------------------------------------- folders


def load_any_draft(path, *, frozen_target: str | None = None, **kwargs):
    """A draft folder in either layout (ours or a speculators one) as a draft model (``load_draft``'s
    ``kwargs``); ``frozen_target`` fills an embedding / LM head a speculators folder omits."""
    from deepspec.models import load_draft
    from deepspec.models.loading import DraftLoadError

    def reader(folder):
        try:
            return read_any_draft(folder, frozen_target=frozen_target)
        except SpeculatorsFormatError as exc:
            raise DraftLoadError(str(exc)) from None

    return load_draft(path, reader=reader, **kwargs)


def read_any_config(folder: str | os.PathLike) -> dict:
    """Our config dict of a draft folder in either layout (a speculators config is converted)."""
    config = read_config_json(folder)
    return from_speculators_config(config, source=f"{folder}/config.json") if is_speculators_config(config) else config


def read_any_draft(
    folder: str | os.PathLike, *, frozen_target: str | None = None
) -> tuple[dict, dict[str, torch.Tensor]]:
    """(our config dict, tensors) of a draft folder in either layout."""
    from deepspec.models.loading import read_draft_folder

    if is_speculators_config(read_config_json(folder)):
        return read_speculators_folder(folder, frozen_target=frozen_target)
    return read_draft_folder(folder)


# What an export writes into its folder: --overwrite replaces a folder that holds nothing else.
EXPORT_FILES = ("config.json", "model.safetensors")


def check_output(out: Path, *, src: Path, overwrite: bool, inputs: tuple = ()) -> None:
    """Refuse an output folder that is, lies in or holds the draft (or another input: a local
    ``inputs`` path such as the target), is a file, or is non-empty without ``overwrite``;
    ``overwrite`` replaces only an earlier export, never a folder holding files of another kind."""
    local = [Path(p) for p in inputs if p and os.path.exists(os.path.expanduser(str(p)))]
    try:
        check_outputs_apart(
            inputs=[src, *local], output_dirs=[out], what="--output-dir", may_write_into=("model folder",)
        )
    except InputProtectionError as exc:
        raise SpeculatorsFormatError(str(exc)) from None
    if out.exists() and not out.is_dir():
        raise SpeculatorsFormatError(f"{out} is a file; give a folder to write the export to")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise SpeculatorsFormatError(
                f"{out} exists and is not empty; pass --overwrite (overwrite=True) to replace it"
            )
        foreign = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_FILES)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise SpeculatorsFormatError(
                f"{out} holds {shown}, which no export writes; --overwrite replaces only an earlier export "
                f"({' + '.join(EXPORT_FILES)}). Choose another --output-dir folder, or empty that one yourself"
            )


def write_folder(
    out: Path, *, config: dict, state: dict[str, torch.Tensor], overwrite: bool, src: Path, inputs: tuple = ()
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` into ``out`` atomically (a sibling temp folder, then rename)."""
    from safetensors.torch import save_file

    check_output(out, src=src, overwrite=overwrite, inputs=inputs)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file(
            {k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"}
        )
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written is left to be taken for an export
        raise write_failed(out, exc) from None
    if out.exists():
        shutil.rmtree(out)
    os.rename(tmp, out)
    return out


def cast(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    return state if dtype is None else {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def to_speculators_folder(
    *,
    draft_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    overwrite: bool = False,
    dtype: torch.dtype | None = None,
    verifier_name_or_path: str | None = None,
    frozen_target: str | None = None,
) -> Path:
    """Write a speculators-format copy of a draft folder (either layout) into ``output_dir``.

    ``verifier_name_or_path`` (default: the target recorded in a checkpoint's train_config.json) is what
    ``vllm serve <output_dir>`` loads as the target. ``dtype`` casts floating tensors (None keeps them).
    """
    src, out = Path(draft_dir), Path(output_dir)
    if not src.is_dir():
        raise SpeculatorsFormatError(f"no draft folder {src}")
    inputs = (frozen_target, verifier_name_or_path)
    check_output(out, src=src, overwrite=overwrite, inputs=inputs)
    config = read_any_config(src)
    _algorithm(config)  # a clear error for a folder that is no draft of ours
    _, state = read_any_draft(src, frozen_target=frozen_target)
    verifier = verifier_name_or_path or recorded_target(src)
    spec = to_speculators_config(
        config, verifier_name_or_path=verifier, verifier_architectures=_verifier_architectures(verifier)
    )
    if dtype is not None:
        spec["transformer_layer_config"]["torch_dtype"] = str(dtype).removeprefix("torch.")
    return write_folder(out, config=spec, state=cast(state, dtype), overwrite=overwrite, src=src, inputs=inputs)


def recorded_target(folder: Path) -> str | None:
    """The target a checkpoint was trained on (``train_config.json`` model.target_model_name_or_path), if any."""
    from deepspec.training.checkpoint import CONFIG_NAME

    file = Path(folder) / CONFIG_NAME
    try:
        return (json.loads(file.read_text()).get("model") or {}).get("target_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
