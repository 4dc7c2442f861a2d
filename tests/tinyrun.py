"""Shared by the training and cache tests: a random tiny target, a learnable conversation file, a small cache built
from them, and synthetic cache rows."""

import json
from pathlib import Path

import torch

from deepspec.run_config import load_config
from deepspec.cache.build import build_target_cache
from deepspec.tiny_models import sizes
from deepspec.tiny_target import build_random_tiny_target

ROOT = Path(__file__).resolve().parents[1]
# The random tiny targets of the run tests: 3 layers, hidden 64.
RUN_SIZES = sizes(layers=3, hidden=64, heads=2, kv_heads=1, head_dim=32)
# Peaked (initializer_range 0.3) so a draft can learn it in a few steps.
TINY_SIZES = dict(RUN_SIZES, initializer_range=0.3)


def learnable_conversations(path: Path, n: int) -> Path:
    """``n`` conversations whose answers repeat a short phrase (a pattern a draft learns quickly)."""
    rows = []
    for i in range(n):
        turns = [
            {"role": "user", "content": f"def f{i}(x):"},
            {"role": "assistant", "content": "    return x" + " + x" * (i % 5 + 4) + f"  # {i}"},
        ]
        rows.append(json.dumps({"id": f"c{i}", "conversations": turns}))
    path.write_text("\n".join(rows) + "\n")
    return path


def tiny_run(base: Path, *, layers: list[int], n: int, batch_size: int, family: str = "qwen3") -> dict:
    """A random tiny target of ``family``, ``n`` learnable conversations and their target cache under ``base``."""
    target = build_random_tiny_target(output_dir=base / "target", seed=0, family=family, **TINY_SIZES)
    data = learnable_conversations(base / "train.jsonl", n)
    cfg = load_config(
        ROOT / "config/dspark/dspark_tiny.py",
        opts=[f"model.target_model_name_or_path={target}", f"model.target_layer_ids={layers}"],
    )
    build_target_cache(
        cfg=cfg,
        train_data_paths=[str(data)],
        output_dir=base / "cache",
        min_loss_tokens=2,
        max_shard_bytes=1 << 24,
        batch_size=batch_size,
        log=lambda _: None,
    )
    return {"base": base, "target": str(target), "cache": str(base / "cache")}


# Synthetic cache rows (test_target_cache; its crash test writes them from a subprocess).
CACHE_META = dict(target_model="Qwen/Qwen3-tiny", layer_ids=[1, 3, 5], hidden_size=16)


def cache_sample(i: int) -> dict:
    """Row ``i``: its own length and loss mask, hidden states drawn as raw bf16 bits."""
    layers, hidden = len(CACHE_META["layer_ids"]), CACHE_META["hidden_size"]
    g = torch.Generator().manual_seed(1000 + i)
    t = 3 + (i * 7) % 29
    return {
        "input_ids": torch.randint(0, 50000, (t,), generator=g),
        "loss_mask": torch.rand(t, generator=g) > 0.4,
        # Random bit patterns cover every bf16 value class (NaN payloads, denormals, -0).
        "hidden_states": torch.randint(-32768, 32767, (t, layers * hidden), dtype=torch.int16, generator=g).view(
            torch.bfloat16
        ),
        "last_hidden_state": torch.randn(t, hidden, generator=g).bfloat16(),
    }
