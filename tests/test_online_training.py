"""Online training (issue 12): the target run live feeds the draft exactly what the cache would.

On the CPU in fp32 a cache built with batch size 1 and the online producer (one target forward per
micro-batch of one sample, train.local_batch_size=1 as in the paper recipes) capture bit-identical states,
both rounded to bf16, so every logged loss of a 30-step run with 2 gloo workers agrees.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deepspec.launch import LAUNCH_ENV_VARS
from deepspec.run_config import load_config
from deepspec.cache.build import build_target_cache
from deepspec.tiny_target import build_random_tiny_target
from deepspec.training.metrics import read_metrics
from tinyrun import TINY_SIZES

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "dspark": "config/dspark/dspark_tiny.py",
    "dflash": "config/dflash/dflash_tiny.py",
    "eagle3": "config/eagle3/eagle3_tiny.py",
}
LAYERS = [-1, 1]
STEPS = 30


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("online")
    target = build_random_tiny_target(
        output_dir=base / "target",
        seed=0,
        **TINY_SIZES,
    )
    rows = []
    for i in range(40):
        turns = [
            {"role": "user", "content": f"def f{i}(x):"},
            {"role": "assistant", "content": "    return x" + " + x" * (i % 5 + 4) + f"  # {i}"},
        ]
        rows.append(json.dumps({"id": f"c{i}", "conversations": turns}))
    rows.append(
        json.dumps(
            {
                "id": "short",
                "conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}],
            }
        )
    )
    data = base / "regen.jsonl"
    data.write_text("\n".join(rows) + "\n")
    cfg = load_config(
        ROOT / CONFIGS["dspark"], opts=[f"model.target_model_name_or_path={target}", f"model.target_layer_ids={LAYERS}"]
    )
    build_target_cache(
        cfg=cfg,
        train_data_paths=[str(data)],
        output_dir=base / "cache",
        min_loss_tokens=int(cfg.data.min_loss_tokens),
        max_shard_bytes=1 << 24,
        batch_size=1,
        nproc=1,
        device="cpu",
        log=lambda _: None,
    )
    return {"base": base, "target": str(target), "cache": str(base / "cache"), "data": str(data)}


def opts_for(setup, algo, out):
    layers = [1] if algo == "eagle3" else LAYERS
    opts = [
        f"model.target_model_name_or_path={setup['target']}",
        f"model.target_layer_ids={layers}",
        "model.num_draft_layers=1",
        "train.local_batch_size=1",
        "train.global_batch_size=4",
        f"train.max_train_steps={STEPS}",
        "train.precision=fp32",
        "logging.logging_steps=1",
        "logging.checkpointing_steps=100",
        f"logging.checkpoint_dir={out}",
        f"logging.tensorboard_dir={out}/tb",
    ]
    opts.append("model.ttt_length=3" if algo == "eagle3" else "model.num_anchors=8")
    return opts


def train_cmd(setup, algo, out, *source, extra=()):
    """train.py with 2 gloo workers (spawned workers need an importable entry point, hence the CLI)."""
    return [
        sys.executable,
        "train.py",
        "--config",
        str(ROOT / CONFIGS[algo]),
        *source,
        "--nproc",
        "2",
        "--device",
        "cpu",
        "--no-progress",
        "--opts",
        *opts_for(setup, algo, out),
        *extra,
    ]


CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV_VARS}


def train_cli(setup, algo, out, *source, extra=()):
    subprocess.run(train_cmd(setup, algo, out, *source, extra=extra), cwd=ROOT, env=CLEAN_ENV, check=True, timeout=900)


def losses(out):
    return [r["loss"] for r in read_metrics(Path(out) / "metrics.jsonl")]


@pytest.mark.parametrize("algo", ["dspark", "dflash", "eagle3"])
def test_online_equals_offline_with_two_gloo_workers(setup, algo, tmp_path):
    off, on = tmp_path / "off", tmp_path / "on"
    train_cli(setup, algo, off, "--target-cache-dir", setup["cache"])
    train_cli(setup, algo, on, "--online", "--train-data-path", setup["data"])
    a, b = losses(off), losses(on)
    assert len(a) == len(b) == STEPS
    rel = max(abs(x - y) / abs(x) for x, y in zip(a, b))
    print(f"[online==offline] {algo}: max relative loss difference {rel:.3e} over {STEPS} steps")
    assert rel < 1e-6, (algo, a, b)
    recs = read_metrics(on / "metrics.jsonl")
    assert all(r["target_forward_s"] > 0 for r in recs)


def test_sharded_target_equals_offline(setup, tmp_path):
    """train.target_sharding: FSDP2 splits the frozen target over the 2 gloo ranks; gathering is exact."""
    off, on = tmp_path / "off", tmp_path / "on"
    few = ("train.max_train_steps=8",)
    train_cli(setup, "dspark", off, "--target-cache-dir", setup["cache"], extra=few)
    train_cli(
        setup, "dspark", on, "--online", "--train-data-path", setup["data"], extra=few + ("train.target_sharding=True",)
    )
    assert losses(on) == losses(off) and len(losses(on)) == 8


def test_online_resume_after_kill_equals_uninterrupted(setup, tmp_path):
    """kill -9 of the whole run between checkpoints, then the same command again: the same losses and weights."""
    from safetensors.torch import load_file

    full, cut = tmp_path / "full", tmp_path / "cut"
    online = ("--online", "--train-data-path", setup["data"])
    extra = ("train.max_train_steps=12", "logging.checkpointing_steps=4")
    train_cli(setup, "dspark", full, *online, extra=extra)
    private_tmp = tmp_path / "tmp"  # a killed launcher leaves its rendezvous folder behind: keep it here
    private_tmp.mkdir()
    proc = subprocess.Popen(
        train_cmd(setup, "dspark", cut, *online, extra=extra),
        cwd=ROOT,
        env={**CLEAN_ENV, "TMPDIR": str(private_tmp)},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        metrics = cut / "metrics.jsonl"
        while proc.poll() is None and not (metrics.exists() and len(losses(cut)) >= 6):
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # launcher and both workers, no clean-up of any kind
    finally:
        proc.wait(timeout=60)
    assert 6 <= len(losses(cut)) < 12
    train_cli(setup, "dspark", cut, *online, extra=extra)
    assert losses(cut) == losses(full)
    a, b = load_file(full / "step_12" / "model.safetensors"), load_file(cut / "step_12" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
