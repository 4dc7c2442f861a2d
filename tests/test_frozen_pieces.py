"""load_frozen_target_pieces: the embedding and LM head read alone from safetensors equal the loaded model's."""

import json

import pytest
import torch
from safetensors.torch import save_file

from deepspec.target_files import load_frozen_target_pieces
from deepspec.targets import TargetError, family_of, load_target_config
from shared_targets import CAPTURE_VOCAB as VOCAB, capture_model


def check_pieces(model, folder, *, tied: bool):
    embed, lm_head = load_frozen_target_pieces(str(folder))
    torch.testing.assert_close(embed, model.get_input_embeddings().weight, rtol=0, atol=0)
    torch.testing.assert_close(lm_head, model.get_output_embeddings().weight, rtol=0, atol=0)
    assert embed.shape == lm_head.shape == (VOCAB, 64)
    assert torch.equal(embed, lm_head) is tied


@pytest.mark.parametrize(
    "name, tied",
    [("qwen3", True), ("qwen3_untied", False), ("gemma4_text", True), ("gemma4_multimodal", True)],
    ids=["qwen3_tied", "qwen3_untied", "gemma4_text", "gemma4_multimodal"],
)
def test_pieces_equal_the_loaded_model(tmp_path, name, tied):
    model = capture_model(name)
    model.save_pretrained(tmp_path / "t")
    check_pieces(model, tmp_path / "t", tied=tied)


@pytest.mark.parametrize("name, tied", [("qwen3", True), ("qwen3_untied", False)], ids=["tied", "untied"])
def test_pieces_from_a_sharded_save(tmp_path, name, tied):
    model = capture_model(name)
    model.save_pretrained(tmp_path / "t", max_shard_size="50KB")
    index = json.loads((tmp_path / "t" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # really sharded
    assert not (tmp_path / "t" / "model.safetensors").exists()
    check_pieces(model, tmp_path / "t", tied=tied)


def test_explicit_config_and_family(tmp_path):
    model = capture_model("gemma4_multimodal")
    model.save_pretrained(tmp_path / "t")
    config = load_target_config(str(tmp_path / "t"))
    embed, lm_head = load_frozen_target_pieces(str(tmp_path / "t"), family=family_of(config), config=config)
    torch.testing.assert_close(embed, model.get_input_embeddings().weight, rtol=0, atol=0)
    torch.testing.assert_close(lm_head, model.get_output_embeddings().weight, rtol=0, atol=0)


def test_missing_embedding_lists_the_keys_found(tmp_path):
    model = capture_model("qwen3_untied")
    model.save_pretrained(tmp_path / "t")
    (tmp_path / "t" / "model.safetensors").unlink()
    save_file({"foo.weight": torch.zeros(2, 2), "bar.bias": torch.zeros(2)}, str(tmp_path / "t" / "model.safetensors"))
    with pytest.raises(
        TargetError,
        match=r"no embedding weight.*model\.embed_tokens\.weight.*found: bar\.bias, "
        r"foo\.weight",
    ):
        load_frozen_target_pieces(str(tmp_path / "t"))
    # The embedding present but an untied LM head missing: same kind of message.
    save_file({"model.embed_tokens.weight": torch.zeros(VOCAB, 64)}, str(tmp_path / "t" / "model.safetensors"))
    with pytest.raises(TargetError, match=r"no LM head weight.*lm_head\.weight.*found: model\.embed_tokens\.weight"):
        load_frozen_target_pieces(str(tmp_path / "t"))


def test_no_safetensors_files(tmp_path):
    capture_model("qwen3").config.save_pretrained(tmp_path / "t")
    with pytest.raises(TargetError, match="neither model.safetensors nor model.safetensors.index.json"):
        load_frozen_target_pieces(str(tmp_path / "t"))
