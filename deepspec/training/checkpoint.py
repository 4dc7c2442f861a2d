"""Checkpoints: ``<checkpoint_dir>/step_N/`` = a Hugging Face draft folder + ``training_state.pt``.

``step_N/`` holds ``config.json`` + ``model.safetensors`` (``save_pretrained``: loadable with
``deepspec.models.load_draft`` and in the public DeepSpec layout), ``training_state.pt``
(optimizer, scheduler, per-rank RNG states, data position, resolved config) and
``train_config.json`` (the same config, human-readable). A checkpoint is written into a hidden
temp folder and renamed into place, then ``step_latest`` -- a relative symlink to the newest complete
``step_N`` -- is replaced atomically; a crash at any point leaves the previous checkpoint as the latest.
``<checkpoint_dir>/step_latest`` is therefore itself a draft folder: pass it as-is to ``eval.py``,
``from_pretrained`` / ``load_draft`` or an engine (``vllm serve``), as with the public DeepSpec release.
Earlier versions wrote ``step_latest`` as a one-line text file naming the folder; resuming still reads it.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from deepspec.errors import DeepSpecError
from deepspec.fsio import fsync_dir

LATEST_NAME = "step_latest"
STATE_NAME = "training_state.pt"
CONFIG_NAME = "train_config.json"
_STEP_RE = re.compile(r"^step_(\d+)$")


class ResumeError(DeepSpecError, ValueError):
    """The checkpoint cannot be resumed with this config; the message says what to change."""


def step_dir(root: str | os.PathLike, step: int) -> Path:
    return Path(root) / f"step_{step}"




def capture_rng() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


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
    tmp = root / f".{LATEST_NAME}.tmp"
    if tmp.is_symlink() or tmp.exists():  # left over by a crash between symlink and rename
        tmp.unlink()
    os.symlink(folder_name, tmp)
    os.replace(tmp, root / LATEST_NAME)
    fsync_dir(root)


def save_checkpoint(*, root: str | os.PathLike, step: int, model, model_state: dict, training_state: dict,
                    config: dict, keep_last: int | None = None) -> Path:
    """Write ``step_N`` atomically and point the ``step_latest`` symlink at it (call on rank 0 only)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = step_dir(root, step)
    tmp = root / f".step_{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=model_state)
    torch.save({**training_state, "config": config}, tmp / STATE_NAME)
    (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    for f in tmp.iterdir():  # data on disk before the rename makes the folder visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
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


def load_training_state(folder: str | os.PathLike) -> dict:
    # weights_only=False: the state holds python/numpy RNG tuples; the file is our own output.
    return torch.load(Path(folder) / STATE_NAME, map_location="cpu", weights_only=False)


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
            "(e.g. --opts exp_name=<new name>)")
