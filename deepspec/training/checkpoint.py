"""Checkpoints: ``<checkpoint_dir>/step_N/`` = a Hugging Face draft folder + ``training_state.pt``.

``step_N/`` holds ``config.json`` + ``model.safetensors`` (``save_pretrained``: loadable with
``deepspec.models.load_draft`` and in the public DeepSpec layout), ``training_state.pt``
(optimizer, scheduler, per-rank RNG states, data position, resolved config) and
``train_config.json`` (the same config, human-readable). A checkpoint is written into a hidden
temp folder and renamed into place, then ``step_latest`` -- a relative symlink to the newest complete
``step_N`` -- is replaced atomically; a crash at any point leaves the previous checkpoint as the latest.
``<checkpoint_dir>/step_latest`` is therefore itself a draft folder: pass it as-is to ``eval.py``,
``from_pretrained`` / ``load_draft`` or an engine (``vllm serve`` for vanilla-head DSpark; DFlash goes through
``deepspec.export.to_vllm_folder``), as with the public DeepSpec release.
Earlier versions wrote ``step_latest`` as a one-line text file naming the folder; resuming still reads it.

``training_state.pt`` holds only tensors and plain Python values (numpy's RNG state is split into a
tensor and numbers), and resuming loads it with ``torch.load(weights_only=True)``: a checkpoint file
can never run code. A checkpoint whose files cannot be read is skipped, with a line on stderr naming
the file, for the previous complete step (:func:`resume_point`).
"""

from __future__ import annotations

import json
import os
import random
import re
import pickle
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from deepspec.errors import DeepSpecError
from deepspec.fsio import fsync_dir, write_failed

LATEST_NAME = "step_latest"
STATE_NAME = "training_state.pt"
CONFIG_NAME = "train_config.json"
_STEP_RE = re.compile(r"^step_(\d+)$")


class ResumeError(DeepSpecError, ValueError):
    """The checkpoint cannot be resumed with this config; the message says what to change."""


def step_dir(root: str | os.PathLike, step: int) -> Path:
    return Path(root) / f"step_{step}"


def capture_rng() -> dict:
    """This process's RNG states as tensors and plain Python values only (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # numpy's state holds an ndarray, which weights_only refuses: keep its parts as a tensor + numbers
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuples(state["python"]))
    npst = state["numpy"]
    if isinstance(npst, dict):
        np.random.set_state(
            (
                npst["kind"],
                npst["keys"].numpy().astype(np.uint32),
                npst["pos"],
                npst["has_gauss"],
                npst["cached_gaussian"],
            )
        )
    else:  # checkpoints of earlier versions pickled numpy's own tuple
        np.random.set_state(npst)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _as_tuples(value):
    """random.setstate needs tuples; a state that went through another container format may hold lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def complete_steps(root: str | os.PathLike) -> list[int]:
    """Steps with a complete folder (renamed into place, so it has every file), ascending."""
    root = Path(root)
    if not root.is_dir():
        return []
    steps = [int(m.group(1)) for p in root.iterdir() if (m := _STEP_RE.match(p.name)) and (p / STATE_NAME).is_file()]
    return sorted(steps)


def _latest_name(root: Path) -> str | None:
    """What ``step_latest`` names: the symlink's target, or the folder an old-style text pointer names."""
    pointer = root / LATEST_NAME
    if pointer.is_symlink():
        return os.readlink(pointer)
    if pointer.is_file():  # written by earlier versions: a one-line text file naming the folder
        return pointer.read_text().strip()
    return None


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The ``step_N`` folder ``step_latest`` points at; if it is missing, dangling or names an
    incomplete folder, the newest complete folder (None when there is none)."""
    root = Path(root)
    name = _latest_name(root)
    if name:
        folder = root / name
        if (folder / STATE_NAME).is_file():
            return folder
    steps = complete_steps(root)
    return step_dir(root, steps[-1]) if steps else None


def point_latest(root: str | os.PathLike, folder_name: str) -> None:
    """Make ``<root>/step_latest`` a relative symlink to ``folder_name``, replacing the old one atomically.

    The new link is made under a temp name in the same folder and renamed over the old one (a
    rename replaces a symlink or an old text pointer in one step), so there is no moment without
    a ``step_latest``. Relative, so the checkpoint folder can be moved or mounted elsewhere.
    """
    root = Path(root)
    latest = root / LATEST_NAME
    if latest.is_dir() and not latest.is_symlink():
        # A real folder (``scp -r`` copies the link as one): moved aside, never deleted, and said once.
        aside = root / f"{LATEST_NAME}.moved-{time.strftime('%Y%m%d-%H%M%S')}"
        os.rename(latest, aside)
        print(
            f"warning: {latest} was a folder, not the symlink training keeps; moved it to {aside} "
            f"and pointed {LATEST_NAME} at {folder_name}",
            file=sys.stderr,
        )
    tmp = root / f".{LATEST_NAME}.tmp"
    if tmp.is_symlink() or tmp.exists():  # left over by a crash between symlink and rename
        tmp.unlink()
    os.symlink(folder_name, tmp)
    os.replace(tmp, latest)
    fsync_dir(root)


def save_checkpoint(
    *,
    root: str | os.PathLike,
    step: int,
    model,
    model_state: dict,
    training_state: dict,
    config: dict,
    keep_last: int | None = None,
) -> Path:
    """Write ``step_N`` atomically and point the ``step_latest`` symlink at it (call on rank 0 only)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = step_dir(root, step)
    tmp = root / f".step_{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, state_dict=model_state)
        # The config as JSON values (what check_resume_config compares), so the file holds no pickled objects.
        torch.save({**training_state, "config": json.loads(json.dumps(config, default=str))}, tmp / STATE_NAME)
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
        for f in tmp.iterdir():  # data on disk before the rename makes the folder visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # never taken as a step: a re-run resumes from the last complete one
        raise write_failed(tmp, exc) from None
    if final.exists():  # re-saving a step (e.g. after a crash between rename and pointer update)
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_dir(root)
    point_latest(root, final.name)
    if keep_last:
        for old in complete_steps(root)[:-keep_last]:
            if old != step:  # never the folder step_latest points at (it may not be the highest step)
                shutil.rmtree(step_dir(root, old), ignore_errors=True)
    return final


def optimizer_state_by_index(state: dict, names: list[str]) -> dict:
    """The optimizer state keyed by parameter position, as ``Optimizer.state_dict`` keys it: the one layout a
    checkpoint holds, whatever wrapped the draft. ``names`` are the trainable parameters' names in optimizer
    order; a state keyed by name (torch.distributed.checkpoint's full state dict, FSDP) is re-keyed, one keyed
    by position is returned as it is."""
    index = {name: i for i, name in enumerate(names)}
    return {
        "state": {index.get(k, k): v for k, v in state["state"].items()},
        "param_groups": [dict(g, params=[index.get(p, p) for p in g["params"]]) for g in state["param_groups"]],
    }


def optimizer_state_by_name(state: dict, names: list[str]) -> dict:
    """The inverse of :func:`optimizer_state_by_index`: keyed by parameter name, as FSDP's
    ``set_optimizer_state_dict`` reads a full state dict."""

    def name(key):
        return names[key] if isinstance(key, int) else key

    return {
        "state": {name(k): v for k, v in state["state"].items()},
        "param_groups": [dict(g, params=[name(p) for p in g["params"]]) for g in state["param_groups"]],
    }


class CheckpointReadError(ResumeError):
    """A file of a checkpoint folder is missing, truncated or corrupted."""


def load_training_state(folder: str | os.PathLike) -> dict:
    """``training_state.pt`` of a step folder, loaded with ``weights_only=True`` (no arbitrary pickles)."""
    path = Path(folder) / STATE_NAME
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            state = _load_legacy_state(path)
    except ResumeError:
        raise
    except pickle.UnpicklingError as exc:  # refused even with numpy arrays allowed: never unpickle it
        raise ResumeError(
            f"{path} cannot be loaded safely ({(str(exc).splitlines() or [''])[0]}); resume from a "
            "checkpoint this tool wrote, or start a fresh run with a new exp_name"
        ) from None
    except Exception as exc:  # truncated zip, bad bytes, missing file
        first = (str(exc).splitlines() or [""])[0]
        raise CheckpointReadError(
            f"cannot read {path}: {type(exc).__name__}: {first}. The file is truncated or corrupted"
        ) from None
    if not isinstance(state, dict) or not {"step", "config"} <= set(state):
        raise CheckpointReadError(
            f"{path} is not a DeepSpec training state (no step / config); the file is corrupted or from another tool"
        )
    return state


def _legacy_numpy_globals() -> list:
    """What earlier versions' numpy RNG tuple needs: plain numeric arrays, which hold no code."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    reconstruct = core.multiarray._reconstruct
    return [
        reconstruct,
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),
    ]


def _load_legacy_state(path: Path) -> dict:
    """Still ``weights_only=True``, with numpy arrays allowed; anything else is refused with a clear error."""
    allowed = _legacy_numpy_globals()
    names = {a[1] if isinstance(a, tuple) else f"{a.__module__}.{a.__qualname__}" for a in allowed}
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    if not unsafe <= names:
        raise ResumeError(
            f"{path} holds Python objects beyond tensors and plain values ({', '.join(sorted(unsafe - names))}), "
            "so it is not loaded: unpickling them could run code. DeepSpec's checkpoints never hold them; "
            "resume from a checkpoint this tool wrote, or start a fresh run with a new exp_name"
        )
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(folder: str | os.PathLike) -> tuple[dict, dict]:
    """``(training_state, model tensors)`` of one step folder; CheckpointReadError names the bad file."""
    from deepspec.models.loading import DraftReadError, read_safetensors

    state = load_training_state(folder)
    try:
        tensors = read_safetensors(folder)
    except DraftReadError as exc:
        raise CheckpointReadError(str(exc)) from None
    return state, tensors


def _resume_candidates(root: Path) -> list[Path]:
    """The folder ``step_latest`` names, then the older complete steps, newest first."""
    steps = complete_steps(root)
    latest = latest_checkpoint(root)
    if latest is None:
        return []
    m = _STEP_RE.match(latest.name)
    below = [s for s in reversed(steps) if m is None or s < int(m.group(1))]
    return [latest] + [step_dir(root, s) for s in below]


def resume_point(root: str | os.PathLike, *, warn=None) -> tuple[Path, dict, dict] | None:
    """``(folder, training_state, model tensors)`` of the newest readable checkpoint; None when there is none.

    A checkpoint whose files cannot be read (a truncated copy, a full disk during a save by another tool)
    is skipped with one line on stderr naming the file, and the previous complete step is used. When
    checkpoints exist but none can be read, a :class:`CheckpointReadError` lists them all.
    """
    warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
    problems = []
    for folder in _resume_candidates(Path(root)):
        try:
            state, tensors = read_checkpoint(folder)
        except CheckpointReadError as exc:
            problems.append(f"{folder.name}: {exc}")
            warn(f"warning: not resuming from {folder}: {exc}; trying the previous complete checkpoint")
            continue
        if problems:
            warn(f"resuming from {folder} instead (the later checkpoint could not be read)")
        return folder, state, tensors
    if problems:
        raise CheckpointReadError(
            f"no readable checkpoint in {root}: " + "; ".join(problems) + ". Move the broken step_N folders away "
            "to start from scratch there, or start a fresh run with a new exp_name"
        )
    return None


def _diff(a, b, prefix: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                return f"{prefix}.{key}"
            found = _diff(a[key], b[key], f"{prefix}.{key}")
            if found:
                return found
        return None
    return None if a == b else prefix


def check_resume_config(*, saved: dict, current: dict, folder: Path) -> None:
    """The model section must match exactly: the weights and optimizer state only fit that model."""
    # Round-trip through JSON so tuples/lists and ints/floats compare as they were saved.
    cur = json.loads(json.dumps(current.get("model", {}), default=str))
    old = json.loads(json.dumps(saved.get("model", {}), default=str))
    key = _diff(old, cur, "model")
    if key:

        def value(cfg, dotted):
            node = cfg
            for part in dotted.split(".")[1:]:
                node = node.get(part, "<missing>") if isinstance(node, dict) else "<missing>"
            return node

        raise ResumeError(
            f"cannot resume from {folder}: {key} was {value(old, key)!r} there but is {value(cur, key)!r} now. "
            f"Restore {key} to its saved value, or start a fresh run with a different logging.checkpoint_dir "
            "(e.g. --opts exp_name=<new name>)"
        )


def check_resume_data(*, saved: dict | None, current: dict | None, folder: Path) -> None:
    """The run resumes on the data it was trained on: the same files (size and sha256, wherever they lie now,
    read live or through a cache built from them) and the same tokenization settings. The data position counts
    samples of that list, so other data would silently train on another order. Checkpoints from before the data
    was recorded (``saved`` None) are not checked."""
    if not saved or not current:
        return
    from deepspec.cache.format import CacheCompatibilityError, check_identity

    try:
        check_identity(
            saved,
            current,
            where=f"cannot resume: the checkpoint {folder}",
            made="trained on",
            fix="resume on that data (the same --train-data-path files, or a target cache built from them), or train "
            "on this data as a fresh run with another logging.checkpoint_dir (e.g. --opts exp_name=<new name>)",
        )
    except CacheCompatibilityError as exc:
        raise ResumeError(str(exc)) from None
