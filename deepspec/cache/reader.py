"""Reading the target cache: validated, memory-mapped, random access, every sample checked once.

The format is in :mod:`deepspec.cache.format`, which is all this module shares with the writer
(:mod:`deepspec.cache.writer`, never imported here: training reads caches and writes none). A sample's
crc32 (in its index record) is verified the first time it is read; the marks live in shared memory, so
DataLoader workers (and the next epoch's workers) do not verify a sample again. The cost is one crc32
over bytes the reader touches anyway.
"""

from __future__ import annotations

import json
import os
import warnings
import zlib
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from deepspec.cache.format import (
    ALIGN,
    FORMAT_NAME,
    MANIFEST_NAME,
    RECORD_DTYPE,
    REBUILD_ADVICE,
    SHARD_RE,
    TargetCacheError,
    array_nbytes,
    check_identity,
    sample_nbytes,
    validate_manifest,
)

__all__ = ["TargetCache"]


class TargetCache:
    """Read-only, mmap-backed view of a finalized cache; ``cache[i]`` -> dict of torch tensors.

    Tensors share memory with a private (copy-on-write) mapping: no copy is
    made, and writing into them never touches the files. Each sample is checked against its crc32 the
    first time it is read (a :class:`TargetCacheError` names the shard and sample); ``verify=True``
    checks every sample at open instead.
    """

    def __init__(self, path: str | os.PathLike, *, verify: bool = False):
        self.path = Path(path)
        mpath = self.path / MANIFEST_NAME
        if not mpath.is_file():
            if self.path.is_dir() and any(
                SHARD_RE.match(p.name) or p.name.endswith(".tmp") for p in self.path.iterdir()
            ):
                raise TargetCacheError(
                    f"incomplete cache at {self.path}: no {MANIFEST_NAME} (the build was "
                    "interrupted or never finalized); re-run the build to resume"
                )
            raise TargetCacheError(f"no target cache at {self.path} ({MANIFEST_NAME} not found); build it first")
        try:
            self.manifest = m = json.loads(mpath.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise TargetCacheError(f"{mpath} is not valid JSON ({e}); re-run finalize or rebuild the cache") from None
        # Version 1 predates fingerprints and per-sample checksums: still readable (rebuilding tens of TB
        # is the user's call), but said once so nobody believes it was checked. Said before the layout
        # checks, so a version-1 cache that fails them still says what it is.
        self.legacy = m.get("format") == FORMAT_NAME and m.get("format_version") == 1
        if self.legacy:
            warnings.warn(
                f"target cache {self.path} was built by an older DeepSpec (format version 1): it records no "
                "target fingerprint and no per-sample checksums, so only the target's folder name and the "
                "layers are checked and corrupted bytes go unnoticed. To have both checked, rebuild it with "
                "prepare_target_cache.py --overwrite",
                UserWarning,
                stacklevel=2,
            )
        validate_manifest(m, cache_dir=self.path)
        self.hidden_size, self.hidden_width = int(m["hidden_size"]), int(m["hidden_width"])
        self.layer_ids = list(m["layer_ids"])
        self._shard_paths = [self.path / s["file"] for s in m["shards"]]
        sizes = []
        for s, p in zip(m["shards"], self._shard_paths):
            if not p.is_file():
                raise TargetCacheError(f"shard {p} is missing; restore it or rebuild the cache")
            if p.stat().st_size != s["bytes"]:
                raise TargetCacheError(
                    f"shard {p} has {p.stat().st_size} bytes, manifest says {s['bytes']} "
                    "(truncated or modified); rebuild the cache"
                )
            if verify and self.legacy and s.get("crc32") is not None and _file_crc32(p) != s["crc32"]:
                raise TargetCacheError(f"shard {p} fails its checksum (corrupt data); rebuild the cache")
            sizes.append(s["bytes"])
        ipath = self.path / m["index"]["file"]
        n = int(m["num_samples"])
        if not ipath.is_file() or ipath.stat().st_size != n * RECORD_DTYPE.itemsize:
            size = ipath.stat().st_size if ipath.is_file() else "no"
            raise TargetCacheError(
                f"index {ipath} has {size} bytes, expected {n} records x "
                f"{RECORD_DTYPE.itemsize}; re-run finalize_target_cache or rebuild"
            )
        raw = ipath.read_bytes()
        if zlib.crc32(raw) != m["index"]["crc32"]:
            raise TargetCacheError(f"index {ipath} fails its checksum; re-run finalize_target_cache")
        self.records = np.frombuffer(raw, dtype=RECORD_DTYPE)
        self._check_records(np.asarray(sizes, dtype=np.int64))
        self.lengths = self.records["length"].astype(np.int64)
        self.source_indices = self.records["source_index"].astype(np.int64)
        self._maps: list[np.memmap | None] = [None] * len(self._shard_paths)
        self.checks_samples = not self.legacy and m.get("sample_checksum") == "crc32"
        # Shared memory: marks set in a DataLoader worker are seen by the others and by later epochs' workers.
        self._verified = torch.zeros(len(self.records), dtype=torch.bool)
        if self.checks_samples and len(self.records):
            self._verified.share_memory_()
        if verify and self.checks_samples:
            for i in range(len(self.records)):
                self._check_sample(i)

    def _check_records(self, sizes: np.ndarray) -> None:
        r = self.records
        if len(r) == 0:
            return
        bad = r["shard"] >= len(sizes)
        if bad.any():
            raise TargetCacheError(
                f"index of {self.path} refers to shard {int(r['shard'][bad][0])} of "
                f"{len(sizes)}; re-run finalize_target_cache"
            )
        t = r["length"].astype(np.int64)
        end = r["offset"].astype(np.int64) + sample_nbytes(
            t, hidden_width=self.hidden_width, hidden_size=self.hidden_size
        )  # vectorised
        bad = (end > sizes[r["shard"].astype(np.int64)]) | (r["offset"] % ALIGN != 0) | (t == 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise TargetCacheError(
                f"index record {i} of {self.path} points outside its shard; the index or shard "
                "is corrupt - rebuild the cache"
            )
        if (np.diff(r["source_index"]) <= 0).any():
            raise TargetCacheError(f"index of {self.path} is not sorted by source ordinal; re-run finalize")

    def __len__(self) -> int:
        return len(self.records)

    def _map(self, shard: int) -> np.memmap:
        mm = self._maps[shard]
        if mm is None:  # lazily, so pickled copies in DataLoader workers open their own maps
            mm = self._maps[shard] = np.memmap(self._shard_paths[shard], dtype=np.uint8, mode="c")
        return mm

    def _check_sample(self, i: int) -> None:
        """crc32 of sample ``i``'s bytes against its index record (once per sample)."""
        if not self.checks_samples or self._verified[i]:
            return
        rec = self.records[i]
        off, shard = int(rec["offset"]), int(rec["shard"])
        end = off + sample_nbytes(int(rec["length"]), hidden_width=self.hidden_width, hidden_size=self.hidden_size)
        if zlib.crc32(self._map(shard)[off:end]) != int(rec["crc32"]):
            p = self._shard_paths[shard]
            part = self.manifest["shards"][shard].get("index_part", p.with_suffix(".idx").name)
            raise TargetCacheError(
                f"sample {i} (source ordinal {int(rec['source_index'])}, bytes {off}..{end}) of shard {p} fails its "
                f"checksum: the file was changed or corrupted after the build, so training on it would be wrong. "
                f"Repair the cache: delete {MANIFEST_NAME}, {p.name} and {part} in {self.path}, then re-run the same "
                f"prepare_target_cache.py command (it redoes those samples); or {REBUILD_ADVICE}"
            )
        self._verified[i] = True

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self.records)
        if not -n <= i < n:
            raise IndexError(f"sample {i} out of range for a cache of {n} samples")
        i = int(i) % n
        self._check_sample(i)
        rec = self.records[i]
        t, off = int(rec["length"]), int(rec["offset"])
        mm = self._map(int(rec["shard"]))
        p = array_nbytes(t, hidden_width=self.hidden_width, hidden_size=self.hidden_size)
        o1, o2, o3 = off + p[0], off + p[0] + p[1], off + p[0] + p[1] + p[2]
        ids = torch.from_numpy(mm[off : off + 4 * t].view(np.int32))
        mask = torch.from_numpy(mm[o1 : o1 + t]).view(torch.bool)
        hid = torch.from_numpy(mm[o2 : o2 + 2 * t * self.hidden_width].view(np.int16)).view(torch.bfloat16)
        last = torch.from_numpy(mm[o3 : o3 + 2 * t * self.hidden_size].view(np.int16)).view(torch.bfloat16)
        return {
            "input_ids": ids.long(),
            "loss_mask": mask,
            "hidden_states": hid.view(t, self.hidden_width),
            "last_hidden_state": last.view(t, self.hidden_size),
            "source_index": int(rec["source_index"]),
        }

    def check_compatible(
        self,
        *,
        target_model: str | None = None,
        layer_ids: Iterable[int] | None = None,
        hidden_size: int | None = None,
        max_length: int | None = None,
    ) -> None:
        """Raise :class:`CacheCompatibilityError` naming the first field that differs (None = not checked).

        ``target_model`` is compared by fingerprint when the cache has one (so a copy of the same files
        passes and a same-named fine-tune does not); by name for version-1 caches, or when the target
        cannot be fingerprinted here (a hub id not in the local cache), which is said in a warning.
        """
        fingerprint = None
        if target_model is not None and self.manifest.get("target_fingerprint"):
            from deepspec.targets import TargetError
            from deepspec.target_files import target_fingerprint

            try:
                fingerprint = target_fingerprint(target_model)
            except TargetError as exc:
                warnings.warn(
                    f"cannot verify that target cache {self.path} was built from {target_model!r}; checking "
                    f"its name only: {exc}",
                    UserWarning,
                    stacklevel=2,
                )
        want = {
            "target_model": target_model,
            "target_fingerprint": fingerprint,
            "layer_ids": list(layer_ids) if layer_ids is not None else None,
            "hidden_size": hidden_size,
            "max_length": max_length,
        }
        check_identity(
            self.manifest,
            want,
            where=f"target cache {self.path}",
            fix="point --target-cache-dir at a cache built for this config, or build one with "
            "prepare_target_cache.py and this config (--overwrite replaces that cache)",
        )

    def close(self) -> None:
        self._maps = [None] * len(self._shard_paths)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = [None] * len(self._shard_paths)
        return state

    def __repr__(self) -> str:
        return (
            f"TargetCache({str(self.path)!r}, samples={len(self)}, tokens={int(self.lengths.sum())}, "
            f"layers={self.layer_ids}, hidden_size={self.hidden_size})"
        )


def _file_crc32(path: Path, chunk: int = 16 << 20) -> int:
    crc = 0
    buf = bytearray(chunk)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            crc = zlib.crc32(memoryview(buf)[:n], crc)
    return crc
