"""Shared by the training tests: a random tiny target, a learnable conversation file, a small cache."""

import json
from pathlib import Path

from deepspec.run_config import load_config
from deepspec.cache.build import build_target_cache
from deepspec.tiny_target import build_random_tiny_target

ROOT = Path(__file__).resolve().parents[1]
# Peaked (initializer_range 0.3) so a draft can learn it in a few steps.
TINY_SIZES = dict(
    num_hidden_layers=3,
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,
    initializer_range=0.3,
)


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


# The family-specific parts of the hand-sized tiny targets in test_targets.py and test_decoding.py (each
# test picks its own sizes).
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


def llama3_config(**sizes):
    """Llama 3: no q/k norms, Llama 3 rope scaling, untied LM head."""
    from transformers import LlamaConfig

    return LlamaConfig(**{"tie_word_embeddings": False, "rope_parameters": dict(LLAMA3_ROPE), **sizes})


def qwen3_moe_config(**sizes):
    """Qwen3-MoE: a sparse MoE MLP (4 experts, top 2) in every layer."""
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(**{"num_experts": 4, "num_experts_per_tok": 2, **sizes})


def qwen3_5_config(**sizes):
    """Qwen3.5: Gated DeltaNet (linear attention) layers, full attention every 2nd layer, partial rope."""
    from transformers import Qwen3_5TextConfig

    return Qwen3_5TextConfig(
        **{
            "full_attention_interval": 2,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 4,
            "linear_key_head_dim": 8,
            "linear_value_head_dim": 8,
            **sizes,
        }
    )


def qwen3_5_moe_config(**sizes):
    """Qwen3.5-MoE: the Qwen3.5 hybrid stack with a sparse MoE (4 experts, top 2) and a shared expert."""
    from transformers import Qwen3_5MoeTextConfig

    return Qwen3_5MoeTextConfig(
        **{
            "layer_types": ["linear_attention", "full_attention"] * 2,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 4,
            "linear_key_head_dim": 8,
            "linear_value_head_dim": 8,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 16,
            "shared_expert_intermediate_size": 16,
            **sizes,
        }
    )
