"""The on-disk format of the target cache: layout, names, sizes, identity, and reading what a build left.

Folder layout::

    manifest.json                 written LAST by finalize_target_cache(); its presence = complete cache
    index.bin                     merged index: RECORD_DTYPE records sorted by source ordinal, no header
    rank00000.meta.json           what rank 0 is building (checked on resume)
    rank00000.shard000000.bin     sample data
    rank00000.shard000000.idx     64-byte header + that shard's records; renamed in last = commit marker
    .rank00000.shard000001.bin.tmp  shard being written (removed when a build resumes)

Per sample, contiguous in a shard, each array starting on a 64-byte boundary
(so numpy/torch views of the mmap are aligned and need no copy)::

    input_ids int32 [T] | loss_mask uint8 [T] | hidden_states bf16 [T, n_layers*H] | last_hidden_state bf16 [T, H]

bf16 is stored as its raw 16-bit pattern (numpy has no bfloat16).

Identity and integrity (format version 2). The manifest (and every rank's meta) records what the
cache was built from: ``target_fingerprint`` (:func:`deepspec.target_files.target_fingerprint`: config
plus sampled weight bytes, not the folder name), ``layer_ids``, ``hidden_size``, ``max_length``,
``source_files`` (path, size, sha256) and the build settings in ``extra``. :func:`check_identity`
is the one comparison: a resumed build, a build into a folder holding a complete cache, and the
trainer all go through it. Each index record carries the crc32 of its sample's bytes (padding
included), so a reader verifies a sample the first time it reads it, over bytes it reads anyway.
Version 1 caches (no fingerprint, no per-sample checksums) are still read, with a warning.

Protocol: each rank runs a :class:`deepspec.cache.writer.TargetCacheWriter`; shards are written
under temp names, fsynced and renamed, the ``.idx`` part last.  After every rank has closed, rank 0
runs :func:`deepspec.cache.writer.finalize_target_cache`, which merges the committed parts into
``index.bin`` and writes ``manifest.json`` atomically. A killed build has no manifest; re-running it
skips :func:`committed_source_indices` and carries on.

This module is what the writer (:mod:`deepspec.cache.writer`) and the reader
(:mod:`deepspec.cache.reader`) must agree on, so neither has to import the other. It needs numpy
only (no torch), so the cache-build stage can check a folder cheaply.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from deepspec.errors import DeepSpecError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "ALIGN",
    "MANIFEST_NAME",
    "INDEX_NAME",
    "DEFAULT_MAX_SHARD_BYTES",
    "DTYPES",
    "RECORD_DTYPE",
    "PART_HEADER",
    "PART_MAGIC",
    "SHARD_RE",
    "REBUILD_ADVICE",
    "TargetCacheError",
    "CacheCompatibilityError",
    "array_nbytes",
    "sample_nbytes",
    "estimate_cache_bytes",
    "format_bytes",
    "read_index_part",
    "scan_shards",
    "committed_source_indices",
    "cache_is_complete",
    "read_rank_metas",
    "data_identity_of",
    "check_identity",
    "check_build_folder",
    "validate_manifest",
    "is_cache_file",
]

FORMAT_NAME = "deepspec-target-cache"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: no fingerprint, no per-sample checksums
ALIGN = 64
MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.bin"
DEFAULT_MAX_SHARD_BYTES = 2 << 30
DTYPES = {"input_ids": "int32", "loss_mask": "uint8", "hidden_states": "bfloat16", "last_hidden_state": "bfloat16"}

RECORD_DTYPE = np.dtype(
    [
        ("source_index", "<i8"),
        ("offset", "<u8"),
        ("shard", "<u4"),
        ("length", "<u4"),
        ("loss_tokens", "<u4"),
        ("crc32", "<u4"),
    ]
)
# crc32: of the sample's padded bytes [offset, offset + sample_nbytes) (version 1: reserved, 0).
# .idx part header: magic, version, record size, n records, shard bytes, shard crc32 (v1; 0 since), records crc32.
PART_HEADER = struct.Struct("<8sIIQQII24x")
PART_MAGIC = b"DSTCIDX1"
# A committed shard's files: rank, shard number, "bin" (data) or "idx" (its index part).
SHARD_RE = re.compile(r"^rank(\d{5})\.shard(\d{6})\.(bin|idx)$")
# What every mismatch tells the user to do (the CLI names; library callers read them the same way).
REBUILD_ADVICE = "pass --overwrite to prepare_target_cache.py to rebuild it, or choose a new --output-dir"


class TargetCacheError(DeepSpecError, RuntimeError):
    """The cache is missing, incomplete, corrupt, or cannot be built as asked."""


class CacheCompatibilityError(TargetCacheError):
    """The cache was built for a different target / layers than requested."""


# ---------------------------------------------------------------------------- sizes


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def array_nbytes(length: int, *, hidden_width: int, hidden_size: int) -> list[int]:
    """Padded byte sizes of the four arrays of one sample, in the order they are stored.

    The writer pads each array to these sizes and the reader slices a sample by them, so both take them
    from here. ``length`` may be a numpy array of lengths (the reader bounds-checks a whole index at once).
    """
    return [_align(4 * length), _align(length), _align(2 * length * hidden_width), _align(2 * length * hidden_size)]


def sample_nbytes(length: int, *, hidden_width: int, hidden_size: int) -> int:
    """Bytes one sample of ``length`` tokens occupies in a shard (padding included)."""
    return sum(array_nbytes(length, hidden_width=hidden_width, hidden_size=hidden_size))


def estimate_cache_bytes(*, num_samples: int, avg_tokens: float, num_layers: int, hidden_size: int) -> int:
    """Approximate cache size: samples x tokens x ((layers+1)*H*2 + 5) plus padding and index."""
    per_token = (num_layers + 1) * hidden_size * 2 + 4 + 1
    per_sample_overhead = RECORD_DTYPE.itemsize + 2 * ALIGN  # index record + average padding of 4 arrays
    return int(num_samples * (avg_tokens * per_token + per_sample_overhead)) + 64 * 1024


def format_bytes(n: float) -> str:
    """1536 -> '1.50 KiB' (binary units)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError


# ---------------------------------------------------------------------------- what a build left on disk


def read_index_part(path: Path) -> tuple[np.ndarray, int, int]:
    """Read a committed ``.idx`` part -> (records, shard bytes, shard crc32); raises on corruption."""
    raw = path.read_bytes()
    what = f"index part {path}"
    if len(raw) < PART_HEADER.size:
        raise TargetCacheError(f"{what} is truncated; delete it and its .bin shard, then re-run the build")
    magic, version, rec_size, n, shard_bytes, shard_crc, rec_crc = PART_HEADER.unpack_from(raw)
    body = raw[PART_HEADER.size :]
    if magic != PART_MAGIC or version != FORMAT_VERSION or rec_size != RECORD_DTYPE.itemsize:
        raise CacheCompatibilityError(
            f"{what} has format version {version}, this DeepSpec writes "
            f"{FORMAT_VERSION}; a build cannot resume across versions: {REBUILD_ADVICE}"
        )
    if len(body) != n * rec_size or zlib.crc32(body) != rec_crc:
        raise TargetCacheError(
            f"{what} is corrupt (size or checksum mismatch); delete it and its .bin shard, "
            "then re-run the build to redo those samples"
        )
    return np.frombuffer(body, dtype=RECORD_DTYPE).copy(), shard_bytes, shard_crc


def scan_shards(output_dir: Path) -> dict[tuple[int, int], dict[str, Path]]:
    """(rank, shard number) -> {"bin": path, "idx": path} of final-named files."""
    found: dict[tuple[int, int], dict[str, Path]] = {}
    for p in output_dir.iterdir():
        m = SHARD_RE.match(p.name)
        if m:
            found.setdefault((int(m[1]), int(m[2])), {})[m[3]] = p
    return found


def committed_source_indices(output_dir: str | os.PathLike) -> set[int]:
    """Source ordinals already committed (all ranks); a resumed build skips these."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return set()
    out: set[int] = set()
    for files in scan_shards(output_dir).values():
        if "idx" in files and "bin" in files:
            out.update(read_index_part(files["idx"])[0]["source_index"].tolist())
    return out


def cache_is_complete(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST_NAME).is_file()


def read_rank_metas(output_dir: Path) -> list[dict]:
    """Every rank's ``rank*.meta.json`` (what it is building), in rank order."""
    return [json.loads(p.read_text()) for p in sorted(output_dir.glob("rank*.meta.json"))]


def is_cache_file(name: str) -> bool:
    """Files a cache build writes (what --overwrite may delete)."""
    return bool(
        re.match(
            r"^\.?(manifest\.json|index\.bin|rank\d{5}\.meta\.json|rank\d{5}\.shard\d{6}\.(bin|idx))"
            r"(\.tmp)?$",
            name,
        )
    ) and (name.startswith(".") == name.endswith(".tmp"))


# ---------------------------------------------------------------------------- identity


def _same_name(a: str, b: str) -> bool:
    # Names only (caches without a fingerprint): a hub id and a local copy of it count as the same target.
    a, b = str(a).rstrip("/"), str(b).rstrip("/")
    return a == b or a.rsplit("/", 1)[-1].lower() == b.rsplit("/", 1)[-1].lower()


def _short(fp: str | None) -> str:
    return fp.split(":", 1)[-1][:12] if fp else "none"


def _sources(files) -> list | None:
    """(size, sha256) per source file, or None when they were recorded as bare names (then not compared)."""
    if not files or not all(isinstance(f, dict) and "sha256" in f for f in files):
        return None
    return [(int(f["size"]), f["sha256"]) for f in files]


def _describe_sources(files) -> str:
    return (
        "["
        + ", ".join(
            f"{f['path']} ({f['size']} bytes, sha256 {f['sha256'][:12]})" if isinstance(f, dict) else str(f)
            for f in files
        )
        + "]"
    )


def _max_length(record: dict):
    value = record.get("max_length")
    return value if value is not None else (record.get("extra") or {}).get("max_length")


def data_identity_of(record: dict) -> dict:
    """The data part of an identity (a manifest, a partial build's meta, a checkpoint's record): the source
    files and the settings that turned them into samples (:func:`deepspec.cache.build.data_identity`)."""
    return {key: record.get(key) for key in ("source_files", "max_length", "extra")}


def check_identity(have: dict, want: dict, *, where: str, fix: str, made: str = "built with") -> None:
    """Raise :class:`CacheCompatibilityError` naming the first field where ``have`` (a cache's manifest, a
    partial build's meta, or a checkpoint's data record) differs from ``want`` (this run), with both values and
    ``fix``; ``made`` says how ``have`` came from its value ("it was built with ...", "trained on").

    Fields absent (None) in ``want`` are not checked. The target is compared by fingerprint when both sides
    have one; otherwise by name (a cache from before fingerprints, or a caller that could not compute one).
    """

    def differ(field: str, old, new, match: str = "") -> CacheCompatibilityError:
        hint = f"set {match} to match it, or " if match else ""
        return CacheCompatibilityError(
            f"{where} differs in {field}: it was {made} {old}, this run has {new}; {hint}{fix}"
        )

    name_old, name_new = have.get("target_model"), want.get("target_model")
    fp_old, fp_new = have.get("target_fingerprint"), want.get("target_fingerprint")
    if fp_old and fp_new:
        if fp_old != fp_new:
            raise differ(
                "the target (config or weights)",
                f"target_model={name_old!r} (fingerprint {_short(fp_old)})",
                f"{name_new!r} (fingerprint {_short(fp_new)})",
            )
    elif name_new is not None and not _same_name(name_old, name_new):
        raise differ("the target", f"target_model={name_old!r}", f"{name_new!r}")
    layers = want.get("layer_ids")
    if layers is not None and [int(x) for x in layers] != list(have["layer_ids"]):
        raise differ(
            "layer_ids",
            f"layer_ids={list(have['layer_ids'])}",
            f"{[int(x) for x in layers]}",
            f"model.target_layer_ids={list(have['layer_ids'])}",
        )
    if want.get("hidden_size") is not None and int(want["hidden_size"]) != int(have["hidden_size"]):
        raise differ("hidden_size", f"hidden_size={have['hidden_size']}", f"{want['hidden_size']}")
    old_len, new_len = _max_length(have), _max_length(want)
    if old_len is not None and new_len is not None and int(old_len) != int(new_len):
        raise differ("max_length", f"data.max_length={old_len}", f"{new_len}", f"data.max_length={old_len}")
    old_src, new_src = _sources(have.get("source_files")), _sources(want.get("source_files"))
    if old_src is not None and new_src is not None and old_src != new_src:
        raise differ(
            "the training data", _describe_sources(have["source_files"]), _describe_sources(want["source_files"])
        )
    if "sample_checksum" in have and "sample_checksum" in want and have["sample_checksum"] != want["sample_checksum"]:
        # Records without a checksum among checked ones would read as corrupt.
        raise differ("sample_checksum", f"sample_checksum={have['sample_checksum']!r}", f"{want['sample_checksum']!r}")
    old_extra, new_extra = have.get("extra") or {}, want.get("extra") or {}
    for key in sorted(set(old_extra) & set(new_extra)):
        if old_extra[key] != new_extra[key]:
            raise differ(key, f"{key}={old_extra[key]!r}", f"{new_extra[key]!r}")


def check_build_folder(output_dir: str | os.PathLike, want: dict) -> str:
    """State of a cache folder a build is about to write: "empty", "partial" (resumable) or "complete".

    Raises when what is there was built differently (older format, other target, layers, data, settings):
    resuming would mix two datasets into one cache, and "nothing to do" would hand over the wrong cache.
    """
    output_dir = Path(output_dir)
    if cache_is_complete(output_dir):
        mpath = output_dir / MANIFEST_NAME
        try:
            manifest = json.loads(mpath.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise TargetCacheError(f"{mpath} is not valid JSON ({exc}); {REBUILD_ADVICE}") from None
        if manifest.get("format_version") != FORMAT_VERSION:
            raise CacheCompatibilityError(
                f"{output_dir} holds a complete cache of format version {manifest.get('format_version')!r} (this "
                f"DeepSpec writes {FORMAT_VERSION}); it records no target fingerprint or data checksums, so this "
                f"build cannot tell whether it matches. Train on it as it is, or {REBUILD_ADVICE}"
            )
        check_identity(manifest, want, where=f"the complete cache in {output_dir}", fix=REBUILD_ADVICE)
        return "complete"
    metas = read_rank_metas(output_dir) if output_dir.is_dir() else []
    for meta in metas:
        if meta.get("format_version") != FORMAT_VERSION:
            raise CacheCompatibilityError(
                f"{output_dir} holds a partial build of cache format version {meta.get('format_version')!r} (this "
                f"DeepSpec writes {FORMAT_VERSION}); it cannot be resumed: {REBUILD_ADVICE}"
            )
        check_identity(
            meta, want, where=f"the partial build in {output_dir} (rank {meta.get('rank')})", fix=REBUILD_ADVICE
        )
    return "partial" if metas else "empty"


# ---------------------------------------------------------------------------- a finalized cache's manifest


def validate_manifest(manifest: dict, *, cache_dir: Path) -> None:
    """Raise :class:`TargetCacheError` unless ``manifest`` (read from ``cache_dir``) describes a cache this
    DeepSpec can read: known format and version, the dtypes and alignment above, every field the reader
    uses present, and a hidden width that matches the layers. Files themselves are checked by the reader.

    Here rather than in the reader: these are the promises :func:`deepspec.cache.writer.finalize_target_cache`
    makes, so the two sides read them from one place.
    """
    m, mpath = manifest, cache_dir / MANIFEST_NAME
    if m.get("format") != FORMAT_NAME or m.get("format_version") not in READABLE_VERSIONS:
        raise TargetCacheError(
            f"{cache_dir}: unsupported cache format {m.get('format')!r} version "
            f"{m.get('format_version')!r} (this DeepSpec reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}); {REBUILD_ADVICE}"
        )
    if m.get("dtypes") != DTYPES or m.get("alignment") != ALIGN:
        raise TargetCacheError(f"{cache_dir}: unexpected dtypes/alignment in manifest; rebuild the cache")
    try:
        hidden_size, hidden_width = int(m["hidden_size"]), int(m["hidden_width"])
        layer_ids = list(m["layer_ids"])
        [cache_dir / s["file"] for s in m["shards"]]  # noqa: B018 - presence (and type) check
        m["index"]["file"], m["index"]["crc32"], m["num_samples"]  # noqa: B018 - presence check
    except (KeyError, TypeError) as e:
        raise TargetCacheError(f"{mpath} lacks field {e}; re-run finalize_target_cache") from None
    if hidden_width != len(layer_ids) * hidden_size:
        raise TargetCacheError(f"{mpath}: hidden_width does not match layer_ids x hidden_size; rebuild")
