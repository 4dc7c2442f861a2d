"""Target cache throughput vs. the raw disk, measured in the same run.

For the same number of bytes, in the same file sizes and write sizes:

* raw write   : os.write of one sample-sized buffer at a time, fsync per file (into fresh blocks,
                like a real build; nothing is deleted until the end, see below)
* cache write : TargetCacheWriter.add() ... close() (background thread, checksums, fsync, renames)
* raw read    : os.readv of the files, sample-sized reads, into one reused buffer
* cache read  : TargetCache[i] for every sample, every tensor copied into a reused buffer
                (the copy a collate function would do; it touches every byte).  The copy is
                single-threaded like the kernel's copy in read(), and like a DataLoader worker.
                Each sample's crc32 is checked on its first read, as in training (a fresh
                TargetCache per pass, so every pass pays it); "unchecked" is the same read with
                the check switched off, to price the check.

Reads are "cold" after posix_fadvise(DONTNEED) on every file (evicts them from
this machine's page cache without root; a VM's host may still cache them) and
"warm" on an immediate second pass.  Each measurement is repeated, raw and
cache interleaved, and the best run is reported.

    python bench/bench_target_cache.py --gb 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


import numpy as np  # noqa: E402
import torch  # noqa: E402

from deepspec.cache.format import format_bytes, sample_nbytes  # noqa: E402
from deepspec.cache.reader import TargetCache  # noqa: E402
from deepspec.cache.writer import TargetCacheWriter, finalize_target_cache  # noqa: E402


def make_pool(n, *, tokens, layers, hidden, seed=0):
    """A few random samples, reused with new source ordinals (random bytes: nothing compresses)."""
    g = torch.Generator().manual_seed(seed)
    pool = []
    for k in range(n):
        t = max(16, int(tokens * (0.5 + k / max(n - 1, 1))))  # lengths 0.5x .. 1.5x the mean
        pool.append(
            {
                "input_ids": torch.randint(0, 150000, (t,), generator=g, dtype=torch.int32),
                "loss_mask": torch.rand(t, generator=g) > 0.3,
                "hidden_states": torch.randint(
                    -32768, 32767, (t, layers * hidden), generator=g, dtype=torch.int16
                ).view(torch.bfloat16),
                "last_hidden_state": torch.randn(t, hidden, generator=g).bfloat16(),
            }
        )
    return pool


def drop_cache(paths):
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def write_cache(path, samples, pool, args):
    t0 = time.perf_counter()
    with TargetCacheWriter(
        path,
        target_model="bench",
        layer_ids=list(range(args.layers)),
        hidden_size=args.hidden,
        max_shard_bytes=args.shard_mb << 20,
    ) as w:
        for i in range(samples):
            w.add(source_index=i, **pool[i % len(pool)])
    t1 = time.perf_counter()
    finalize_target_cache(path)
    return t1 - t0, time.perf_counter() - t1


def read_cache(path, *, check=True):
    cache = TargetCache(path)
    cache.checks_samples = check
    scratch, n = np.empty(0, dtype=np.uint8), 0
    t0 = time.perf_counter()
    for i in range(len(cache)):
        for v in cache[i].values():
            if isinstance(v, torch.Tensor):
                b = v.reshape(-1).view(torch.uint8).numpy()
                if scratch.size < b.size:
                    scratch = np.empty(b.size * 2, dtype=np.uint8)
                np.copyto(scratch[: b.size], b)
                n += b.size
    dt = time.perf_counter() - t0
    cache.close()
    return dt, n


def shard_sizes(chunks, max_bytes):
    """The writer's packing rule: start a new shard when the next sample would not fit."""
    sizes = [0]
    for c in chunks:
        if sizes[-1] and sizes[-1] + c > max_bytes:
            sizes.append(0)
        sizes[-1] += c
    return sizes


def settle():
    """Let writeback from earlier steps (and deletes) finish so it is not billed to the next writer."""
    os.sync()
    time.sleep(0.5)


def write_raw(folder, file_sizes, chunks, data):
    """Same file sizes as the cache shards, one os.write per sample-sized chunk, fsync per file."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, it = [], iter(chunks)
    t0 = time.perf_counter()
    for k, size in enumerate(file_sizes):
        p = folder / f"raw{k}.bin"
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        left = size
        while left:
            n = min(next(it), left)
            mv = data[:n]
            while mv:
                mv = mv[os.write(fd, mv) :]
            left -= n
        os.fsync(fd)
        os.close(fd)
        paths.append(p)
    return time.perf_counter() - t0, paths


def read_raw(paths, chunk):
    buf = memoryview(bytearray(chunk))
    t0, n = time.perf_counter(), 0
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        while r := os.readv(fd, [buf]):
            n += r
        os.close(fd)
    return time.perf_counter() - t0, n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.0, help="cache size to write (GiB)")
    ap.add_argument("--dir", default=None, help="folder to benchmark in (default: a temp dir under /tmp)")
    ap.add_argument("--tokens", type=int, default=1024, help="mean sample length")
    ap.add_argument("--hidden", type=int, default=1024, help="hidden size of the stored states (default: 1024)")
    ap.add_argument("--layers", type=int, default=3, help="captured layers per sample (default: 3)")
    ap.add_argument("--shard-mb", type=int, default=256, help="shard size in MiB (default: 256)")
    ap.add_argument("--repeats", type=int, default=3, help="timed read passes (default: 3)")
    args = ap.parse_args()

    pool = make_pool(8, tokens=args.tokens, layers=args.layers, hidden=args.hidden)
    width = args.layers * args.hidden
    per = [sample_nbytes(len(s["input_ids"]), hidden_width=width, hidden_size=args.hidden) for s in pool]
    samples = max(1, int(args.gb * (1 << 30) / (sum(per) / len(per))))
    root = Path(tempfile.mkdtemp(prefix="bench_target_cache_", dir=args.dir))
    data = memoryview(np.random.default_rng(0).integers(0, 256, max(per), dtype=np.uint8).tobytes())
    print(
        f"{samples} samples, mean {args.tokens} tokens, {args.layers} layers x hidden {args.hidden}, "
        f"shards {args.shard_mb} MiB, in {root}"
    )
    chunks = [per[i % len(per)] for i in range(samples)]
    sizes = shard_sizes(chunks, args.shard_mb << 20)
    res = {
        k: []
        for k in (
            "raw write",
            "cache write",
            "raw read cold",
            "cache read cold",
            "unchecked read cold",
            "raw read warm",
            "cache read warm",
            "unchecked read warm",
        )
    }
    try:
        for rep in range(args.repeats):
            cpath, rpath = root / f"cache{rep}", root / f"raw{rep}"
            t = {}
            # Alternate which side goes first: on a VM disk, position effects are as large as the difference.
            for side in ("cache", "raw") if rep % 2 == 0 else ("raw", "cache"):
                settle()
                if side == "cache":
                    t["cache"], t_fin = write_cache(cpath, samples, pool, args)
                else:
                    t["raw"], raw_paths = write_raw(rpath, sizes, chunks, data)
            shards = sorted(cpath.glob("rank*.bin"))
            assert [p.stat().st_size for p in shards] == sizes, "shard packing differs from the writer's"
            for side in ("cache", "raw"):
                res[f"{side} write"].append(sum(sizes) / t[side])
            for side in ("cache", "unchecked", "raw") if rep % 2 == 0 else ("raw", "unchecked", "cache"):
                fn = {
                    "cache": lambda: read_cache(cpath),
                    "unchecked": lambda: read_cache(cpath, check=False),
                    "raw": lambda: read_raw(raw_paths, max(per)),
                }[side]
                drop_cache(shards + raw_paths)
                dt, n = fn()
                res[f"{side} read cold"].append(n / dt)
                dt, n = fn()
                res[f"{side} read warm"].append(n / dt)
            print(
                f"  run {rep}: "
                + ", ".join(f"{k} {v[-1] / 1e6:.0f}" for k, v in res.items())
                + f" MB/s (finalize {t_fin * 1e3:.0f} ms)"
            )
            # Files are kept until the end: on this thin-provisioned VM disk, writing into blocks just freed
            # by a delete runs 3-5x faster than into fresh ones, which would favour whoever writes second.
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(
        f"\n{format_bytes(sum(sizes))} per run, {args.repeats} runs (MB = 1e6 bytes); "
        "write = until fsynced, cache write includes checksums and renames"
    )
    print(f"{'':12}{'raw best':>10}{'cache best':>12}{'ratio':>7}{'raw median':>12}{'cache median':>14}{'ratio':>7}")
    for what in ("write", "read cold", "read warm"):
        raw, cache = res[f"raw {what}"], res[f"cache {what}"]
        rb, cb, rm, cm = max(raw), max(cache), float(np.median(raw)), float(np.median(cache))
        print(f"{what:12}{rb / 1e6:10.0f}{cb / 1e6:12.0f}{cb / rb:7.0%}{rm / 1e6:12.0f}{cm / 1e6:14.0f}{cm / rm:7.0%}")
    for what in ("read cold", "read warm"):
        checked, unchecked = float(np.median(res[f"cache {what}"])), float(np.median(res[f"unchecked {what}"]))
        print(
            f"per-sample crc32 check, {what}: {checked / 1e6:.0f} vs {unchecked / 1e6:.0f} MB/s unchecked "
            f"(median), {unchecked / checked - 1:+.0%} time"
        )


if __name__ == "__main__":
    main()
