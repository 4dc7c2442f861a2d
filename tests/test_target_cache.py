import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from deepspec.cache import writer as tc
from deepspec.cache.format import (
    CacheCompatibilityError,
    TargetCacheError,
    committed_source_indices,
    estimate_cache_bytes,
    format_bytes,
)
from deepspec.cache.reader import TargetCache
from deepspec.cache.writer import TargetCacheWriteError, TargetCacheWriter, finalize_target_cache
from tinyrun import CACHE_META, cache_sample

REPO = Path(__file__).resolve().parents[1]
LAYERS, H = CACHE_META["layer_ids"], CACHE_META["hidden_size"]


def assert_same(got, want):
    assert torch.equal(got["input_ids"], want["input_ids"].long())
    assert torch.equal(got["loss_mask"], want["loss_mask"].bool())
    for k in ("hidden_states", "last_hidden_state"):
        assert got[k].dtype == torch.bfloat16 and got[k].shape == want[k].shape
        assert torch.equal(got[k].view(torch.int16), want[k].view(torch.int16)), k


def build(path, indices, *, rank=0, finalize=True, **kw):
    kw.setdefault("max_shard_bytes", 4096)
    with TargetCacheWriter(path, rank=rank, **CACHE_META, **kw) as w:
        for i in indices:
            w.add(source_index=i, **cache_sample(i))
    return finalize_target_cache(path) if finalize else None


def all_samples(cache):
    return [cache[i] for i in range(len(cache))]


def test_round_trip_multiple_shards(tmp_path):
    manifest = build(tmp_path, range(40), source_files=["a.jsonl"], max_queue_bytes=2000)
    assert len(manifest["shards"]) > 3
    cache = TargetCache(tmp_path, verify=True)
    assert len(cache) == 40 == manifest["num_samples"]
    assert manifest["source_files"] == ["a.jsonl"]
    assert manifest["total_tokens"] == sum(len(cache_sample(i)["input_ids"]) for i in range(40))
    assert manifest["total_loss_tokens"] == sum(int(cache_sample(i)["loss_mask"].sum()) for i in range(40))
    assert cache.lengths.tolist() == [len(cache_sample(i)["input_ids"]) for i in range(40)]
    for i in range(40):
        got = cache[i]
        assert got["source_index"] == i
        assert_same(got, cache_sample(i))
        assert got["hidden_states"].data_ptr() % 64 == 0 and got["last_hidden_state"].data_ptr() % 64 == 0
    assert_same(cache[-1], cache_sample(39))
    with pytest.raises(IndexError):
        cache[40]
    # Tensors are private copy-on-write views: writing to them leaves the file alone.
    cache[0]["hidden_states"].zero_()
    assert_same(TargetCache(tmp_path, verify=True)[0], cache_sample(0))
    # Picklable for DataLoader workers (maps reopen lazily).
    assert_same(pickle.loads(pickle.dumps(cache))[5], cache_sample(5))
    assert manifest["shards"][0]["file"] in repr(os.listdir(tmp_path))
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_input_forms_numpy_and_layer_stack(tmp_path):
    s = cache_sample(3)
    t = len(s["input_ids"])
    with TargetCacheWriter(tmp_path, **CACHE_META) as w:
        # numpy ids/mask, bf16 as raw int16 bits, [T, n, H] hidden, batch dim 1 on the last state.
        assert w.add(
            source_index=0,
            input_ids=s["input_ids"].numpy(),
            loss_mask=s["loss_mask"].numpy(),
            hidden_states=s["hidden_states"].view(torch.int16).numpy().reshape(t, len(LAYERS), H),
            last_hidden_state=s["last_hidden_state"][None],
        )
        # float32 hidden is converted to bf16 (finite values: NaN payloads need not survive a round trip).
        s1 = {**s, "hidden_states": torch.randn(t, len(LAYERS) * H).bfloat16()}
        assert w.add(
            source_index=1,
            input_ids=s1["input_ids"],
            loss_mask=s1["loss_mask"].to(torch.uint8) * 7,
            hidden_states=s1["hidden_states"].float(),
            last_hidden_state=s1["last_hidden_state"].float(),
        )
        assert not w.add(source_index=1, **s)  # duplicate in the same run: skipped
        with pytest.raises(ValueError, match=r"last_hidden_state .*shape"):
            w.add(source_index=2, **{**s, "last_hidden_state": s["last_hidden_state"][:, :8]})
    finalize_target_cache(tmp_path)
    cache = TargetCache(tmp_path)
    assert_same(cache[0], s)
    assert_same(cache[1], s1)


def test_two_ranks_one_folder_sorted_by_source(tmp_path):
    ranks = [list(range(0, 30, 2)), list(range(1, 30, 2))]
    threads = [
        threading.Thread(target=build, args=(tmp_path, idx), kwargs={"rank": r, "finalize": False})
        for r, idx in enumerate(ranks)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    manifest = finalize_target_cache(tmp_path, expected_num_samples=30)
    assert {s["file"][:9] for s in manifest["shards"]} == {"rank00000", "rank00001"}
    cache = TargetCache(tmp_path, verify=True)
    assert cache.source_indices.tolist() == list(range(30))
    single = tmp_path / "single"
    build(single, range(30), max_shard_bytes=1 << 20)
    for a, b in zip(all_samples(cache), all_samples(TargetCache(single))):
        assert_same(a, b)


CRASH_SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
from tinyrun import CACHE_META, cache_sample
from deepspec.cache.writer import TargetCacheWriter
w = TargetCacheWriter({path!r}, **CACHE_META, max_shard_bytes=4096)
for i in range(25):
    w.add(source_index=i, **cache_sample(i))
w.flush()   # all on disk, the last shard still open
os._exit(1)  # killed: no close(), no finalize
"""


def test_crash_then_resume_equals_uninterrupted(tmp_path):
    path = tmp_path / "cache"
    script = CRASH_SCRIPT.format(tests=str(REPO / "tests"), path=str(path))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert not (path / "manifest.json").exists()
    assert [p for p in os.listdir(path) if p.endswith(".tmp")]  # the open shard was left behind
    with pytest.raises(TargetCacheError, match="incomplete cache.*re-run the build to resume"):
        TargetCache(path)
    done = committed_source_indices(path)
    assert done and done < set(range(25)) and done == set(range(len(done)))

    with TargetCacheWriter(path, **CACHE_META, max_shard_bytes=4096) as w:
        assert not [p for p in os.listdir(path) if p.endswith(".tmp")]  # leftovers removed on resume
        assert w.committed == done
        added = [i for i in range(40) if w.add(source_index=i, **cache_sample(i))]
    assert added == [i for i in range(40) if i not in done]
    finalize_target_cache(path, expected_num_samples=40)
    cache = TargetCache(path, verify=True)
    assert cache.manifest["duplicates_dropped"] == 0
    assert cache.source_indices.tolist() == list(range(40))
    clean = tmp_path / "clean"
    build(clean, range(40))
    for a, b in zip(all_samples(cache), all_samples(TargetCache(clean))):
        assert_same(a, b)


def test_finalize_requires_all_samples_and_refuses_reopen(tmp_path):
    build(tmp_path, range(5), finalize=False)
    with pytest.raises(TargetCacheError, match="5 committed samples but 6 were expected.*resume"):
        finalize_target_cache(tmp_path, expected_num_samples=6)
    finalize_target_cache(tmp_path)
    with pytest.raises(TargetCacheError, match="already a finalized"):
        TargetCacheWriter(tmp_path, **CACHE_META)
    with pytest.raises(TargetCacheError, match="no target cache"):
        TargetCache(tmp_path / "nothing")


def _shard(path, k=0):
    return path / json.loads((path / "manifest.json").read_text())["shards"][k]["file"]


def test_truncated_shard_detected(tmp_path):
    build(tmp_path, range(10))
    shard = _shard(tmp_path)
    os.truncate(shard, shard.stat().st_size - 10)
    with pytest.raises(TargetCacheError, match=r"rank00000\.shard000000\.bin.*truncated"):
        TargetCache(tmp_path)


def _flip(shard, at=100):
    data = bytearray(shard.read_bytes())
    data[at] ^= 0xFF
    shard.write_bytes(bytes(data))


def test_flipped_byte_caught_on_first_read(tmp_path):
    build(tmp_path, range(10))
    shard = _shard(tmp_path, 1)
    _flip(shard)  # in place: same size, only the checksum can tell
    cache = TargetCache(tmp_path)
    in_shard = [i for i in range(10) if cache.records["shard"][i] == 1]
    bad = next(i for i in in_shard if cache.records["offset"][i] <= 100)
    good = [i for i in range(10) if i != bad]
    for i in good:  # the other samples, in this shard and others, still read (and pass)
        assert_same(cache[i], cache_sample(i))
    with pytest.raises(TargetCacheError, match=rf"sample {bad} .*shard {shard} fails its checksum.*re-run the same"):
        cache[bad]
    with pytest.raises(TargetCacheError, match=rf"sample {bad} .*{shard.name}"):  # not marked good by a failure
        cache[bad]
    with pytest.raises(TargetCacheError, match="fails its checksum"):
        TargetCache(tmp_path, verify=True)  # all samples at open


def test_each_sample_checked_once_across_workers(tmp_path, monkeypatch):
    from deepspec.cache import reader
    from deepspec.training.data import CacheDataset, StepSampler, build_loader

    build(tmp_path, range(12))
    cache = TargetCache(tmp_path)
    calls = []
    real = reader.zlib.crc32
    monkeypatch.setattr(reader.zlib, "crc32", lambda b, *a: calls.append(1) or real(b, *a))
    for _ in range(2):
        cache[3]
    assert len(calls) == 1
    monkeypatch.undo()
    # Marks set in DataLoader workers are shared: an epoch in 2 workers verifies everything, the next nothing.
    sampler = StepSampler(num_samples=12, seed=0, rank=0, world_size=1, local_batch_size=2, grad_accum=1)
    list(build_loader(CacheDataset(cache, columns=None), sampler, num_workers=2, pin_memory=False))
    assert bool(cache._verified.all())


def test_corrupt_sample_in_a_loader_worker_says_one_clear_line(tmp_path):
    from deepspec.training.data import CacheDataset, StepSampler, build_loader

    build(tmp_path, range(12))
    shard = _shard(tmp_path, 0)
    _flip(shard, at=10)
    sampler = StepSampler(num_samples=12, seed=0, rank=0, world_size=1, local_batch_size=4, grad_accum=1)
    loader = build_loader(CacheDataset(TargetCache(tmp_path), columns=None), sampler, num_workers=1, pin_memory=False)
    with pytest.raises(TargetCacheError) as err:
        list(loader)
    assert str(err.value).startswith("sample ") and "Traceback" not in str(err.value), str(err.value)
    assert shard.name in str(err.value)


def test_version1_cache_is_read_with_a_warning(tmp_path):
    build(tmp_path, range(4))
    mpath = tmp_path / "manifest.json"
    m = json.loads(mpath.read_text())
    m["format_version"] = 1
    for key in ("target_fingerprint", "max_length", "sample_checksum"):
        m.pop(key)
    mpath.write_text(json.dumps(m))
    _flip(_shard(tmp_path, 0))
    with pytest.warns(UserWarning, match="older DeepSpec.*only the target's folder name.*--overwrite"):
        cache = TargetCache(tmp_path)
    cache[0]  # no per-sample checksums in version 1: nothing to check against
    cache.check_compatible(target_model="/elsewhere/Qwen3-tiny", layer_ids=LAYERS)  # names only
    with pytest.raises(CacheCompatibilityError, match="the target"):
        cache.check_compatible(target_model="/elsewhere/Qwen3-8B")


def test_index_truncated_or_corrupt(tmp_path):
    build(tmp_path, range(10))
    index = tmp_path / "index.bin"
    raw = index.read_bytes()
    index.write_bytes(raw[:-8])
    with pytest.raises(TargetCacheError, match=r"index .* expected 10 records"):
        TargetCache(tmp_path)
    # Right size, offset pushed past the shard end (checksum updated, so only the bounds check can catch it).
    recs = np.frombuffer(raw, dtype=tc.RECORD_DTYPE).copy()
    recs["offset"][3] += 1 << 20
    index.write_bytes(recs.tobytes())
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["index"]["crc32"] = tc.zlib.crc32(recs.tobytes())
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(TargetCacheError, match="record 3 .* outside its shard"):
        TargetCache(tmp_path)


def test_corrupt_index_part_refused_by_finalize(tmp_path):
    build(tmp_path, range(10), finalize=False)
    part = sorted(tmp_path.glob("*.idx"))[0]
    raw = bytearray(part.read_bytes())
    raw[-3] ^= 1
    part.write_bytes(bytes(raw))
    with pytest.raises(TargetCacheError, match=r"shard000000\.idx is corrupt.*re-run the build"):
        finalize_target_cache(tmp_path)


def test_check_compatible_messages(tmp_path):
    build(tmp_path, range(3))
    cache = TargetCache(tmp_path)
    cache.check_compatible(**CACHE_META)
    cache.check_compatible(target_model="/models/Qwen3-tiny", layer_ids=(1, 3, 5), hidden_size=16)
    with pytest.raises(
        CacheCompatibilityError,
        match=r"built with target_model='Qwen/Qwen3-tiny', this run has "
        r"'Qwen/Qwen3-8B'; .*prepare_target_cache.py",
    ):
        cache.check_compatible(target_model="Qwen/Qwen3-8B")
    with pytest.raises(
        CacheCompatibilityError, match=r"layer_ids=\[1, 3, 5\], this run has \[1, 2\].*target_layer_ids"
    ):
        cache.check_compatible(layer_ids=[1, 2])
    with pytest.raises(CacheCompatibilityError, match="hidden_size=16, this run has 32; "):
        cache.check_compatible(hidden_size=32)


def test_resume_with_other_layers_refused(tmp_path):
    build(tmp_path, range(3), finalize=False)
    with pytest.raises(CacheCompatibilityError, match="layer_ids"):
        TargetCacheWriter(tmp_path, target_model="Qwen/Qwen3-tiny", layer_ids=[2], hidden_size=H)


def _src(path, sha):
    return {"path": path, "size": 10, "sha256": sha * 64}


def test_identity_fields_compared_with_old_and_new_values(tmp_path):
    ident = dict(
        target_fingerprint="dstf1:" + "a" * 64,
        max_length=512,
        source_files=[_src("/d/a.jsonl", "1")],
        extra={"chat_template": "qwen3"},
    )
    build(tmp_path, range(3), finalize=False, **ident)
    # The same build resumes, whatever the target folder is called now (the fingerprint decides).
    TargetCacheWriter(tmp_path, **{**CACHE_META, "target_model": "/copy/of/it"}, **ident).close()
    cases = [
        (
            {"target_fingerprint": "dstf1:" + "b" * 64},
            r"differs in the target \(config or weights\).*fingerprint "
            r"aaaaaaaaaaaa\).*fingerprint bbbbbbbbbbbb",
        ),
        ({"max_length": 1024}, r"differs in max_length: it was built with data.max_length=512, this run has 1024"),
        (
            {"source_files": [_src("/d/b.jsonl", "2")]},
            r"training data: .*/d/a.jsonl .*sha256 111111111111.*"
            r"this run has \[/d/b.jsonl",
        ),
        ({"extra": {"chat_template": "gemma4"}}, r"chat_template='qwen3', this run has 'gemma4'"),
    ]
    for change, message in cases:
        with pytest.raises(CacheCompatibilityError, match=message + ".*--overwrite"):
            TargetCacheWriter(tmp_path, **CACHE_META, **{**ident, **change})
    manifest = finalize_target_cache(tmp_path)
    assert manifest["target_fingerprint"] == ident["target_fingerprint"] and manifest["max_length"] == 512
    assert manifest["source_files"] == ident["source_files"] and manifest["sample_checksum"] == "crc32"
    with pytest.raises(CacheCompatibilityError, match="max_length"):
        tc.check_build_folder(tmp_path, {**CACHE_META, **ident, "max_length": 4})
    assert tc.check_build_folder(tmp_path, {**CACHE_META, **ident}) == "complete"


def test_background_error_surfaces(tmp_path, monkeypatch):
    def disk_full(fd, bufs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tc, "_writev_all", disk_full)
    w = TargetCacheWriter(tmp_path, **CACHE_META)
    w.add(source_index=0, **cache_sample(0))
    with pytest.raises(TargetCacheWriteError, match="No space left on device.*resumes after the last committed"):
        w.flush()
    with pytest.raises(TargetCacheWriteError):
        w.add(source_index=1, **cache_sample(1))
    with pytest.raises(TargetCacheWriteError):
        w.close()
    assert committed_source_indices(tmp_path) == set()


def test_estimate_and_format():
    n = estimate_cache_bytes(num_samples=1000, avg_tokens=2048, num_layers=5, hidden_size=4096)
    core = 1000 * 2048 * (6 * 4096 * 2 + 5)
    assert core <= n < core * 1.001
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.50 KiB"
    assert format_bytes(3 * 1024**4) == "3.00 TiB"
    # The estimate matches what the writer really produces (within padding).
    assert tc.sample_nbytes(100, hidden_width=3 * 16, hidden_size=16) == 448 + 128 + 9600 + 3200


def test_half_committed_shards_are_redone(tmp_path):
    build(tmp_path, range(20), finalize=False)
    idx = sorted(tmp_path.glob("*.idx"))
    idx[0].unlink()  # as if killed between renaming the .bin and the .idx
    idx[1].with_suffix(".bin").unlink()  # as if a user deleted a corrupt shard to have it rebuilt
    lost = set(range(20)) - committed_source_indices(tmp_path)
    assert lost and 0 in lost
    with TargetCacheWriter(tmp_path, **CACHE_META, max_shard_bytes=4096) as w:
        redone = [i for i in range(20) if w.add(source_index=i, **cache_sample(i))]
    assert set(redone) == lost
    finalize_target_cache(tmp_path, expected_num_samples=20)
    cache = TargetCache(tmp_path, verify=True)
    for i in range(20):
        assert_same(cache[i], cache_sample(i))
