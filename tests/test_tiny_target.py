"""Tests for the embedded default target (tokenizer, trained and random tiny Qwen3 targets)."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re
import shutil

import pytest
import torch

from deepspec import tiny_models as tm
from deepspec import tiny_target as tt

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 5


@pytest.fixture(scope="module")
def tokenizer():
    return tt.build_tokenizer()


def _ids(encoded):
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True)
    return list(encoded["input_ids"]) if hasattr(encoded, "keys") else list(encoded)


def _state(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).state_dict()


# ----------------------------------------------------------------------------- tokenizer


def test_special_token_ids(tokenizer):
    assert len(tokenizer) == tm.VOCAB_SIZE
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == list(tm.SPECIAL_TOKENS)
    assert (tm.ENDOFTEXT_ID, tm.IM_START_ID, tm.IM_END_ID, tm.MASK_TOKEN_ID) == (0, 1, 2, 3)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == tm.IM_END_ID
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == tm.ENDOFTEXT_ID
    assert tokenizer.mask_token_id == tm.MASK_TOKEN_ID
    # special tokens inside text are matched whole, not split into bytes
    assert tokenizer("a<|mask|>b", add_special_tokens=False)["input_ids"].count(tm.MASK_TOKEN_ID) == 1
    assert tokenizer("x = 1", add_special_tokens=False)["input_ids"][0] > 3  # no BOS added


def test_chat_template_exact_and_round_trip(tokenizer):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "def add(a, b):"},
        {"role": "assistant", "content": "    return a + b"},
        {"role": "user", "content": "thanks ✓"},
    ]
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\ndef add(a, b):<|im_end|>\n"
        "<|im_start|>assistant\n    return a + b<|im_end|>\n<|im_start|>user\nthanks ✓<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    no_prompt = tokenizer.apply_chat_template(msgs[:2], tokenize=False)
    assert no_prompt.endswith("def add(a, b):<|im_end|>\n")
    ids = _ids(tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True))
    assert ids[0] == tm.IM_START_ID and ids.count(tm.IM_END_ID) == 4
    assert tokenizer.decode(ids) == text
    # training text uses exactly the template's rendering
    pair = msgs[1:3]
    assert tt.format_chat(user=pair[0]["content"], assistant=pair[1]["content"]) == tokenizer.apply_chat_template(
        pair, tokenize=False
    )


def test_tokenizer_is_cached():
    first = tt._trained_tokenizer_json.cache_info().hits
    tt.build_tokenizer()
    assert tt._trained_tokenizer_json.cache_info().hits > first


def test_corpus_excludes_tests_and_charmaps():
    train, val = tt.load_corpus()
    names = [rel for rel, _ in train + val]
    assert train and val and set(rel for rel, _ in train).isdisjoint(rel for rel, _ in val)
    assert not any(rel.startswith(("encodings/", "test/", "idlelib/")) or "/tests/" in rel for rel in names)
    assert not any(tok in text for _, text in train for tok in tm.SPECIAL_TOKENS)


def test_code_chat_pairs():
    src = 'class A:\n    """Doc."""\n    def f(self, x):\n        y = x + 1\n        return y\n'
    pairs = tt.code_chat_pairs(text=src)
    assert ('class A:\n    """Doc."""', "    def f(self, x):\n        y = x + 1\n        return y") in pairs
    assert ("def f(self, x):\n    y = x + 1", "    return y") in pairs
    assert tt.code_chat_pairs(text="def broken(:\n") == []


def test_steps_and_default_dir(monkeypatch, tmp_path):
    assert tt.steps_for_minutes(minutes=5) == round(5 * tt.STEPS_PER_MINUTE)
    with pytest.raises(ValueError):
        tt.steps_for_minutes(minutes=0)
    monkeypatch.setenv("DEEPSPEC_TINY_TARGET", str(tmp_path / "t"))
    assert tt.default_tiny_target_dir() == tmp_path / "t"
    monkeypatch.delenv("DEEPSPEC_TINY_TARGET")
    assert tt.default_tiny_target_dir() == pathlib.Path.home() / ".cache" / "deepspec" / "tiny_target"


# ----------------------------------------------------------------------------- the tiny-model factory

SMALL = dict(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_attention_heads=2, head_dim=16, num_hidden_layers=2
)


def test_every_family_builds_with_the_classes_the_family_table_names():
    from deepspec.targets import FAMILIES, family_of
    from deepspec.tiny_models import TINY_ARCHITECTURES, make_model

    assert sorted(TINY_ARCHITECTURES) == sorted(f.name for f in FAMILIES)
    for family in FAMILIES:
        for multimodal in (False, True) if family.multimodal_class else (False,):
            model = make_model(family=family.name, multimodal=multimodal, **SMALL)
            cls = family.multimodal_class if multimodal else family.causal_lm_class
            assert type(model).__name__ == cls and model.config.architectures == [cls], (family.name, multimodal)
            assert family_of(model.config) is family and not model.training
            text = family.text_config(model.config)
            assert type(text).__name__ == family.config_class
            assert (text.vocab_size, text.hidden_size, text.num_hidden_layers) == (64, 32, 2)
            assert family.text_model(model).embed_tokens.weight.shape == (64, 32)
    # Sizes that follow the caller's: Gemma 4's per-layer input vocabulary, Qwen3.5's vision output width.
    assert make_model(family="gemma4", **SMALL).config.vocab_size_per_layer_input == 64
    assert make_model(family="qwen3_5", multimodal=True, **SMALL).config.vision_config.out_hidden_size == 32
    # Qwen3.5-MoE has no dense MLP: the shared sizes' intermediate_size is left out.
    assert not hasattr(make_model(family="qwen3_5_moe", **SMALL).config, "intermediate_size")


def test_the_default_is_the_shipped_target_and_variants_switch_the_architecture():
    from deepspec.tiny_models import make_model, make_model_config

    shipped = make_model_config()
    assert type(shipped).__name__ == "Qwen3Config" and shipped.architectures == ["Qwen3ForCausalLM"]
    assert {k: getattr(shipped, k) for k in tm.MODEL_CONFIG} == tm.MODEL_CONFIG
    plain, k_eq_v = (make_model(family="gemma4", variant=v, **SMALL) for v in (None, "k_eq_v"))
    assert plain.config.layer_types == k_eq_v.config.layer_types == ["sliding_attention", "full_attention"]
    full, plain_full = k_eq_v.model.layers[1].self_attn, plain.model.layers[1].self_attn
    assert full.v_proj is None and full.k_proj.out_features == 2 * 16  # values are keys, 2 kv heads
    assert plain_full.v_proj.out_features == plain_full.k_proj.out_features == 16
    assert k_eq_v.model.layers[0].self_attn.v_proj is not None  # sliding layers keep their values
    rope = make_model_config(family="llama3", variant="rope_scaling").rope_parameters
    assert (rope["rope_type"], rope["factor"], rope["original_max_position_embeddings"]) == ("llama3", 8.0, 16)
    rope["factor"] = 1.0  # a config's dicts are its own: the table it came from is untouched
    assert make_model_config(family="llama3", variant="rope_scaling").rope_parameters["factor"] == 8.0
    assert make_model_config(family="llama3").rope_parameters == tm.MODEL_CONFIG["rope_parameters"]


def test_models_are_seeded_and_leave_the_callers_rng_alone():
    from deepspec.tiny_models import make_model

    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    a = make_model(seed=2, num_hidden_layers=1)
    assert torch.equal(torch.rand(3), expected)
    b = make_model(seed=2, num_hidden_layers=1)
    c = make_model(seed=3, num_hidden_layers=1, dtype=torch.float64)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert sc["lm_head.weight"].dtype == torch.float64 and not torch.equal(
        sa["lm_head.weight"].double(), sc["lm_head.weight"]
    )
    eager = make_model(family="qwen3_moe", eager=True, num_hidden_layers=1)
    assert eager.config._attn_implementation == eager.config._experts_implementation == "eager"


def test_factory_errors_say_what_to_change():
    from deepspec.tiny_models import TinyTargetError, make_model_config

    families = "['gemma4', 'llama3', 'qwen3', 'qwen3_5', 'qwen3_5_moe', 'qwen3_moe']"
    with pytest.raises(TinyTargetError, match=re.escape(f"no tiny 'mistral' target; choose one of {families}")):
        make_model_config(family="mistral")
    with pytest.raises(
        TinyTargetError, match=re.escape("the tiny gemma4 target has no variant 'k_eq_q'; it has ['k_eq_v']")
    ):
        make_model_config(family="gemma4", variant="k_eq_q")
    with pytest.raises(
        TinyTargetError, match="the qwen3 family has no multimodal class; build it with multimodal=False"
    ):
        make_model_config(family="qwen3", multimodal=True)
    assert tm.TinyTargetError is TinyTargetError  # one error class, importable from both modules


# ----------------------------------------------------------------------------- random target


def test_random_target_loads_and_is_seeded(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    a = tt.build_random_tiny_target(output_dir=tmp_path / "a", seed=3, num_hidden_layers=2)
    b = tt.build_random_tiny_target(output_dir=tmp_path / "b", seed=3, num_hidden_layers=2)
    model = AutoModelForCausalLM.from_pretrained(a)
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == tm.VOCAB_SIZE
    assert AutoTokenizer.from_pretrained(a).mask_token_id == tm.MASK_TOKEN_ID
    sa, sb = model.state_dict(), _state(b)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert tt.read_marker(folder=a)["kind"] == "random"
    assert not tt.is_complete_tiny_target(folder=a)  # a random folder never passes as trained


def test_refuses_to_replace_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(tm.TinyTargetError, match="not a tiny-target folder"):
        tt.build_tiny_target(output_dir=tmp_path, steps=STEPS, log=None)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_rebuild_replaces_only_an_earlier_tiny_target(tmp_path):
    """--overwrite never deletes what a build did not write: a folder without the marker (a real target holding
    only config.json + model.safetensors, say) or a tiny target holding other files stays as it is."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "config.json").write_text("{}")
    (real / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(tm.TinyTargetError, match=r"not a tiny-target folder \(no deepspec_tiny_target\.json; it "):
        tt.build_tiny_target(output_dir=real, steps=STEPS, force=True, log=None)
    mixed = tt.build_random_tiny_target(output_dir=tmp_path / "mixed", seed=0, num_hidden_layers=1)
    (mixed / "calibration.json").write_text("mine")
    with pytest.raises(tm.TinyTargetError, match="it holds calibration.json, which no tiny-target build writes"):
        tt.build_tiny_target(output_dir=mixed, steps=STEPS, force=True, log=None)
    assert (real / "model.safetensors").read_bytes() == b"weights" and (mixed / "calibration.json").is_file()


# ----------------------------------------------------------------------------- trained target


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "target"
    return tt.build_tiny_target(output_dir=out, steps=STEPS, seed=0, log=None)


@pytest.mark.slow
def test_trained_target_loads_and_generates(built):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = tt.read_marker(folder=built)
    assert info["kind"] == "trained" and info["steps"] == STEPS and info["seed"] == 0
    assert 0 < info["val_loss"] < 9 and info["val_perplexity"] == pytest.approx(2.718281828 ** info["val_loss"])
    leftovers = [p.name for p in built.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert not leftovers  # temp folders cleaned up
    tok = AutoTokenizer.from_pretrained(built)
    model = AutoModelForCausalLM.from_pretrained(built)
    assert info["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert list(model.generation_config.eos_token_id) == [tm.IM_END_ID, tm.ENDOFTEXT_ID]
    assert model.generation_config.pad_token_id == tm.ENDOFTEXT_ID
    ids = _ids(tok.apply_chat_template([{"role": "user", "content": "def f(x):"}], add_generation_prompt=True))
    out = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)
    assert out.shape[0] == 1 and ids == out[0, : len(ids)].tolist() and out.shape[1] > len(ids)


@pytest.mark.slow
def test_reuse_by_marker(built, capsys):
    before = (built / "model.safetensors").stat().st_mtime_ns
    logs = []
    assert tt.build_tiny_target(output_dir=built, steps=STEPS, seed=0, log=logs.append) == built
    assert any("reused" in line for line in logs)
    assert (built / "model.safetensors").stat().st_mtime_ns == before
    assert tt.is_complete_tiny_target(folder=built, seed=0, steps=STEPS)
    assert not tt.is_complete_tiny_target(folder=built, seed=1, steps=STEPS)
    assert not tt.is_complete_tiny_target(folder=built, seed=0, steps=STEPS + 1)
    # the CLI goes through the same reuse path and prints the perplexity
    spec = importlib.util.spec_from_file_location("build_tiny_target", REPO / "scripts/data/build_tiny_target.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main(["--output-dir", str(built), "--steps", str(STEPS)]) == 0
    assert "perplexity" in capsys.readouterr().out


@pytest.mark.slow
def test_unmarked_folder_is_rebuilt_identically(built, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(built, partial)
    (partial / tt.MARKER_NAME).unlink()
    (partial / "model.safetensors").write_bytes(b"truncated")
    assert tt.read_marker(folder=partial) is None
    assert not tt.is_complete_tiny_target(folder=partial, seed=0, steps=STEPS)
    logs = []
    tt.build_tiny_target(output_dir=partial, steps=STEPS, seed=0, log=logs.append)
    assert not any("reused" in line for line in logs)
    # same (seed, steps) on the same machine -> bit-identical weights and metrics
    sa, sb = _state(built), _state(partial)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    a, b = (json.loads((d / tt.MARKER_NAME).read_text()) for d in (built, partial))
    assert a["val_loss"] == b["val_loss"]


@pytest.mark.slow
def test_other_architecture_is_trained_not_reused(built, tmp_path):
    """family / config_overrides are part of a build: a Qwen3 build never stands in for a Qwen3.5 one."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "target"
    shutil.copytree(built, folder)
    hybrid = dict(family="qwen3_5", config_overrides={"num_hidden_layers": 2})
    logs = []
    assert tt.build_tiny_target(output_dir=folder, steps=STEPS, seed=0, log=logs.append, **hybrid) == folder
    assert not any("reused" in line for line in logs)
    info = tt.read_marker(folder=folder)
    assert (info["kind"], info["family"], info["config_overrides"]) == (
        "trained",
        "qwen3_5",
        {"num_hidden_layers": "2"},
    )
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert type(model).__name__ == "Qwen3_5ForCausalLM" and model.config.layer_types == [
        "linear_attention",
        "full_attention",
    ]
    assert tt.is_complete_tiny_target(folder=folder, **hybrid) and tt.is_complete_tiny_target(folder=folder)
    assert not tt.is_complete_tiny_target(folder=folder, family="qwen3")
    assert not tt.is_complete_tiny_target(folder=folder, family="qwen3_5")  # other overrides
    logs.clear()
    tt.build_tiny_target(output_dir=folder, steps=STEPS, seed=0, log=logs.append, **hybrid)
    assert any("reused" in line for line in logs)
    logs.clear()
    tt.build_tiny_target(output_dir=folder, steps=STEPS, seed=0, log=logs.append)  # the default again: retrained
    assert not any("reused" in line for line in logs) and tt.read_marker(folder=folder)["family"] == "qwen3"
