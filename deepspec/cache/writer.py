"""Writing the target cache: one background-thread writer per rank, then one finalize.

The layout, the index records and the identity checks are in :mod:`deepspec.cache.format`; this module
only produces files in that format. Each rank runs a :class:`TargetCacheWriter`: shards are written under
temp names, fsynced and renamed, the ``.idx`` part last (the commit point). After every rank has closed,
rank 0 runs :func:`finalize_target_cache`, which merges the committed parts into ``index.bin`` and
writes ``manifest.json`` atomically. A killed build has no manifest; re-running it skips
:func:`deepspec.cache.format.committed_source_indices` and carries on. The reader
(:mod:`deepspec.cache.reader`) does not import this module.
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import re
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from deepspec.cache.format import (
    ALIGN,
    DEFAULT_MAX_SHARD_BYTES,
    DTYPES,
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_NAME,
    MANIFEST_NAME,
    PART_HEADER,
    PART_MAGIC,
    RECORD_DTYPE,
    REBUILD_ADVICE,
    CacheCompatibilityError,
    TargetCacheError,
    array_nbytes,
    cache_is_complete,
    check_build_folder,
    check_identity,
    committed_source_indices,
    read_index_part,
    read_rank_metas,
    sample_nbytes,
    scan_shards,
)
from deepspec.fsio import atomic_write, fsync_dir, write_failed

__all__ = ["TargetCacheWriteError", "TargetCacheWriter", "finalize_target_cache"]

_ZEROS = bytes(ALIGN)
_WRITEBACK_BYTES = 32 << 20
_FADVISE = getattr(os, "posix_fadvise", None)  # Linux; elsewhere fsync alone does the work


class TargetCacheWriteError(TargetCacheError):
    """The background writer thread failed; raised in the caller."""


# ---------------------------------------------------------------------------- file helpers


def _writev_all(fd: int, bufs: list) -> None:
    """os.writev that handles short writes (one syscall per sample in the common case)."""
    bufs = [memoryview(b).cast("B") for b in bufs if len(b)]
    while bufs:
        n = os.writev(fd, bufs[:1024])  # IOV_MAX
        while n and bufs:
            if n >= len(bufs[0]):
                n -= len(bufs.pop(0))
            else:
                bufs[0] = bufs[0][n:]
                n = 0


def _crc_chain(bufs: list, crc: int) -> int:
    for b in bufs:
        crc = zlib.crc32(b, crc)
    return crc


def _remove_uncommitted(output_dir: Path, *, rank: int | None) -> int:
    """Delete temp files and shards without a committed .idx (of one rank, or all when rank is None)."""
    removed = 0
    for p in output_dir.iterdir():
        m = re.match(r"^\.rank(\d{5})\..*\.tmp$", p.name)
        if m and (rank is None or int(m[1]) == rank):
            p.unlink(missing_ok=True)
            removed += 1
    for (r, _), files in scan_shards(output_dir).items():
        # .bin alone: crashed between the two renames; .idx alone: someone deleted a shard to redo it.
        if len(files) == 1 and (rank is None or r == rank):
            next(iter(files.values())).unlink(missing_ok=True)
            removed += 1
    return removed


# ---------------------------------------------------------------------------- writer


def _to_numpy(x: Any, name: str, kind: str) -> np.ndarray:
    """Zero-copy where possible: int32 ids, uint8 mask, int16 bit patterns for bf16."""
    import torch  # here, not at the top: a build refused before any work never pays for importing torch

    if isinstance(x, torch.Tensor):
        if x.device.type != "cpu":
            raise ValueError(
                f"{name} is on {x.device}; call .cpu() before add() - the writer thread only "
                "handles CPU tensors so it never synchronises with the GPU"
            )
        x = x.detach()
        if kind == "bf16":
            x = x if x.dtype == torch.bfloat16 else x.to(torch.bfloat16)
            return x.contiguous().view(torch.int16).numpy()
        if kind == "mask":  # stored as 0/1 so the reader can view it as bool
            x = x if x.dtype == torch.bool else (x != 0)
            return x.contiguous().view(torch.uint8).numpy()
        return x.to(torch.int32).contiguous().numpy()
    x = np.asarray(x)
    if kind == "bf16":
        if x.dtype in (np.int16, np.uint16):  # already raw bf16 bits
            return np.ascontiguousarray(x).view(np.int16)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16).view(torch.int16).numpy()
    if kind == "mask":
        return np.ascontiguousarray(x if x.dtype == np.bool_ else x != 0).view(np.uint8)
    return np.ascontiguousarray(x, dtype=np.int32)


def _squeeze_batch(x: np.ndarray, ndim: int, name: str) -> np.ndarray:
    if x.ndim == ndim + 1 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims (no batch dim), got shape {tuple(x.shape)}")
    return x


class TargetCacheWriter:
    """Writes one rank's samples into ``output_dir`` on a background thread.

    ``add()`` validates and hands over references to the arrays (no copy) and
    returns quickly; the caller must pass **CPU** tensors (do the ``.cpu()``
    yourself) and must not modify them in place afterwards.  At most
    ``max_queue_bytes`` of samples wait in memory; ``add()`` blocks beyond that.
    A failure of the writer thread is raised by the next ``add()``/``close()``.
    Always ``close()`` (or use ``with``): it commits the open shard.

    On resume, skip the samples in ``writer.committed`` (every rank's committed
    source ordinals, read at start) *before* running the target on them.
    ``hidden_states`` may be ``[T, n*H]`` or ``[T, n, H]``; a leading batch dim
    of 1 is dropped; float hidden states are converted to bf16 (a copy).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        *,
        rank: int = 0,
        target_model: str,
        layer_ids: Sequence[int],
        hidden_size: int,
        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
        max_queue_bytes: int = 1 << 30,
        source_files: Sequence[str | dict] = (),
        extra: dict | None = None,
        checksum: bool = True,
        target_fingerprint: str | None = None,
        max_length: int | None = None,
    ):
        self.output_dir = Path(output_dir)
        self.rank = int(rank)
        self.layer_ids = [int(x) for x in layer_ids]
        self.hidden_size = int(hidden_size)
        self.hidden_width = len(self.layer_ids) * self.hidden_size
        if not self.layer_ids or self.hidden_size <= 0 or not 0 <= self.rank < 100000:
            raise ValueError("need at least one layer id, hidden_size > 0 and 0 <= rank < 100000")
        self.max_shard_bytes = int(max_shard_bytes)
        self.max_queue_bytes = int(max_queue_bytes)
        self.checksum = checksum
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if cache_is_complete(self.output_dir):
            raise TargetCacheError(
                f"{self.output_dir} is already a finalized target cache; write to a new folder, "
                f"or delete {MANIFEST_NAME} there to add samples to it"
            )
        self.meta = {
            "format_version": FORMAT_VERSION,
            "rank": self.rank,
            "target_model": str(target_model),
            "target_fingerprint": target_fingerprint,
            "layer_ids": self.layer_ids,
            "hidden_size": self.hidden_size,
            "max_length": None if max_length is None else int(max_length),
            "source_files": [s if isinstance(s, dict) else str(s) for s in source_files],
            "sample_checksum": "crc32" if checksum else None,
            "extra": extra or {},
        }
        check_build_folder(self.output_dir, self.meta)  # a resume must continue the same build, never mix two
        _remove_uncommitted(self.output_dir, rank=self.rank)  # leftovers of a killed run of this rank
        atomic_write(self.output_dir / f"rank{self.rank:05d}.meta.json", json.dumps(self.meta, indent=1).encode())
        self.committed = committed_source_indices(self.output_dir)
        own = [k for (r, k) in scan_shards(self.output_dir) if r == self.rank]
        self._next_shard = max(own) + 1 if own else 0
        self._added: set[int] = set()
        self.num_added = self.num_committed = self.bytes_committed = 0
        # Queue state shared with the thread, guarded by _cv.
        self._cv = threading.Condition()
        self._items: collections.deque = collections.deque()
        self._pending_bytes = 0
        self._stop = False
        self._error: BaseException | None = None
        self._closed = False
        # Open-shard state, touched only by the thread.
        self._fd: int | None = None
        self._records: list[tuple] = []
        self._shard_bytes = 0
        self._flushed = 0
        self._crc_pool = ThreadPoolExecutor(1, thread_name_prefix="target-cache-crc") if checksum else None
        self._thread = threading.Thread(target=self._run, name=f"target-cache-writer-{self.rank}", daemon=True)
        self._thread.start()

    # -- caller side
    def add(self, *, source_index: int, input_ids, loss_mask, hidden_states, last_hidden_state) -> bool:
        """Queue one sample; returns False (and writes nothing) if ``source_index`` is already committed/added."""
        self._raise_if_failed()
        if self._closed:
            raise TargetCacheError("add() after close(); create a new TargetCacheWriter to resume")
        source_index = int(source_index)
        if source_index < 0:
            raise ValueError(f"source_index must be >= 0, got {source_index}")
        if source_index in self.committed or source_index in self._added:
            return False
        ids = _squeeze_batch(_to_numpy(input_ids, "input_ids", "ids"), 1, "input_ids")
        mask = _squeeze_batch(_to_numpy(loss_mask, "loss_mask", "mask"), 1, "loss_mask")
        hid = _to_numpy(hidden_states, "hidden_states", "bf16")
        if hid.ndim >= 3 and hid.shape[-2:] == (len(self.layer_ids), self.hidden_size):
            hid = hid.reshape(*hid.shape[:-2], self.hidden_width)  # [T, n, H] -> [T, n*H], free when contiguous
        hid = _squeeze_batch(hid, 2, "hidden_states")
        last = _squeeze_batch(_to_numpy(last_hidden_state, "last_hidden_state", "bf16"), 2, "last_hidden_state")
        t = ids.shape[0]
        if t == 0:
            raise ValueError(f"sample {source_index} has no tokens")
        for name, arr, shape in (
            ("loss_mask", mask, (t,)),
            ("hidden_states", hid, (t, self.hidden_width)),
            ("last_hidden_state", last, (t, self.hidden_size)),
        ):
            if tuple(arr.shape) != shape:
                raise ValueError(
                    f"{name} of sample {source_index} has shape {tuple(arr.shape)}, expected {shape} "
                    f"(T={t}, {len(self.layer_ids)} layers x hidden_size {self.hidden_size})"
                )
        nbytes = sample_nbytes(t, hidden_width=self.hidden_width, hidden_size=self.hidden_size)
        item = (source_index, t, int(np.count_nonzero(mask)), nbytes, (ids, mask, hid, last))
        with self._cv:
            # Bound memory held by queued samples; one sample is always admitted so huge ones cannot deadlock.
            while self._pending_bytes and self._pending_bytes + nbytes > self.max_queue_bytes and not self._error:
                self._cv.wait()
            self._raise_if_failed()
            self._items.append(item)
            self._pending_bytes += nbytes
            self._cv.notify_all()
        self._added.add(source_index)
        self.num_added += 1
        return True

    def flush(self) -> None:
        """Wait until every queued sample is written to disk (the open shard stays uncommitted)."""
        with self._cv:
            while self._items and self._error is None:
                self._cv.wait()
        self._raise_if_failed()

    def close(self) -> None:
        """Write the remaining samples, commit the open shard and stop the thread."""
        if not self._closed:
            self._closed = True
            with self._cv:
                self._stop = True
                self._cv.notify_all()
            self._thread.join()
        self._raise_if_failed()

    def __enter__(self) -> "TargetCacheWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            try:  # keep what was written; the original exception matters more than a close error
                self.close()
            except Exception:
                pass

    def _raise_if_failed(self) -> None:
        if self._error is None:
            return
        if isinstance(self._error, OSError):  # full disk, file-size limit: the one wording of every writer
            raise TargetCacheWriteError(
                f"{write_failed(self.output_dir, self._error)}: the build resumes after the last committed shard "
                f"(rank {self.rank}'s writer failed)"
            ) from self._error
        raise TargetCacheWriteError(
            f"target cache writer (rank {self.rank}, {self.output_dir}) failed: {self._error!r}. Samples after "
            "the last committed shard were not saved; fix the cause and re-run the build to resume"
        ) from self._error

    # -- writer thread
    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._items and not self._stop:
                        self._cv.wait()
                    if not self._items:
                        break
                    item = self._items[0]
                self._write(item)
                with self._cv:
                    self._items.popleft()
                    self._pending_bytes -= item[3]
                    self._cv.notify_all()
            self._commit()
        except BaseException as e:  # noqa: BLE001 - must reach the caller, whatever it is
            with self._cv:
                self._error = e
                self._items.clear()
                self._cv.notify_all()
            if self._fd is not None:
                os.close(self._fd)  # temp file stays; the next run of this rank removes it
                self._fd = None
        finally:
            if self._crc_pool is not None:
                self._crc_pool.shutdown(wait=False)

    def _name(self, ext: str) -> str:
        return f"rank{self.rank:05d}.shard{self._next_shard:06d}.{ext}"

    def _write(self, item) -> None:
        source_index, t, loss_tokens, nbytes, arrays = item
        if self._fd is not None and self._shard_bytes and self._shard_bytes + nbytes > self.max_shard_bytes:
            self._commit()
        if self._fd is None:
            tmp = self.output_dir / f".{self._name('bin')}.tmp"
            self._fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self._records, self._shard_bytes, self._flushed = [], 0, 0
        bufs = []
        for arr, padded in zip(arrays, array_nbytes(t, hidden_width=self.hidden_width, hidden_size=self.hidden_size)):
            bufs.append(memoryview(arr.reshape(-1).view(np.uint8)))
            if padded > arr.nbytes:
                bufs.append(_ZEROS[: padded - arr.nbytes])
        # crc32 and write() both release the GIL: checksum on a helper thread while the kernel copies.
        crc = self._crc_pool.submit(_crc_chain, bufs, 0) if self._crc_pool else None
        _writev_all(self._fd, bufs)
        self._records.append((source_index, self._shard_bytes, 0, t, loss_tokens, crc.result() if crc else 0))
        self._shard_bytes += nbytes
        if _FADVISE and self._shard_bytes - self._flushed >= _WRITEBACK_BYTES:
            # Start writeback of what was just written (DONTNEED on dirty pages = async flush), so the
            # disk works while we copy the next samples and the final fsync has little left to do.
            _FADVISE(self._fd, self._flushed, self._shard_bytes - self._flushed, os.POSIX_FADV_DONTNEED)
            self._flushed = self._shard_bytes

    def _commit(self) -> None:
        if self._fd is None:
            return
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        records = np.array(self._records, dtype=RECORD_DTYPE).tobytes()
        header = PART_HEADER.pack(
            PART_MAGIC,
            FORMAT_VERSION,
            RECORD_DTYPE.itemsize,
            len(self._records),
            self._shard_bytes,
            0,
            zlib.crc32(records),
        )
        idx_tmp = self.output_dir / f".{self._name('idx')}.tmp"
        with open(idx_tmp, "wb") as f:
            f.write(header + records)
            f.flush()
            os.fsync(f.fileno())
        os.replace(self.output_dir / f".{self._name('bin')}.tmp", self.output_dir / self._name("bin"))
        os.replace(idx_tmp, self.output_dir / self._name("idx"))  # the commit point
        fsync_dir(self.output_dir)
        self.num_committed += len(self._records)
        self.bytes_committed += self._shard_bytes
        self._next_shard += 1


# ---------------------------------------------------------------------------- finalize


def finalize_target_cache(
    output_dir: str | os.PathLike,
    *,
    expected_num_samples: int | None = None,
    source_files: Sequence[str] | None = None,
    extra: dict | None = None,
) -> dict:
    """Merge all ranks' committed parts into ``index.bin`` and write ``manifest.json`` last.

    Run once (rank 0) after every writer has closed: it deletes leftover temp
    files.  ``expected_num_samples`` guards against finalizing a build where a
    rank died.  Returns the manifest.
    """
    output_dir = Path(output_dir)
    metas = read_rank_metas(output_dir) if output_dir.is_dir() else []
    if not metas:
        raise TargetCacheError(f"{output_dir} has no writer metadata; run the cache build before finalizing")
    first = metas[0]
    for m in metas:
        if m.get("format_version") != FORMAT_VERSION:
            raise CacheCompatibilityError(
                f"rank {m.get('rank')}'s part of {output_dir} has format version "
                f"{m.get('format_version')!r}, not {FORMAT_VERSION}; {REBUILD_ADVICE}"
            )
        check_identity(
            m,
            first,
            where=f"rank {m['rank']}'s part of {output_dir}",
            fix=f"ranks disagree with rank {first['rank']}; {REBUILD_ADVICE}",
        )
    (output_dir / MANIFEST_NAME).unlink(missing_ok=True)  # never leave an old manifest next to a new index
    fsync_dir(output_dir)
    _remove_uncommitted(output_dir, rank=None)

    shards, parts = [], []
    scan = scan_shards(output_dir)
    hidden_width = len(first["layer_ids"]) * first["hidden_size"]
    for sid, key in enumerate(sorted(scan)):
        files = scan[key]
        records, nbytes, _ = read_index_part(files["idx"])
        actual = files["bin"].stat().st_size
        if actual != nbytes:
            raise TargetCacheError(
                f"shard {files['bin']} has {actual} bytes but its index says {nbytes}; delete "
                f"it and {files['idx'].name}, then re-run the build to redo those samples"
            )
        records["shard"] = sid
        parts.append(records)
        shards.append(
            {"file": files["bin"].name, "bytes": nbytes, "num_samples": len(records), "index_part": files["idx"].name}
        )
    if not parts:
        raise TargetCacheError(f"{output_dir} has no committed samples; run the build first")
    records = np.concatenate(parts)
    # Stable sort keeps the first copy (lowest rank/shard) of any duplicated source ordinal.
    order = np.argsort(records["source_index"], kind="stable")
    records = records[order]
    keep = np.ones(len(records), dtype=bool)
    keep[1:] = records["source_index"][1:] != records["source_index"][:-1]
    duplicates = int(len(records) - keep.sum())
    records = records[keep]
    if expected_num_samples is not None and len(records) != expected_num_samples:
        raise TargetCacheError(
            f"{output_dir} has {len(records)} committed samples but {expected_num_samples} were "
            "expected; a rank may have failed - re-run the build to resume, then finalize again"
        )
    index_bytes = records.tobytes()
    atomic_write(output_dir / INDEX_NAME, index_bytes)

    if source_files is None:
        unique = {json.dumps(s, sort_keys=True): s for m in metas for s in m.get("source_files", [])}
        source_files = list(unique.values())
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "target_model": first["target_model"],
        "target_fingerprint": first.get("target_fingerprint"),
        "max_length": first.get("max_length"),
        "layer_ids": first["layer_ids"],
        "num_layers": len(first["layer_ids"]),
        "hidden_size": first["hidden_size"],
        "hidden_width": hidden_width,
        "dtypes": DTYPES,
        "alignment": ALIGN,
        "index": {
            "file": INDEX_NAME,
            "num_records": len(records),
            "record_size": RECORD_DTYPE.itemsize,
            "record_fields": [n for n in RECORD_DTYPE.names],
            "crc32": zlib.crc32(index_bytes),
        },
        "shards": shards,
        "sample_checksum": first.get("sample_checksum"),
        "num_samples": len(records),
        "total_tokens": int(records["length"].sum()),
        "total_loss_tokens": int(records["loss_tokens"].sum()),
        "duplicates_dropped": duplicates,
        "source_files": [s if isinstance(s, dict) else str(s) for s in source_files],
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "extra": extra if extra is not None else first.get("extra", {}),
    }
    atomic_write(output_dir / MANIFEST_NAME, (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest
