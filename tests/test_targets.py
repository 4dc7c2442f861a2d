"""Family adapters: captured states equal a plain transformers forward, for every family (Qwen3, Gemma 4,
Llama 3, Qwen3-MoE, Qwen3.5)."""

import pytest
import torch

from deepspec.targets import Target, TargetError, family_of, load_target, validate_layer_ids
from deepspec.tiny_models import model_from_config
from shared_targets import CAPTURE_VOCAB as VOCAB, capture_model

# Every family, and the multimodal classes the released Gemma 4 and Qwen3.5 checkpoints are.
MODELS = [
    "qwen3",
    "gemma4_text",
    "gemma4_multimodal",
    "llama3",
    "qwen3_moe",
    "qwen3_5",
    "qwen3_5_multimodal",
    "qwen3_5_moe",
]


@pytest.mark.parametrize("name", MODELS)
def test_capture_equals_output_hidden_states(name):
    model = capture_model(name)
    target = Target(model)
    ids = [-1, 0, 2, target.num_layers - 2]
    torch.manual_seed(1)
    input_ids = torch.randint(3, VOCAB, (2, 24))  # sequences longer than Gemma's sliding window
    reference = model(input_ids=input_ids, output_hidden_states=True)
    # Independent reference: transformers' own hidden_states tuple (index i+1 = output of layer i).
    ref_hidden = reference.hidden_states
    captured = target.capture(input_ids, layer_ids=ids)
    H = target.hidden_size
    assert captured.hidden_states.shape == (2, 24, len(ids) * H)
    for j, layer_id in enumerate(ids):
        torch.testing.assert_close(
            captured.hidden_states[..., j * H : (j + 1) * H], ref_hidden[layer_id + 1], rtol=0, atol=0
        )
    torch.testing.assert_close(captured.last_hidden_state, ref_hidden[-1], rtol=0, atol=0)
    # Target logits (LM head + Gemma's soft-cap) reproduce the model's own logits.
    torch.testing.assert_close(target.logits(captured.last_hidden_state), reference.logits, rtol=1e-5, atol=1e-5)


def test_families_and_frozen_pieces():
    qwen, gemma, mm = (Target(capture_model(name)) for name in ("qwen3", "gemma4_text", "gemma4_multimodal"))
    assert (qwen.family.name, gemma.family.name, mm.family.name) == ("qwen3", "gemma4", "gemma4")
    assert (qwen.num_layers, gemma.num_layers, mm.num_layers) == (5, 6, 6)
    assert (qwen.hidden_size, mm.hidden_size, mm.vocab_size) == (64, 64, VOCAB)
    assert qwen.family.mask_token_id == 151669 and gemma.family.mask_token_id == 4
    for target in (qwen, gemma, mm):
        assert target.embed_tokens.weight.shape == (VOCAB, 64)
        assert target.lm_head.weight.shape == (VOCAB, 64)
        assert not any(p.requires_grad for p in target.model.parameters())
        module = target.family.block_module()
        for cls_name in target.family.block_class_names.values():
            assert hasattr(module, cls_name), cls_name


@pytest.mark.parametrize("name", ["qwen3", "qwen3_5"])
def test_capture_with_padding_mask_matches_unpadded(name):
    target = Target(capture_model(name))
    torch.manual_seed(2)
    seq = torch.randint(3, VOCAB, (1, 10))
    padded = torch.cat([seq, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 4)], dim=1).long()
    a = target.capture(seq, layer_ids=[0, 3])
    b = target.capture(padded, layer_ids=[0, 3], attention_mask=mask)
    torch.testing.assert_close(b.hidden_states[:, :10], a.hidden_states, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "ids, message",
    [
        ([], "is empty"),
        ([3, 1], "strictly increasing"),
        ([1, 1], "strictly increasing"),
        ([-2, 1], "smallest id"),
        ([0, 4], "the last layer \\(4\\)"),
        ([0, 9], "has 5 layers"),
    ],
)
def test_layer_id_validation(ids, message):
    with pytest.raises(TargetError, match=message):
        validate_layer_ids(ids, num_layers=5)
    assert validate_layer_ids([-1, 0, 3], num_layers=5) == [-1, 0, 3]


def test_unsupported_family():
    class Cfg:
        model_type = "mistral"

    with pytest.raises(
        TargetError,
        match="unsupported target model_type 'mistral'; supported: qwen3, gemma4, gemma4_text, llama, qwen3_moe",
    ):
        family_of(Cfg())


def test_load_target_from_a_saved_folder(tmp_path):
    model = capture_model("qwen3")
    model.save_pretrained(tmp_path / "t")
    target = load_target(str(tmp_path / "t"), dtype=torch.float32, with_tokenizer=False)
    x = torch.randint(3, VOCAB, (1, 8))
    torch.testing.assert_close(
        target.capture(x, layer_ids=[1]).last_hidden_state, Target(model).capture(x, layer_ids=[1]).last_hidden_state
    )
    with pytest.raises(TargetError, match="build_tiny_target"):
        load_target(str(tmp_path / "missing"), with_tokenizer=False)


# -- target_fingerprint: identity by content, not by folder name --------------------------------
def _fake_target(folder, *, weights: bytes, config: dict | None = None):
    import json

    folder.mkdir(parents=True)
    cfg = {"model_type": "qwen3", "hidden_size": 64, "_name_or_path": str(folder), "transformers_version": "5.0"}
    (folder / "config.json").write_text(json.dumps({**cfg, **(config or {})}))
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_fingerprint_same_name_other_folder_differs_and_copies_match(tmp_path):
    import shutil

    from deepspec.target_files import target_fingerprint

    base = _fake_target(tmp_path / "base" / "Qwen3-4B", weights=bytes(range(256)) * 4096)
    ft = _fake_target(tmp_path / "ft" / "Qwen3-4B", weights=bytes(reversed(range(256))) * 4096)  # a "fine-tune"
    assert target_fingerprint(base) != target_fingerprint(ft)
    copy = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(base, copy)
    assert target_fingerprint(copy) == target_fingerprint(base) == target_fingerprint(str(base) + "/")
    # Re-saving rewrites volatile keys (where it was loaded from, library version): still the same target.
    cfg = (copy / "config.json").read_text().replace("5.0", "5.9").replace(str(base), "/tmp/x")
    (copy / "config.json").write_text(cfg)
    assert target_fingerprint(copy) == target_fingerprint(base)
    other_cfg = _fake_target(tmp_path / "cfg", weights=bytes(range(256)) * 4096, config={"rope_theta": 1.0})
    assert target_fingerprint(other_cfg) != target_fingerprint(base)
    # One changed byte in the middle of a large file is seen (sampled there), as is a changed size.
    big = bytearray(b"\1" * (8 << 20))
    a = _fake_target(tmp_path / "a", weights=bytes(big))
    big[len(big) // 2] ^= 1
    b = _fake_target(tmp_path / "b", weights=bytes(big))
    c = _fake_target(tmp_path / "c", weights=bytes(big) + b"\0")
    assert len({target_fingerprint(a), target_fingerprint(b), target_fingerprint(c)}) == 3


def test_fingerprint_saved_model_and_cheap_on_a_huge_file(tmp_path):
    import time

    from deepspec.target_files import target_fingerprint

    capture_model("qwen3").save_pretrained(tmp_path / "m1")
    capture_model("qwen3").save_pretrained(tmp_path / "m2")  # same seed: same weights
    model_from_config(capture_model("qwen3").config, seed=1).save_pretrained(tmp_path / "m3")
    fps = [target_fingerprint(tmp_path / m) for m in ("m1", "m2", "m3")]
    assert fps[0] == fps[1] != fps[2] and fps[0].startswith("dstf1:")
    # A 64 GiB sparse weight file: fingerprinting reads a few samples of it, not the file.
    huge = _fake_target(tmp_path / "huge", weights=b"")
    with open(huge / "model.safetensors", "r+b") as fh:
        fh.truncate(64 << 30)
    t0 = time.perf_counter()
    target_fingerprint(huge)
    assert time.perf_counter() - t0 < 2.0


def test_fingerprint_refuses_what_it_cannot_identify(tmp_path, monkeypatch):
    import json

    from deepspec.target_files import target_fingerprint

    with pytest.raises(TargetError, match="does not exist"):
        target_fingerprint(tmp_path / "no" / "such" / "folder")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(
        TargetError, match="neither a local folder nor in the Hugging Face cache.*huggingface-cli download org/none"
    ):
        target_fingerprint("org/none")
    sharded = _fake_target(tmp_path / "sharded", weights=b"x")
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00002.safetensors")
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})
    )
    with pytest.raises(TargetError, match="incomplete: model-00002-of-00002.safetensors"):
        target_fingerprint(sharded)
    (sharded / "model-00001-of-00002.safetensors").unlink()
    (sharded / "model.safetensors.index.json").unlink()
    with pytest.raises(TargetError, match="no weight files"):
        target_fingerprint(sharded)
