"""estimate_target_cache_size.py's online rows: 0 bytes on disk, 2 x non-embedding params x tokens per step.

Every number is checked against a value computed by hand in the test (not by the script's own formulas).
Successful runs call ``main`` in this process; refusals run the script in a subprocess like a user would.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from badinput import ROOT, refused, run_entry
from deepspec.tiny_models import sizes

ESTIMATE = "scripts/data/estimate_target_cache_size.py"
_spec = importlib.util.spec_from_file_location("entry_estimate_online", ROOT / ESTIMATE)
estimate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(estimate)

# 2 layers; q, o: 64 x (4 x 16) = 4,096 each; k, v: 64 x (2 x 16) = 2,048 each -> attention 12,288;
# MLP gate/up/down 3 x 64 x 128 = 24,576; per layer 36,864; 2 layers -> 73,728 non-embedding parameters.
SMALL = sizes(layers=2, hidden=64, heads=4, kv_heads=2, head_dim=16, vocab_size=1000, model_type="qwen3")
SMALL_PARAMS = 73_728


def write_model(tmp_path, cfg, name="model"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def rows(capsys, *args) -> dict[str, str]:
    code = estimate.main([str(a) for a in args])
    out = capsys.readouterr().out
    assert code == 0, out
    table = {}
    for line in out.splitlines():
        key, _, value = line.partition("  ")
        table[key.strip()] = value.strip()
    return table


def test_small_config_exact_numbers(tmp_path, capsys):
    model = write_model(tmp_path, SMALL)
    t = rows(
        capsys,
        "--num-samples",
        10,
        "--avg-tokens",
        100,
        "--num-layers",
        2,
        "--target-model",
        model,
        "--global-batch-size",
        4,
        "--epochs",
        3,
    )
    assert t["online: disk"].startswith("0 bytes")
    assert t["target params"].startswith("73,728 non-embedding (2 layers x (attention 12,288 + MLP 24,576)")
    # tokens per step: 4 samples x 100 tokens = 400
    assert t["online: tokens / step"].startswith("400 (global batch 4 x 100.0 tokens)")
    # steps: 10 // 4 = 2 per epoch, x 3 epochs = 6
    assert t["online: optimizer steps"].startswith("6 (10 samples // global batch 4 x 3 epoch(s))")
    # 2 x 73,728 x 400 = 58,982,400 FLOPs per step; x 6 steps = 353,894,400
    assert t["online: target fwd / step"].startswith("58,982,400 FLOPs (58.98 MFLOP;")
    assert t["online: target fwd / run"].startswith("353,894,400 FLOPs (353.89 MFLOP; 6 steps)")
    # the cache build runs the target once over 10 x 100 tokens: 2 x 73,728 x 1,000 = 147,456,000
    assert t["cache build forward"].startswith("147,456,000 FLOPs")
    # the cache rows are unchanged: hidden 64 read from the same config.json
    assert t["captured layers"] == "2 x hidden 64 (+ last hidden state)"
    assert t["bytes / token"] == f"{3 * 64 * 2 + 5:,}"


def test_defaults_batch_512_one_epoch_and_head_dim_from_heads(tmp_path, capsys):
    # no head_dim, no num_key_value_heads: head_dim = 64 / 4 = 16, kv heads = 4 (plain multi-head attention)
    cfg = {k: v for k, v in SMALL.items() if k not in ("head_dim", "num_key_value_heads")}
    model = write_model(tmp_path, cfg)
    t = rows(capsys, "--num-samples", 2048, "--avg-tokens", 10, "--num-layers", 1, "--target-model", model)
    # attention 4 x 64 x 64 = 16,384; MLP 24,576; per layer 40,960; x 2 = 81,920
    assert t["target params"].startswith("81,920 non-embedding (2 layers x (attention 16,384 + MLP 24,576)")
    assert t["online: tokens / step"].startswith("5,120 (global batch 512 x 10.0 tokens)")
    assert t["online: optimizer steps"].startswith("4 (2,048 samples // global batch 512 x 1 epoch(s))")
    assert t["online: target fwd / step"].startswith(f"{2 * 81_920 * 5_120:,} FLOPs")  # 838,860,800
    assert t["online: target fwd / run"].startswith(f"{2 * 81_920 * 5_120 * 4:,} FLOPs")  # 3,355,443,200


def test_text_config_of_a_multimodal_model(tmp_path, capsys):
    model = write_model(tmp_path, {"model_type": "vlm", "text_config": SMALL, "vision_config": {"hidden_size": 9}})
    t = rows(
        capsys,
        "--num-samples",
        8,
        "--avg-tokens",
        5,
        "--num-layers",
        1,
        "--target-model",
        model,
        "--global-batch-size",
        8,
    )
    assert t["target params"].startswith("73,728 non-embedding")
    assert t["online: target fwd / step"].startswith(f"{2 * SMALL_PARAMS * 40:,} FLOPs")  # 5,898,240


def test_target_params_given_qwen3_4b_scale(capsys):
    t = rows(
        capsys,
        "--num-samples",
        800_000,
        "--avg-tokens",
        2048,
        "--num-layers",
        5,
        "--hidden-size",
        2560,
        "--target-params",
        "3.6e9",
        "--epochs",
        10,
    )
    assert t["target params"] == "3,600,000,000 non-embedding (given)"
    # 512 x 2,048 = 1,048,576 tokens; 2 x 3.6e9 x 1,048,576 = 7,549,747,200,000,000 FLOPs
    assert t["online: target fwd / step"].startswith("7,549,747,200,000,000 FLOPs (7.55 PFLOP;")
    # 800,000 // 512 = 1,562 steps per epoch x 10 = 15,620 steps
    assert t["online: target fwd / run"].startswith(f"{7_549_747_200_000_000 * 15_620:,} FLOPs (117.93 EFLOP;")


def test_fewer_samples_than_a_batch_and_no_params(capsys):
    t = rows(capsys, "--num-samples", 100, "--avg-tokens", 10, "--num-layers", 1, "--hidden-size", 8)
    assert t["online: disk"].startswith("0 bytes")
    assert (
        t["online: optimizer steps"].startswith("0 (")
        and "fewer samples than --global-batch-size" in t["online: optimizer steps"]
    )
    assert "pass --target" in t["online: target forward"] and "--target-params" in t["online: target forward"]
    assert "target params" not in t


BAD = [
    (["--global-batch-size", "0"], "--global-batch-size: must be >= 1"),
    (["--global-batch-size", "2.5"], "--global-batch-size: expected an integer"),
    (["--epochs", "0"], "--epochs: must be >= 1"),
    (["--target-params", "0"], "--target-params: must be >= 1"),
    (["--target-params", "inf"], "--target-params: must be >= 1"),
]


@pytest.mark.parametrize("extra,needle", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_online_options(extra, needle):
    refused(
        run_entry(
            ESTIMATE, ["--num-samples", "5", "--avg-tokens", "10", "--num-layers", "2", "--hidden-size", "8", *extra]
        ),
        needle,
        code=2,
    )


def test_config_without_mlp_size_says_target_params(tmp_path):
    model = write_model(tmp_path, {k: v for k, v in SMALL.items() if k != "intermediate_size"})
    refused(
        run_entry(ESTIMATE, ["--num-samples", "5", "--avg-tokens", "10", "--num-layers", "2", "--target-model", model]),
        "no positive integer intermediate_size",
        "--target-params",
        code=2,
    )
