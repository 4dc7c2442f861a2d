"""Crash-safe file writes shared by every on-disk format (cache, checkpoints, JSONL).

A file is written under a temporary name, fsynced, renamed over the final
name, and the folder is fsynced so the rename itself survives a power cut:
readers see the old file or the new one, never a torn one.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: str | os.PathLike) -> None:
    """Persist a folder's entries (renames, new files); a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` atomically (temp file + fsync + rename + folder fsync)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:  # a full disk or a folder in the way: no half-written temp file is left behind
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def existing_ancestor(path: str | os.PathLike) -> Path:
    """``path`` itself when it exists, else the nearest existing folder above it (where it would be made)."""
    probe = Path(os.path.expanduser(str(path)))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def free_disk(path: str | os.PathLike) -> tuple[Path, int]:
    """``(folder, bytes)``: the nearest existing folder at or above ``path`` and the free space on its disk
    (what a folder about to be created there will have)."""
    import shutil

    probe = existing_ancestor(path)
    return probe, shutil.disk_usage(probe).free


def write_failed(path: str | os.PathLike, exc: BaseException) -> BaseException:
    """The error to raise when writing ``path`` failed: an OSError (full disk, file-size limit) or a
    safetensors write error (which is no OSError) becomes one OSError naming the path and the likely
    causes; anything else (a bug) is returned unchanged."""
    if isinstance(exc, OSError) or type(exc).__name__ == "SafetensorError":
        return OSError(
            f"writing {path} failed ({exc}); check the free disk space and the file-size limit (ulimit -f), "
            "then run the same command again"
        )
    return exc
