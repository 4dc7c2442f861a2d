"""Llama 3, Qwen3-MoE and Qwen3.5 (hybrid Gated DeltaNet / attention) targets end to end.

Cache build, a few training steps, eval.py lossless greedy.

Each family is one entry of ``deepspec.targets.FAMILIES``; both draft with Qwen3-style dense layers of the
target's sizes (``TargetFamily.draft_family``). Capture == ``output_hidden_states`` is in test_targets.py and
lossless greedy decoding for every algorithm in test_decoding.py; this file runs the stages on saved tiny
random targets with the real tokenizer.
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import eval as eval_cli
from deepspec.run_config import load_config
from deepspec.models import load_draft
from deepspec.training.checkpoint import latest_checkpoint
from deepspec.training.metrics import read_metrics
from tinyrun import tiny_run

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("deepspec_train_entry", ROOT / "train.py")
train_entry = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_entry)
CONFIGS = {"dspark": "config/dspark/dspark_tiny.py", "eagle3": "config/eagle3/eagle3_tiny.py"}
LAYERS = [0, 1]


@pytest.fixture(scope="module", params=["llama3", "qwen3_moe", "qwen3_5"])
def family_setup(request, tmp_path_factory):
    family = request.param
    run = tiny_run(tmp_path_factory.mktemp(family), layers=LAYERS, n=24, batch_size=8, family=family)
    base = run["base"]
    data = base / "eval"
    data.mkdir()
    (data / "gsm8k.jsonl").write_text(json.dumps({"turns": ["def f3(x):"]}) + "\n")
    return {**run, "family": family, "data": data}


@pytest.mark.parametrize("algo", ["dspark", "eagle3"])
def test_train_then_eval_is_lossless(family_setup, algo, tmp_path):
    s = family_setup
    out = tmp_path / "ckpt"
    opts = [
        f"model.target_model_name_or_path={s['target']}",
        f"model.target_layer_ids={LAYERS}",
        "model.num_draft_layers=1",
        "train.local_batch_size=2",
        "train.global_batch_size=4",
        "train.max_train_steps=6",
        "logging.logging_steps=1",
        "logging.checkpointing_steps=6",
        f"logging.checkpoint_dir={out}",
        f"logging.tensorboard_dir={out}/tb",
    ]
    opts.append("model.ttt_length=3" if algo == "eagle3" else "model.num_anchors=8")
    cfg = load_config(ROOT / CONFIGS[algo], opts=opts)
    train_entry.run_training(cfg, cache_dir=s["cache"], device="cpu", progress=False)
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 7)) and all(r["loss"] == r["loss"] for r in records)
    step = latest_checkpoint(out)
    saved = json.loads((Path(step) / "config.json").read_text())
    # The draft is Qwen3-style whatever the target (what vLLM serves as Qwen3DSparkModel).
    assert saved["model_type"] == "qwen3"
    assert saved["architectures"] == ["Qwen3Eagle3Model" if algo == "eagle3" else "Qwen3DSparkModel"]
    assert saved["num_target_layers"] == 3 and saved["target_layer_ids"] == LAYERS
    target_cfg = json.loads((Path(s["target"]) / "config.json").read_text())
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "vocab_size",
    ):
        assert saved[key] == target_cfg[key], key
    assert load_draft(step).config.model_type == "qwen3"
    # Qwen3 layers rotate the whole head: a target's partial rotary factor must not reach the draft.
    assert "partial_rotary_factor" not in (saved.get("rope_parameters") or {})

    # eval.py: the draft fits this target, and greedy speculative output is the target's greedy output.
    res = tmp_path / "eval"
    assert (
        eval_cli.main(
            [
                "--target_name_or_path",
                s["target"],
                "--draft_name_or_path",
                str(step),
                "--eval-data-dir",
                str(s["data"]),
                "--tasks",
                "gsm8k",
                "--max-new-tokens",
                "12",
                "--temperature",
                "0",
                "--output-dir",
                str(res),
                "--save-outputs",
                "--no-progress",
                "--dtype",  # compared with an fp32 reference below (auto may pick bf16 by a probe)
                "fp32",
            ]
        )
        == 0
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deepspec.eval.runner import encode_prompt, stop_token_ids

    tok = AutoTokenizer.from_pretrained(s["target"])
    model = AutoModelForCausalLM.from_pretrained(s["target"], dtype=torch.float32).eval()
    [row] = [json.loads(line) for line in (res / "outputs.jsonl").read_text().splitlines()]
    ids = encode_prompt(tok, "def f3(x):")
    ref = model.generate(
        torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=stop_token_ids(tok, model), pad_token_id=0
    )[0, len(ids) :].tolist()
    assert row["token_ids"] == ref


def test_family_facts_live_in_one_entry():
    from deepspec.targets import FAMILIES, family_by_name

    llama, moe = family_by_name("llama3"), family_by_name("qwen3_moe")
    assert (llama.model_types, llama.mask_token_id, llama.end_of_turn, llama.draft_family) == (
        ("llama",),
        128002,
        ("<|eot_id|>",),
        "qwen3",
    )
    assert (moe.model_types, moe.mask_token_id, moe.chat_template, moe.draft_family) == (
        ("qwen3_moe",),
        151669,
        "qwen3",
        "qwen3",
    )
    qwen3_5 = family_by_name("qwen3_5")
    assert (qwen3_5.model_types, qwen3_5.mask_token_id, qwen3_5.end_of_turn, qwen3_5.chat_template) == (
        ("qwen3_5", "qwen3_5_text"),
        248319,
        ("<|im_end|>",),
        "qwen3_5",
    )
    assert qwen3_5.recurrent_layer_types == ("linear_attention",) and qwen3_5.draft_family == "qwen3"
    assert family_by_name("qwen3_5_moe").model_types == ("qwen3_5_moe", "qwen3_5_moe_text")
    # Qwen3.5-MoE has no dense MLP width: the dense draft's is the active experts' (2 x 16) + the shared one (16).
    from deepspec.models.draft_config import draft_config_from_target
    from deepspec.tiny_models import make_model_config

    moe_target = make_model_config(
        family="qwen3_5_moe", hidden_size=32, moe_intermediate_size=16, shared_expert_intermediate_size=16
    )
    draft = draft_config_from_target(moe_target, {"algorithm": "eagle3", "target_layer_ids": [0, 1]})
    assert (draft.model_type, draft.intermediate_size, draft.hidden_size) == ("qwen3", 48, 32)
    assert sorted(f.name for f in FAMILIES) == ["gemma4", "llama3", "qwen3", "qwen3_5", "qwen3_5_moe", "qwen3_moe"]


@pytest.mark.parametrize("algo", ["dspark", "dflash", "eagle3"])
def test_qwen3_5_9b_configs_build_a_qwen3_draft_of_the_targets_sizes(algo):
    """The shipped Qwen3.5-9B configs against that model's config.json values (written out: no hub here)."""
    from transformers import Qwen3_5Config

    from deepspec.models.draft_config import draft_config_from_target

    rope = {"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25, "mrope_section": [11, 11, 10]}
    text = dict(
        vocab_size=248320,
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=32,
        num_attention_heads=16,
        num_key_value_heads=4,
        head_dim=256,
        full_attention_interval=4,
        tie_word_embeddings=False,
        rope_parameters=rope,
    )
    target = Qwen3_5Config(text_config=text)
    full = [i for i, t in enumerate(target.text_config.layer_types) if t == "full_attention"]
    assert full == [3, 7, 11, 15, 19, 23, 27, 31]
    cfg = load_config(ROOT / f"config/{algo}/{algo}_qwen3_5_9b.py")
    draft = draft_config_from_target(target, cfg.model)
    assert (draft.model_type, draft.hidden_size, draft.intermediate_size, draft.head_dim) == ("qwen3", 4096, 12288, 256)
    assert (draft.num_attention_heads, draft.num_key_value_heads, draft.vocab_size) == (16, 4, 248320)
    assert draft.rope_parameters == {"rope_type": "default", "rope_theta": 1e7}  # whole-head rope, no mrope
    # Any layer type is captured (docs/targets.md): layers 1, 8, 22 and 29 are Gated DeltaNet layers.
    assert draft.target_layer_ids == ([1, 15, 29] if algo == "eagle3" else [1, 8, 15, 22, 29])
    if algo != "eagle3":
        assert draft.mask_token_id == 248319 and cfg.data.chat_template == "qwen3_5"
