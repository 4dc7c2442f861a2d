"""A target's files, without loading the model: where they are (a local folder, or a hub id's snapshot in
the Hugging Face cache), which tensor lives in which safetensors file, the frozen embedding and LM head
read alone, parameter counts from the headers, and the fingerprint that identifies a target by what it
computes. Which keys a family's pieces have is the family's fact (:mod:`deepspec.targets`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path

import torch

from deepspec.hub import NoSuchFolderError, local_or_hub_id
from deepspec.targets import TargetError, TargetFamily, family_of, load_target_config

_SINGLE_FILE = "model.safetensors"
_INDEX_FILE = "model.safetensors.index.json"


def target_file(name_or_path: str, filename: str) -> str | None:
    """Local path of one target file (local folder, or downloaded alone from the hub); None if absent."""
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, filename)
        return path if os.path.isfile(path) else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    try:
        return hf_hub_download(name_or_path, filename)
    except RemoteEntryNotFoundError:
        return None


def tensor_files(name_or_path: str) -> dict[str, str]:
    """Tensor name -> safetensors file name (sharded via the index, or the single file)."""
    index = target_file(name_or_path, _INDEX_FILE)
    if index is not None:
        with open(index) as fh:
            return dict(json.load(fh)["weight_map"])
    single = target_file(name_or_path, _SINGLE_FILE)
    if single is None:
        raise TargetError(
            f"target {name_or_path!r} has neither {_SINGLE_FILE} nor {_INDEX_FILE}; "
            "DeepSpec reads the target's weights from safetensors files"
        )
    from safetensors import safe_open

    with safe_open(single, framework="pt") as fh:  # reads the header only
        return {key: _SINGLE_FILE for key in fh.keys()}


def load_frozen_target_pieces(
    name_or_path: str, *, family: TargetFamily | None = None, config=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embed_weight, lm_head_weight)`` of a target, read alone from its safetensors files.

    The draft only needs these two frozen tensors; this avoids loading the whole target
    (tens of GB for a 14B model) on every rank. Tied targets (``tie_word_embeddings``) get the
    embedding as LM head, as transformers does. Tensors keep the checkpoint's dtype.
    """
    config = config if config is not None else load_target_config(name_or_path)
    family = family or family_of(config)
    weight_map = tensor_files(name_or_path)

    def find(keys: tuple[str, ...], what: str) -> str:
        for key in keys:
            if key in weight_map:
                return key
        found = ", ".join(sorted(weight_map))
        raise TargetError(
            f"target {name_or_path!r}: no {what} weight in its safetensors files; looked for "
            f"{', '.join(keys)} ({family.name} family), found: {found}"
        )

    wanted = {"embed": find(family.embed_keys, "embedding")}
    tied = bool(getattr(config, "tie_word_embeddings", False))
    if not tied:
        wanted["lm_head"] = find(family.lm_head_keys, "LM head")

    from safetensors import safe_open

    tensors: dict[str, torch.Tensor] = {}
    for filename in sorted({weight_map[key] for key in wanted.values()}):
        path = target_file(name_or_path, filename)
        if path is None:
            raise TargetError(f"target {name_or_path!r}: {filename} (named in {_INDEX_FILE}) is missing")
        with safe_open(path, framework="pt") as fh:
            for piece, key in wanted.items():
                if weight_map[key] == filename:
                    tensors[piece] = fh.get_tensor(key)
    embed = tensors["embed"]
    return embed, (embed if tied else tensors["lm_head"])


def count_target_parameters(name_or_path: str) -> dict[str, int]:
    """Parameter counts from the safetensors headers (no weights read): ``total``, ``largest_layer`` (one
    decoder layer) and ``outside_layers`` (embedding, final norm, untied LM head)."""
    from safetensors import safe_open

    weight_map = tensor_files(name_or_path)
    per_layer: dict[str, int] = {}
    total = 0
    for filename in sorted(set(weight_map.values())):
        path = target_file(name_or_path, filename)
        if path is None:
            raise TargetError(f"target {name_or_path!r}: {filename} (named in {_INDEX_FILE}) is missing")
        with safe_open(path, framework="pt") as fh:
            for key in fh.keys():
                n = math.prod(fh.get_slice(key).get_shape())
                total += n
                layer = _LAYER_KEY.search(key)
                if layer:  # keyed by the whole prefix: a vision tower's layer 3 is not the decoder's
                    unit = key[: layer.end()]
                    per_layer[unit] = per_layer.get(unit, 0) + n
    return {
        "total": total,
        "largest_layer": max(per_layer.values(), default=0),
        "outside_layers": total - sum(per_layer.values()),
    }


_LAYER_KEY = re.compile(r"(?:^|\.)layers\.\d+\.")


# -- identity ---------------------------------------------------------------------------------
# A target is identified by what it computes, not by where it lives: two folders named Qwen3-4B
# (base and fine-tuned) must differ, a copy of the same files must not.
FINGERPRINT_VERSION = "dstf1"
# Keys that change when the same model is re-saved or loaded differently, not what it computes.
_VOLATILE_CONFIG_KEYS = frozenset(
    {
        "_name_or_path",
        "transformers_version",
        "_commit_hash",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "use_cache",
    }
)
_FP_SAMPLE_BYTES = 64 << 10
_FP_SAMPLES_PER_FILE = 5  # start, quarter points, end: a fine-tune changes bytes everywhere, a header alone not


def _canonical_config(obj):
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if key in _VOLATILE_CONFIG_KEYS:
                continue
            out["dtype" if key == "torch_dtype" else key] = _canonical_config(value)  # renamed across versions
        return out
    if isinstance(obj, list):
        return [_canonical_config(v) for v in obj]
    return obj


def resolve_target_folder(name_or_path: str | os.PathLike, *, download: bool = False) -> Path:
    """The local folder holding a target: the path itself, or a hub id's snapshot in the Hugging Face cache.

    ``download=False`` never touches the network (a hub id must already be cached); the cache build passes
    ``download=True`` because it loads the whole model anyway.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise TargetError(f"target {text!r} is a file; pass the model folder that holds config.json")
    try:
        local_or_hub_id(text, what="target")
    except NoSuchFolderError:
        raise TargetError(f"target folder {text!r} does not exist; check model.target_model_name_or_path") from None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, local_files_only=not download, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as exc:  # noqa: BLE001 - hub errors have many types; all mean "not available here"
        if download:
            raise TargetError(
                f"cannot download target {text!r} from the Hugging Face hub ({type(exc).__name__}: "
                f"{exc}); check the id and the network, or pass a local model folder"
            ) from None
        raise TargetError(
            f"target {text!r} is neither a local folder nor in the Hugging Face cache; pass the model "
            f"folder, or download it first: huggingface-cli download {text}"
        ) from None


def _weight_files(folder: Path) -> list[Path]:
    index = folder / _INDEX_FILE
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TargetError(f"{index} is not a valid safetensors index ({exc}); re-download the target") from None
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise TargetError(
                f"target {folder} is incomplete: {', '.join(missing)} (named in {_INDEX_FILE}) "
                "missing; finish the download or copy"
            )
        return [folder / n for n in names]
    if (folder / _SINGLE_FILE).is_file():
        return [folder / _SINGLE_FILE]
    found = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("pytorch_model*.bin"))
    if not found:
        raise TargetError(
            f"target {folder} has no weight files (*.safetensors or pytorch_model*.bin); "
            "pass the folder of a saved model"
        )
    return found


def _sampled_bytes(path: Path, size: int, digest) -> None:
    with open(path, "rb") as fh:
        if size <= _FP_SAMPLES_PER_FILE * _FP_SAMPLE_BYTES:
            digest.update(fh.read())
            return
        span = size - _FP_SAMPLE_BYTES
        for k in range(_FP_SAMPLES_PER_FILE):
            fh.seek(span * k // (_FP_SAMPLES_PER_FILE - 1))
            digest.update(fh.read(_FP_SAMPLE_BYTES))


def target_fingerprint(name_or_path: str | os.PathLike, *, download: bool = False) -> str:
    """A stable identity of a target: its config plus its weight files' names, sizes and sampled bytes.

    Not the folder name: a copy of the same files has the same fingerprint, a fine-tune saved under the
    same name does not. Cheap at any size: at most 5 x 64 KiB are read per weight file (~3 MB for a
    16-file 30 GB model). Raises :class:`TargetError` when the target is not available locally.
    """
    folder = resolve_target_folder(name_or_path, download=download)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise TargetError(f"target {folder} has no config.json; pass the folder of a saved model")
    try:
        config = json.loads(config_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise TargetError(f"{config_path} is not valid JSON ({exc}); re-download or re-save the target") from None
    digest = hashlib.sha256(FINGERPRINT_VERSION.encode() + b"\0")
    digest.update(json.dumps(_canonical_config(config), sort_keys=True, separators=(",", ":")).encode())
    for path in _weight_files(folder):
        size = path.stat().st_size
        digest.update(f"\0{path.name}\0{size}\0".encode())
        _sampled_bytes(path, size, digest)
    return f"{FINGERPRINT_VERSION}:{digest.hexdigest()}"
