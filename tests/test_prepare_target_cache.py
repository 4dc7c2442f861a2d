"""The cache build: hidden states read back equal a direct transformers forward; crash + resume."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from deepspec.config import load_config
from deepspec.data.cache_build import build_target_cache
from deepspec.data.chat import tokenize_conversation
from deepspec.data.target_cache import TargetCache, TargetCacheError
from deepspec.tiny_target import build_random_tiny_target

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [-1, 0, 2]


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory):
    return build_random_tiny_target(output_dir=tmp_path_factory.mktemp("random_target"), seed=0)


def write_data(path: Path, n: int = 9) -> Path:
    rows = []
    for i in range(n):
        turns = [{"from": "human", "value": f"def f{i}(x):"}, {"from": "gpt", "value": "    return x" + " + x" * (i * 3)}]
        if i % 4 == 0:  # a multi-turn one
            turns += [{"from": "human", "value": "again"}, {"from": "gpt", "value": "    pass  # " + "y" * i}]
        rows.append(json.dumps({"id": f"c{i}", "conversations": turns}))
    rows.insert(3, "{not json")
    rows.insert(5, json.dumps({"id": "bad", "conversations": [{"role": "assistant", "content": "hi"}]}))
    path.write_text("\n".join(rows) + "\n")
    return path


def config_for(target_dir):
    return load_config(ROOT / "config/dspark/dspark_tiny.py",
                       opts=[f"model.target_model_name_or_path={target_dir}", f"model.target_layer_ids={LAYERS}"])


def build(tmp_path, target_dir, out_name="cache", **kwargs):
    data = write_data(tmp_path / "train.jsonl")
    logs = []
    manifest = build_target_cache(cfg=config_for(target_dir), train_data_paths=[str(data)],
                                  output_dir=tmp_path / out_name, min_loss_tokens=2, max_shard_bytes=200_000,
                                  batch_size=3, log=logs.append, **kwargs)
    return manifest, logs


def test_cache_equals_direct_forward(tmp_path, target_dir):
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
        conv = [{"role": "user", "content": f"def f{i}(x):"}, {"role": "assistant", "content": "    return x" + " + x" * (i * 3)}]
        if i % 4 == 0:
            conv += [{"role": "user", "content": "again"}, {"role": "assistant", "content": "    pass  # " + "y" * i}]
        tok = tokenize_conversation(tokenizer, conv, chat_template="qwen3", max_length=512)
        assert sample["input_ids"].tolist() == tok.input_ids
        assert sample["loss_mask"].tolist() == tok.loss_mask
        with torch.no_grad():
            out = model(torch.tensor([tok.input_ids]), output_hidden_states=True)
        for j, layer in enumerate(LAYERS):
            ref = out.hidden_states[layer + 1][0]
            got = sample["hidden_states"][:, j * H:(j + 1) * H].float()
            assert sample["hidden_states"].dtype == torch.bfloat16
            torch.testing.assert_close(got, ref, rtol=1.6e-2, atol=1e-2)  # bf16 rounding (8 bits of mantissa)
        torch.testing.assert_close(sample["last_hidden_state"].float(), out.hidden_states[-1][0], rtol=1.6e-2, atol=1e-2)
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
    with pytest.raises(SystemExit, match="not enough disk space"):
        build(tmp_path, target_dir)
    manifest, _ = build(tmp_path, target_dir, ignore_disk_space=True)
    assert TargetCache(tmp_path / "cache").manifest["layer_ids"] == LAYERS


def test_long_samples_truncate_skip_or_fail(tmp_path, target_dir):
    from deepspec.data.cache_build import tokenize_training_data
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
