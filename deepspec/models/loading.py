"""Strict draft loading: every tensor of the checkpoint fits the model, or a clear error names it.

A draft folder holds ``config.json`` and ``model.safetensors`` (or shards listed in
``model.safetensors.index.json``). Loading never re-initialises a tensor: a missing, unexpected or
shape-mismatched tensor is a :class:`DraftLoadError` that names each one (eval, resume, export all
come through here). Known older layouts of ours are mapped where the mapping is exact
(:func:`upgrade_legacy_layout`, which says what it mapped) and rejected with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from deepspec.draft_specs import is_speculators_config
from deepspec.errors import DeepSpecError

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
_SHOW = 8  # names listed per kind of problem


class DraftLoadError(DeepSpecError, ValueError):
    """A checkpoint does not fit the draft it claims to be; the message names the tensors."""


class DraftReadError(DraftLoadError):
    """A weights file of a draft folder is missing, truncated or corrupted (not a layout mismatch)."""


def resolve_draft_folder(name_or_path) -> str:
    """A local draft folder as is; a hub id (``owner/name``) is downloaded; a missing local path says so."""
    from deepspec.hub import NoSuchFolderError, local_or_hub_id

    try:
        path, local = local_or_hub_id(name_or_path, what="draft")
    except NoSuchFolderError as exc:
        raise DraftLoadError(str(exc)) from None
    if local:
        if not os.path.isdir(path):
            raise DraftLoadError(
                f"{path} is a file, not a draft folder; pass the folder holding config.json and {SAFETENSORS_NAME}"
            )
        return path
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(path, allow_patterns=["config.json", "*.safetensors", SAFETENSORS_INDEX_NAME])
    except Exception as exc:  # offline, unknown repo, gated: one line naming the id
        raise DraftLoadError(
            f"no local draft folder {path}, and the hub has no draft {path!r} reachable from "
            f"here ({type(exc).__name__}: {exc})"
        ) from None


def read_config_dict(folder) -> dict:
    """``<folder>/config.json`` as a dict, or a :class:`DraftLoadError` naming the file."""
    file = Path(folder) / "config.json"
    if not file.is_file():
        raise DraftLoadError(f"{folder} has no config.json; pass a draft folder")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DraftLoadError(f"cannot read {file}: {exc}") from None
    if not isinstance(data, dict):
        raise DraftLoadError(f"{file} is not a JSON object; pass a draft folder")
    return data


def read_draft_folder(folder) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config dict, tensors) of a draft folder in our layout. A speculators-format folder is read by the
    loader above the models (``deepspec.export.load_any_draft``, which eval.py and export_draft.py use)."""
    config = read_config_dict(folder)
    if is_speculators_config(config):
        raise DraftLoadError(
            f"{folder} is a speculators-format folder; load it with deepspec.export.load_any_draft "
            "(eval.py and export_draft.py read both layouts)"
        )
    return config, read_safetensors(folder)


def read_safetensors(folder) -> dict[str, torch.Tensor]:
    """All tensors of a draft folder (one file or the shards of an index)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    single, index = folder / SAFETENSORS_NAME, folder / SAFETENSORS_INDEX_NAME
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            files = [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        except (ValueError, KeyError, AttributeError, TypeError) as exc:
            raise DraftReadError(
                f"cannot read {index}: {type(exc).__name__}: {exc}. It must be a JSON object with "
                "a weight_map; re-copy it"
            ) from None
    else:
        raise DraftReadError(
            f"{folder} has no {SAFETENSORS_NAME} (nor {SAFETENSORS_INDEX_NAME}); "
            "a draft folder holds config.json and its weights"
        )
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except Exception as exc:  # truncated / corrupted file: say which file, not a raw safetensors error
            raise DraftReadError(
                f"cannot read {file}: {exc}. The file is truncated or corrupted; "
                "re-copy it, or use an earlier complete checkpoint"
            ) from None
    return state


def upgrade_legacy_layout(config, state: dict[str, torch.Tensor], *, source: str) -> dict[str, torch.Tensor]:
    """Map the older layouts of ours that have an exact equivalent; reject those that do not.

    - Eagle3 before per-layer ``hidden_norm``: one top-level ``hidden_norm.weight`` that normalised
      the fused features of layer 0 only (later layers had H-wide q/k/v). With one layer it is
      exactly ``layers.0.hidden_norm.weight``; with more layers there is no equivalent.
    """
    if (
        config.draft_architecture == "Eagle3"
        and "hidden_norm.weight" in state
        and "layers.0.hidden_norm.weight" not in state
    ):
        if int(config.num_hidden_layers) != 1:
            raise DraftLoadError(
                f"{source} is an Eagle3 draft in an older layout of ours (one top-level hidden_norm, only layer 0 "
                f"fuses [embeds ; features]) with {config.num_hidden_layers} layers; DeepSpec's layout fuses in every "
                "layer, so layers 1.. have no equivalent. Retrain it with this version"
            )
        state = dict(state)
        state["layers.0.hidden_norm.weight"] = state.pop("hidden_norm.weight")
        warnings.warn(
            f"{source}: older Eagle3 layout mapped exactly: hidden_norm.weight -> "
            "layers.0.hidden_norm.weight (save it again to store the current layout)",
            stacklevel=3,
        )
    return state


def _legacy_hint(config, missing: list[str], unexpected: list[str], mismatched: list[str]) -> str:
    if any(k.endswith("markov_head.joint_proj.weight") for k in mismatched):
        return (
            " The markov_head.joint_proj shape is that of the pre-paper RNN head of older versions of ours "
            "(s_k = tanh(W[e; s]), no h_k); it has no equivalent in the paper's eq. 6 head: retrain it."
        )
    if any(k.endswith(("pre_feedforward_layernorm.weight", "layer_scalar")) for k in missing):
        return (
            " The missing feed-forward norms / layer_scalar mean a Gemma 4 draft saved by an older version of "
            "ours (no sandwich norms); its post_attention_layernorm played another role, so it cannot be "
            "mapped exactly: retrain it."
        )
    return ""


def load_state_strict(model, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Copy ``state`` into ``model`` after checking every name and shape (persistent buffers included)."""
    state = upgrade_legacy_layout(model.config, state, source=source)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or mismatched:

        def names(keys, fmt=str):
            shown = ", ".join(fmt(k) for k in keys[:_SHOW])
            return shown + (f" (and {len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")

        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {names(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {names(unexpected)}")
        if mismatched:
            parts.append(
                f"shape mismatch {len(mismatched)}: "
                + names(
                    mismatched,
                    lambda k: f"{k} {tuple(state[k].shape)} in the file vs {tuple(expected[k].shape)} expected",
                )
            )
        raise DraftLoadError(
            f"{source} does not fit {type(model).__name__} built from its config.json ({'; '.join(parts)})."
            + _legacy_hint(model.config, missing, unexpected, mismatched)
            + " Nothing was re-initialised; fix the checkpoint or its config.json."
        )
    with torch.no_grad():
        model.load_state_dict(state, strict=True)
