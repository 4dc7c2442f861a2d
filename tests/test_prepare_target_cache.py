"""The cache build: hidden states read back equal a direct transformers forward; crash + resume."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from deepspec.run_config import load_config
from deepspec.cache.build import CacheBuildError, build_target_cache
from deepspec.data.chat import tokenize_conversation
from deepspec.cache.format import CacheCompatibilityError, TargetCacheError
from deepspec.cache.reader import TargetCache
from deepspec.tiny_target import build_random_tiny_target

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [-1, 0, 2]


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory):
    return build_random_tiny_target(output_dir=tmp_path_factory.mktemp("random_target"), seed=0)


def write_data(path: Path, n: int = 9) -> Path:
    rows = []
    for i in range(n):
        turns = [
            {"from": "human", "value": f"def f{i}(x):"},
            {"from": "gpt", "value": "    return x" + " + x" * (i * 3)},
        ]
        if i % 4 == 0:  # a multi-turn one
            turns += [{"from": "human", "value": "again"}, {"from": "gpt", "value": "    pass  # " + "y" * i}]
        rows.append(json.dumps({"id": f"c{i}", "conversations": turns}))
    rows.insert(3, "{not json")
    rows.insert(5, json.dumps({"id": "bad", "conversations": [{"role": "assistant", "content": "hi"}]}))
    path.write_text("\n".join(rows) + "\n")
    return path


def config_for(target_dir, *opts):
    return load_config(
        ROOT / "config/dspark/dspark_tiny.py",
        opts=[f"model.target_model_name_or_path={target_dir}", f"model.target_layer_ids={LAYERS}", *opts],
    )


def build(tmp_path, target_dir, out_name="cache", *, opts=(), data=None, **kwargs):
    data = data or write_data(tmp_path / "train.jsonl")
    logs = []
    manifest = build_target_cache(
        cfg=config_for(target_dir, *opts),
        train_data_paths=[str(data)],
        output_dir=tmp_path / out_name,
        min_loss_tokens=2,
        max_shard_bytes=200_000,
        batch_size=3,
        log=logs.append,
        **kwargs,
    )
    return manifest, logs


def test_cache_equals_direct_forward(tmp_path, target_dir, fp32_target):
    manifest, logs = build(tmp_path, target_dir)
    assert "malformed_json: 1" in "\n".join(logs) and "first_turn_not_user: 1" in "\n".join(logs)
    cache = TargetCache(tmp_path / "cache", verify=True)
    assert len(cache) == 9
    model = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(target_dir)
    H = model.config.hidden_size
    for i in range(len(cache)):
        sample = cache[i]
        # Independent reference: tokenize alone, unpadded forward with output_hidden_states.
        conv = [
            {"role": "user", "content": f"def f{i}(x):"},
            {"role": "assistant", "content": "    return x" + " + x" * (i * 3)},
        ]
        if i % 4 == 0:
            conv += [{"role": "user", "content": "again"}, {"role": "assistant", "content": "    pass  # " + "y" * i}]
        tok = tokenize_conversation(tokenizer, conv, chat_template="qwen3", max_length=512)
        assert sample["input_ids"].tolist() == tok.input_ids
        assert sample["loss_mask"].tolist() == tok.loss_mask
        with torch.no_grad():
            out = model(torch.tensor([tok.input_ids]), output_hidden_states=True)
        for j, layer in enumerate(LAYERS):
            ref = out.hidden_states[layer + 1][0]
            got = sample["hidden_states"][:, j * H : (j + 1) * H].float()
            assert sample["hidden_states"].dtype == torch.bfloat16
            torch.testing.assert_close(got, ref, rtol=1.6e-2, atol=1e-2)  # bf16 rounding (8 bits of mantissa)
        torch.testing.assert_close(
            sample["last_hidden_state"].float(), out.hidden_states[-1][0], rtol=1.6e-2, atol=1e-2
        )
    assert len(list((tmp_path / "cache").glob("*.bin"))) > 2  # small max_shard_bytes -> several shards


def test_killed_build_resumes_without_duplicates(tmp_path, target_dir):
    with pytest.raises(RuntimeError, match="simulated crash"):
        build(tmp_path, target_dir, fail_after_batches=2)
    with pytest.raises(TargetCacheError, match="incomplete"):
        TargetCache(tmp_path / "cache")
    build(tmp_path, target_dir)  # same command again: resumes
    resumed = TargetCache(tmp_path / "cache", verify=True)
    build(tmp_path, target_dir, out_name="fresh")
    fresh = TargetCache(tmp_path / "fresh")
    assert len(resumed) == len(fresh) == 9
    for i in range(9):
        a, b = resumed[i], fresh[i]
        assert torch.equal(a["input_ids"], b["input_ids"])
        assert torch.equal(a["hidden_states"], b["hidden_states"])


def test_refuses_when_disk_is_too_small(tmp_path, target_dir, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(100, 99, 1))
    with pytest.raises(CacheBuildError, match="not enough disk space"):
        build(tmp_path, target_dir)
    manifest, _ = build(tmp_path, target_dir, ignore_disk_space=True)
    assert TargetCache(tmp_path / "cache").manifest["layer_ids"] == LAYERS


def test_long_samples_truncate_skip_or_fail(tmp_path, target_dir):
    from deepspec.cache.build import tokenize_training_data
    from deepspec.data.conversations import DataError

    data = write_data(tmp_path / "train.jsonl")
    tokenizer = AutoTokenizer.from_pretrained(target_dir)
    common = dict(tokenizer=tokenizer, chat_template="qwen3", max_length=24, min_loss_tokens=1)
    kept = tokenize_training_data([data], **common)
    assert kept.truncated > 0 and all(len(s.input_ids) <= 24 for s in kept.samples)
    skipped = tokenize_training_data([data], long_samples="skip", **common)
    assert skipped.report.counts["too_long"] == kept.truncated
    assert len(skipped.samples) == len(kept.samples) - kept.truncated
    with pytest.raises(DataError, match="longer than data.max_length=24"):
        tokenize_training_data([data], strict=True, **{**common, "min_loss_tokens": 1})


def fine_tuned_copy(target_dir, dest):
    """The same model (same config, same folder *name*) with changed weights, like a fine-tune."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(target_dir, dest)
    weights = load_file(dest / "model.safetensors")
    save_file({k: v + 0.01 for k, v in weights.items()}, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


def test_manifest_records_identity(tmp_path, target_dir):
    import hashlib

    from deepspec.target_files import target_fingerprint

    manifest, _ = build(tmp_path, target_dir)
    data = tmp_path / "train.jsonl"
    assert manifest["target_fingerprint"] == target_fingerprint(target_dir)
    assert manifest["layer_ids"] == LAYERS and manifest["max_length"] == 512
    assert manifest["source_files"] == [
        {
            "path": str(data.resolve()),
            "size": data.stat().st_size,
            "sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
        }
    ]
    assert manifest["extra"]["chat_template"] == "qwen3" and manifest["sample_checksum"] == "crc32"


def test_complete_cache_of_another_build_is_refused_not_nothing_to_do(tmp_path, target_dir):
    build(tmp_path, target_dir)
    cache = tmp_path / "cache"
    before = (cache / "manifest.json").read_text()
    _, logs = build(tmp_path, target_dir)
    assert "nothing to do" in "\n".join(logs)
    # Same folder name, other weights: the fingerprint tells them apart.
    ft = fine_tuned_copy(target_dir, tmp_path / "ft" / target_dir.name)
    with pytest.raises(CacheCompatibilityError, match=r"differs in the target \(config or weights\).*--overwrite"):
        build(tmp_path, ft)
    with pytest.raises(CacheCompatibilityError, match=r"layer_ids=\[-1, 0, 2\], this run has \[0, 1\]"):
        build(tmp_path, target_dir, opts=["model.target_layer_ids=[0, 1]"])
    with pytest.raises(CacheCompatibilityError, match=r"data.max_length=512, this run has 64"):
        build(tmp_path, target_dir, opts=["data.max_length=64"])
    other = write_data(tmp_path / "other.jsonl", n=6)
    with pytest.raises(
        CacheCompatibilityError,
        match=r"training data: it was built with \[.*train.jsonl.*this run "
        r"has \[.*other.jsonl",
    ):
        build(tmp_path, target_dir, data=other)
    assert (cache / "manifest.json").read_text() == before  # refusals leave the cache alone
    # The same file edited in place after the build (new content, same path) is another dataset too.
    with open(tmp_path / "train.jsonl", "a") as fh:
        fh.write(
            json.dumps(
                {
                    "id": "new",
                    "conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a" * 40}],
                }
            )
            + "\n"
        )
    with pytest.raises(CacheCompatibilityError, match="training data"):
        build_target_cache(
            cfg=config_for(target_dir),
            train_data_paths=[str(tmp_path / "train.jsonl")],
            output_dir=cache,
            min_loss_tokens=2,
            max_shard_bytes=200_000,
            batch_size=3,
            log=print,
        )
    manifest = build_target_cache(
        cfg=config_for(ft),
        train_data_paths=[str(other)],
        output_dir=cache,
        min_loss_tokens=2,
        max_shard_bytes=200_000,
        batch_size=3,
        overwrite=True,
        log=print,
    )
    assert (
        manifest["num_samples"] == 6
        and TargetCache(cache).manifest["target_fingerprint"] != json.loads(before)["target_fingerprint"]
    )


def test_resume_with_other_data_refused(tmp_path, target_dir):
    with pytest.raises(RuntimeError, match="simulated crash"):
        build(tmp_path, target_dir, fail_after_batches=1)
    other = write_data(tmp_path / "other.jsonl", n=5)
    with pytest.raises(CacheCompatibilityError, match=r"partial build .* differs in the training data.*other.jsonl"):
        build(tmp_path, target_dir, data=other)
    ft = fine_tuned_copy(target_dir, tmp_path / "ft" / target_dir.name)
    with pytest.raises(CacheCompatibilityError, match="differs in the target"):
        build(tmp_path, ft)
    manifest, _ = build(tmp_path, target_dir)  # the original command still resumes
    assert manifest["num_samples"] == 9


def test_trainer_side_check_uses_the_fingerprint(tmp_path, target_dir):
    import shutil

    build(tmp_path, target_dir)
    cache = TargetCache(tmp_path / "cache")
    copy = tmp_path / "copy" / "renamed"
    shutil.copytree(target_dir, copy)
    cache.check_compatible(target_model=str(copy), hidden_size=cache.hidden_size, max_length=512)  # same files
    ft = fine_tuned_copy(target_dir, tmp_path / "ft" / target_dir.name)
    with pytest.raises(CacheCompatibilityError, match=r"differs in the target.*--target-cache-dir"):
        cache.check_compatible(target_model=str(ft))
    with pytest.raises(CacheCompatibilityError, match=r"data.max_length=512, this run has 4096.*data.max_length=512"):
        cache.check_compatible(target_model=str(target_dir), max_length=4096)


def test_input_protection_and_overwrite_safety(tmp_path, target_dir):
    from deepspec.errors import InputProtectionError

    (tmp_path / "data").mkdir()
    data = write_data(tmp_path / "data" / "train.jsonl")
    common = dict(cfg=config_for(target_dir), min_loss_tokens=2, max_shard_bytes=200_000, batch_size=3, log=print)
    with pytest.raises(InputProtectionError, match="lies inside the input folder"):
        build_target_cache(train_data_paths=[str(tmp_path / "data")], output_dir=tmp_path / "data" / "cache", **common)
    with pytest.raises(InputProtectionError, match="contains the input"):
        build_target_cache(train_data_paths=[str(data)], output_dir=tmp_path, **common)
    with pytest.raises(InputProtectionError, match="inside the input folder"):
        build_target_cache(train_data_paths=[str(data)], output_dir=target_dir / "cache", **common)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(CacheBuildError, match=r"holds files that are not part of a target cache \(notes.txt\)"):
        build_target_cache(train_data_paths=[str(data)], output_dir=tmp_path / "mine", overwrite=True, **common)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_corrupt_shard_repaired_as_the_message_says(tmp_path, target_dir):
    build(tmp_path, target_dir)
    cache_dir = tmp_path / "cache"
    shard = sorted(cache_dir.glob("rank*.shard*.bin"))[1]
    raw = bytearray(shard.read_bytes())
    raw[5] ^= 0x10
    shard.write_bytes(bytes(raw))
    with pytest.raises(
        TargetCacheError,
        match=rf"{shard.name} fails its checksum.*delete manifest.json, {shard.name} "
        rf"and {shard.with_suffix('.idx').name}",
    ):
        TargetCache(cache_dir, verify=True)
    for p in (cache_dir / "manifest.json", shard, shard.with_suffix(".idx")):
        p.unlink()
    manifest, _ = build(tmp_path, target_dir)  # "re-run the same command": redoes that shard's samples only
    assert manifest["num_samples"] == 9
    TargetCache(cache_dir, verify=True)


def test_two_workers_build_the_same_cache(tmp_path, target_dir, fp32_target):
    """--nproc 2 (two launched worker processes, disjoint shards) stores exactly what one worker stores."""
    build(tmp_path, target_dir, "one")
    build(tmp_path, target_dir, "two", nproc=2)
    one, two = TargetCache(tmp_path / "one", verify=True), TargetCache(tmp_path / "two", verify=True)
    assert len(one) == len(two) == 9

    def by_tokens(cache):
        return {tuple(cache[i]["input_ids"].tolist()): cache[i] for i in range(len(cache))}

    a, b = by_tokens(one), by_tokens(two)
    assert a.keys() == b.keys()
    for key in a:  # other batch-mates, so other padding: at most one bf16 rounding step apart
        for name in ("hidden_states", "last_hidden_state"):
            torch.testing.assert_close(b[key][name].float(), a[key][name].float(), rtol=8e-3, atol=1e-5)
