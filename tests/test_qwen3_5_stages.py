"""A tiny random Qwen3.5 target (Gated DeltaNet layers between full-attention layers) through the data stages.

Regeneration with the hf backend (batched, left-padded) writes the target's own greedy answers; the cache
builder and online training capture the same states from them through the one producer
(``deepspec.data.capture``), so offline and online training log the same losses. Training then eval.py on
this family is in test_new_families.py; lossless decoding in test_decoding.py and test_recurrent_target.py.
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from deepspec.cache.build import build_target_cache
from deepspec.data.regenerate import RegenerateOptions, SamplingSettings, regenerate
from deepspec.run_config import load_config
from deepspec.tiny_models import ENDOFTEXT_ID, IM_END_ID
from deepspec.tiny_target import build_random_tiny_target
from deepspec.training.metrics import read_metrics
from tinyrun import TINY_SIZES

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("deepspec_train_entry_qwen3_5", ROOT / "train.py")
train_entry = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_entry)
CONFIG = ROOT / "config/dspark/dspark_tiny.py"
LAYERS = [0, 1]  # one Gated DeltaNet layer, one full-attention layer
MAX_TOKENS = 10
STEPS = 6
# Batches of 3 mix prompt lengths, so the shorter rows are left-padded ahead of the Gated DeltaNet layers.
PROMPTS = ["def f(x):", "import os", "class Config(object):  # settings", "x", "for i in range(10):", "while True:"]


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    base = tmp_path_factory.mktemp("qwen3_5")
    target = build_random_tiny_target(output_dir=base / "target", seed=0, family="qwen3_5", **TINY_SIZES)
    prompts = base / "prompts.jsonl"
    rows = [{"id": f"p{i}", "conversations": [{"role": "user", "content": p}]} for i, p in enumerate(PROMPTS)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    regenerated = base / "regen.jsonl"
    summary = regenerate(
        RegenerateOptions(
            input_path=prompts,
            output_path=regenerated,
            backend="hf",
            model=str(target),
            sampling=SamplingSettings(temperature=0.0, max_tokens=MAX_TOKENS),
            batch_size=3,  # prompts of different lengths share a left-padded batch
            progress=False,
        ),
        log=lambda _m: None,
    )
    assert (summary.ok, summary.failed) == (len(PROMPTS), 0)
    return {"base": base, "target": str(target), "regenerated": regenerated}


def _greedy_answer(target, user: str) -> str:
    """The target's greedy answer to one prompt, unbatched, from plain generate()."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    messages = [{"role": "user", "content": user}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    stops = (IM_END_ID, ENDOFTEXT_ID)
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=list(stops), pad_token_id=0
        )
    new = out[0, ids.shape[1] :].tolist()
    new = new[: next((i for i, t in enumerate(new) if t in stops), len(new))]
    return tok.decode(new, skip_special_tokens=True)


def test_regeneration_writes_the_targets_greedy_answers(stages):
    rows = [json.loads(line) for line in stages["regenerated"].read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"p{i}" for i in range(len(PROMPTS))]
    for row, prompt in zip(rows, PROMPTS):
        user, answer = row["conversations"]
        assert (user["role"], user["content"], answer["role"]) == ("user", prompt, "assistant")
        assert answer["content"] == _greedy_answer(stages["target"], prompt), row["id"]


def _train(stages, out: Path, **source) -> list[float]:
    opts = [
        f"model.target_model_name_or_path={stages['target']}",
        f"model.target_layer_ids={LAYERS}",
        "model.num_draft_layers=1",
        "model.num_anchors=4",
        "data.min_loss_tokens=2",
        "train.local_batch_size=1",
        "train.global_batch_size=2",
        f"train.max_train_steps={STEPS}",
        "train.precision=fp32",
        "logging.logging_steps=1",
        "logging.checkpointing_steps=100",
        f"logging.checkpoint_dir={out}",
        f"logging.tensorboard_dir={out}/tb",
    ]
    cfg = load_config(CONFIG, opts=opts)
    train_entry.run_training(cfg, device="cpu", nproc=1, progress=False, **source)
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl")]


def test_cache_and_online_training_capture_the_same_states(stages, tmp_path):
    cfg = load_config(
        CONFIG, opts=[f"model.target_model_name_or_path={stages['target']}", f"model.target_layer_ids={LAYERS}"]
    )
    cache = tmp_path / "cache"
    build_target_cache(
        cfg=cfg,
        train_data_paths=[str(stages["regenerated"])],
        output_dir=cache,
        min_loss_tokens=2,
        max_shard_bytes=1 << 24,
        batch_size=1,  # one sample per forward, as the online producer with local_batch_size=1
        nproc=1,
        device="cpu",
        log=lambda _: None,
    )
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["num_samples"] == len(PROMPTS)
    offline = _train(stages, tmp_path / "off", cache_dir=str(cache))
    online = _train(stages, tmp_path / "on", online=True, train_data_paths=[str(stages["regenerated"])])
    assert len(offline) == STEPS and all(loss == loss for loss in offline)
    assert online == offline
