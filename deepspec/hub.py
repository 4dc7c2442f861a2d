"""Local folder or Hugging Face hub id: the one rule every stage uses for a model it is given.

A string names a local path when that path exists, or when only a path is spelled that way
(:func:`spelled_as_path`: it starts with '.', '/', '~' or '\\', or has more than one '/'). Otherwise
it is a hub id only if it is a valid ``owner/name`` (:func:`is_hub_id`) whose first part is not a local
folder; anything else is a missing local folder, said as such (:class:`NoSuchFolderError`) instead of
a hub error about repo id syntax.
"""

from __future__ import annotations

import os
import re

from deepspec.errors import DeepSpecError


class NoSuchFolderError(DeepSpecError, FileNotFoundError):
    """A string that names a local path which does not exist (and cannot be a hub id)."""


# owner/name as the hub accepts it: letters, digits, '-', '_', '.'; no '--' or '..'; not starting or
# ending with '-' or '.'; at most 96 characters.
_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
_HUB_ID_RE = re.compile(rf"^{_HUB_PART}/{_HUB_PART}$")


def is_hub_id(text: str) -> bool:
    """Whether ``text`` is a syntactically valid ``owner/name`` hub id."""
    return bool(_HUB_ID_RE.match(text)) and "--" not in text and ".." not in text and len(text) <= 96


def spelled_as_path(text: str) -> bool:
    """A spelling only a local path has (a hub id is ``owner/name``; a served model name has no such prefix)."""
    return text.startswith((".", "/", "~", "\\")) or text.count("/") > 1


def local_or_hub_id(name_or_path, *, what: str = "folder") -> tuple[str, bool]:
    """``(path, True)`` for an existing local path, ``(hub_id, False)`` for a hub id, else NoSuchFolderError.

    A string is taken as a local path -- and must exist -- when it is :func:`spelled_as_path`, has no
    '/', or its first component is an existing folder (``runs/nope`` when ``runs/`` exists). Only a
    valid ``owner/name`` that is none of these goes to the hub.
    """
    text = str(name_or_path)
    path = os.path.expanduser(text)
    if text and os.path.exists(path):
        return path, True
    if text and os.path.islink(path):  # e.g. a step_latest whose step_N was deleted or not copied along
        hint = (
            f"; pass the checkpoint folder {os.path.dirname(path) or '.'} (its newest complete step is used) "
            "or an existing step_N folder"
            if os.path.basename(path.rstrip("/")) == "step_latest"
            else ""
        )
        raise NoSuchFolderError(
            f"{text} is a dangling symlink: it points at {os.readlink(path)}, which does not exist{hint}"
        )
    first = text.split("/", 1)[0]
    local = not text or spelled_as_path(text) or os.path.isdir(os.path.expanduser(first)) or not is_hub_id(text)
    if local:
        raise NoSuchFolderError(
            f"no such folder: {text or repr(text)} (the {what} must be an existing local folder, or a hub id "
            "of the form owner/name); check the path and the current directory"
        )
    return text, False
