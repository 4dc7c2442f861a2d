"""Drafts in the public DeepSpec layout, built by hand: upstream config keys, tensor names and shapes.

Each fixture is what a released checkpoint holds (config.json as DeepSpec writes it: the target's text
config + draft fields; model.safetensors with DeepSpec's names). It must load strictly, every tensor
must land under its own name, and the loaded draft must compute the formulas (the float64 naive
references of tests/references.py). A renamed, missing or reshaped tensor fails
with its name; older layouts of ours load through an exact mapping or fail saying why.
"""

import json
import warnings

import pytest
import torch
from safetensors.torch import save_file

from deepspec.models import DraftLoadError, load_draft
from references import G, H, MASK, V, batched_loss, eagle3_batch, eagle3_batched, make_batch, naive_loss, naive_unroll

R = 8  # markov rank
N_CTX = 3  # captured target layers

QWEN3_TEXT = {  # a Qwen3 text config as config.json spells it (draft-sized: 2 layers)
    "model_type": "qwen3",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "head_dim": 16,
    "hidden_act": "silu",
    "hidden_size": H,
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "max_position_embeddings": 4096,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000,
    "rope_scaling": None,
    "use_sliding_window": False,
    "sliding_window": None,
    "vocab_size": V,
    "torch_dtype": "bfloat16",
    "num_hidden_layers": 2,
    "tie_word_embeddings": False,
    "pad_token_id": 0,
}


def gemma4_text(*, k_eq_v: bool) -> dict:
    # As DeepSpec writes it (transformers 5.10): global_head_dim / num_global_key_value_heads are plain keys.
    return {
        "model_type": "gemma4_text",
        "vocab_size": V,
        "hidden_size": H,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "global_head_dim": 8,
        "num_global_key_value_heads": 2,
        "attention_k_eq_v": k_eq_v,
        "layer_types": ["full_attention", "full_attention"],
        "sliding_window": 8,
        "final_logit_softcapping": 30.0,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size_per_layer_input": 0,
        "vocab_size_per_layer_input": V,
        "num_kv_shared_layers": 0,
        "enable_moe_block": False,
        "use_double_wide_mlp": False,
        "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "max_position_embeddings": 4096,
        "initializer_range": 0.02,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
        "tie_word_embeddings": False,
        "target_model_type": "gemma4",
        "target_text_model_type": "gemma4_text",
    }


def parallel_fields(*, markov: str | None) -> dict:
    return {
        "block_size": G,
        "mask_token_id": MASK,
        "target_layer_ids": [0, 1, 3],
        "num_target_layers": 5,
        "num_anchors": 6,
        "markov_rank": R if markov else 0,
        "markov_head_type": markov or "vanilla",
        "enable_confidence_head": bool(markov),
        "confidence_head_with_markov": bool(markov),
    }


def layer_shapes(i: int, *, gemma: bool, eagle3: bool, k_eq_v: bool = False) -> dict:
    p, w = f"layers.{i}.", 2 * H if eagle3 else H
    heads, d = (2, 8) if gemma else (4, 16)
    kv = (2 if k_eq_v else 1) if gemma else 2
    shapes = {
        p + "self_attn.q_proj.weight": (heads * d, w),
        p + "self_attn.k_proj.weight": (kv * d, w),
        p + "self_attn.o_proj.weight": (H, heads * d),
        p + "self_attn.q_norm.weight": (d,),
        p + "self_attn.k_norm.weight": (d,),
        p + "mlp.gate_proj.weight": (64, H),
        p + "mlp.up_proj.weight": (64, H),
        p + "mlp.down_proj.weight": (H, 64),
        p + "input_layernorm.weight": (H,),
        p + "post_attention_layernorm.weight": (H,),
    }
    if not k_eq_v:
        shapes[p + "self_attn.v_proj.weight"] = (kv * d, w)
    if gemma:
        shapes.update(
            {
                p + "pre_feedforward_layernorm.weight": (H,),
                p + "post_feedforward_layernorm.weight": (H,),
                p + "layer_scalar": (1,),
            }
        )
    if eagle3:
        shapes[p + "hidden_norm.weight"] = (H,)
    return shapes


def fixture(kind: str) -> tuple[dict, dict]:
    """(config.json dict, {name: shape}) of a released draft of ``kind``."""
    gemma, k_eq_v = kind.startswith("gemma4"), kind.endswith("k_eq_v")
    eagle3 = "eagle3" in kind
    text = gemma4_text(k_eq_v=k_eq_v) if gemma else dict(QWEN3_TEXT)
    family = "Gemma4" if gemma else "Qwen3"
    shapes = {"embed_tokens.weight": (V, H), "lm_head.weight": (V, H), "fc.weight": (H, N_CTX * H), "norm.weight": (H,)}
    for i in range(2):
        shapes.update(layer_shapes(i, gemma=gemma, eagle3=eagle3, k_eq_v=k_eq_v))
    if eagle3:
        config = {
            **text,
            "architectures": [f"{family}Eagle3Model"],
            "target_layer_ids": [0, 1, 3],
            "num_target_layers": 5,
            "ttt_length": 3,
            "step_loss_decay": 0.8,
            "draft_num_hidden_layers": 2,
        }
        return config, shapes
    markov = MARKOV_HEAD[kind]
    config = {**text, "architectures": [f"{family}DSparkModel"], **parallel_fields(markov=markov)}
    shapes["hidden_norm.weight"] = (H,)
    if markov:
        shapes.update(
            {
                "markov_head.markov_w1.weight": (V, R),
                "markov_head.markov_w2.weight": (V, R),
                "confidence_head.proj.weight": (1, H + R),
                "confidence_head.proj.bias": (1,),
            }
        )
    if markov == "gated":
        shapes.update({"markov_head.gate_proj.weight": (R, H + R), "markov_head.gate_proj.bias": (R,)})
    if markov == "rnn":  # paper eq. 6: joint_proj (2r + d -> 3r, with bias)
        shapes.update({"markov_head.joint_proj.weight": (3 * R, 2 * R + H), "markov_head.joint_proj.bias": (3 * R,)})
    return config, shapes


def write(folder, config: dict, tensors: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def random_tensors(shapes: dict, seed=3) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in shapes.items():
        t = torch.randn(s, generator=g) * 0.3
        if k.endswith(("norm.weight", "layer_scalar")):
            t = 1.0 + t  # norm scales around 1, so the references exercise them
        out[k] = t.to(torch.bfloat16)
    return out


MARKOV_HEAD = {
    "qwen3_dspark_vanilla": "vanilla",
    "qwen3_dspark_gated": "gated",
    "qwen3_dspark_rnn": "rnn",
    "qwen3_dflash": None,
    "gemma4_dspark": "vanilla",
    "gemma4_dspark_k_eq_v": "rnn",
}
KINDS = [
    "qwen3_dspark_vanilla",
    "qwen3_dspark_gated",
    "qwen3_dspark_rnn",
    "qwen3_dflash",
    "gemma4_dspark",
    "gemma4_dspark_k_eq_v",
    "qwen3_eagle3",
    "gemma4_eagle3",
    "gemma4_eagle3_k_eq_v",
]


@pytest.mark.parametrize("kind", KINDS)
def test_released_layout_loads_strictly_and_every_tensor_lands_under_its_name(kind, tmp_path):
    config, shapes = fixture(kind)
    tensors = random_tensors(shapes)
    write(tmp_path, config, tensors)
    draft = load_draft(tmp_path)
    assert type(draft).__name__ == config["architectures"][0]
    state = draft.state_dict()
    assert set(state) == set(shapes), set(state) ^ set(shapes)
    for key, value in tensors.items():
        assert torch.equal(state[key].to(torch.bfloat16), value), key
    if kind.endswith("k_eq_v"):
        assert draft.layers[0].self_attn.v_proj is None  # values are the key projection
    if kind.startswith("gemma4"):
        assert draft.layers[0].self_attn.head_dim == 8 and draft.layers[0].self_attn.scaling == 1.0


@pytest.mark.parametrize("kind", ["qwen3_dspark_rnn", "qwen3_dspark_gated", "gemma4_dspark_k_eq_v"])
def test_released_parallel_draft_computes_the_formulas(kind, tmp_path):
    config, shapes = fixture(kind)
    write(tmp_path, config, random_tensors(shapes))
    draft = load_draft(tmp_path).double()
    batch = make_batch()
    out, sums = batched_loss(draft, *batch)
    ref, ref_logits = naive_loss(draft, *batch)
    for key in ("loss_sum", "ce_sum", "l1_sum", "conf_sum"):
        torch.testing.assert_close(
            sums[key].double(), torch.as_tensor(ref[key], dtype=torch.float64), rtol=1e-6, atol=1e-6, msg=key
        )


def test_released_eagle3_computes_the_formulas(tmp_path):
    config, shapes = fixture("gemma4_eagle3_k_eq_v")
    write(tmp_path, config, random_tensors(shapes))
    draft = load_draft(tmp_path).double()
    batch = eagle3_batch()
    _, sums = eagle3_batched(draft, *batch)
    ref = naive_unroll(draft, *batch)
    torch.testing.assert_close(
        sums["loss_sum"].double(), torch.as_tensor(ref["loss_sum"], dtype=torch.float64), rtol=1e-6, atol=1e-6
    )
    assert sums["step_count"].tolist() == ref["count"]


def test_renamed_missing_or_reshaped_tensors_fail_with_their_names(tmp_path):
    config, shapes = fixture("qwen3_dspark_vanilla")
    tensors = random_tensors(shapes)
    renamed = dict(tensors)
    renamed["layers.1.self_attn.q_norm.scale"] = renamed.pop("layers.1.self_attn.q_norm.weight")
    write(tmp_path / "renamed", config, renamed)
    with pytest.raises(
        DraftLoadError,
        match=r"missing 1: layers\.1\.self_attn\.q_norm\.weight; "
        r"unexpected 1: layers\.1\.self_attn\.q_norm\.scale",
    ):
        load_draft(tmp_path / "renamed")
    missing = {k: v for k, v in tensors.items() if k != "fc.weight"}
    write(tmp_path / "missing", config, missing)
    with pytest.raises(DraftLoadError, match=r"missing 1: fc\.weight\b.*Nothing was re-initialised"):
        load_draft(tmp_path / "missing")
    reshaped = dict(tensors, **{"markov_head.markov_w1.weight": torch.zeros(V, R + 1, dtype=torch.bfloat16)})
    write(tmp_path / "reshaped", config, reshaped)
    with pytest.raises(
        DraftLoadError,
        match=r"shape mismatch 1: markov_head\.markov_w1\.weight \(96, 9\) in the "
        r"file vs \(96, 8\) expected",
    ):
        load_draft(tmp_path / "reshaped")


def test_truncated_weights_name_the_file(tmp_path):
    config, shapes = fixture("qwen3_dflash")
    write(tmp_path, config, random_tensors(shapes))
    file = tmp_path / "model.safetensors"
    file.write_bytes(file.read_bytes()[:-100])
    with pytest.raises(DraftLoadError, match=r"cannot read .*model\.safetensors.*truncated or corrupted"):
        load_draft(tmp_path)


def test_older_one_layer_eagle3_layout_maps_exactly_and_says_so(tmp_path):
    config, shapes = fixture("qwen3_eagle3")
    config = dict(config, num_hidden_layers=1, draft_num_hidden_layers=1)
    shapes = {k: v for k, v in shapes.items() if not k.startswith("layers.1.")}
    tensors = random_tensors(shapes)
    write(tmp_path / "new", config, tensors)
    old = dict(tensors)
    old["hidden_norm.weight"] = old.pop("layers.0.hidden_norm.weight")  # our layout before this change
    write(tmp_path / "old", config, old)
    with pytest.warns(UserWarning, match=r"hidden_norm\.weight -> layers\.0\.hidden_norm\.weight"):
        mapped = load_draft(tmp_path / "old")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        current = load_draft(tmp_path / "new")
    a, b = mapped.state_dict(), current.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_older_layouts_without_an_exact_mapping_fail_saying_why(tmp_path):
    config, shapes = fixture("qwen3_eagle3")  # 2 layers: only layer 0 fused in our older layout
    tensors = random_tensors(shapes)
    tensors["hidden_norm.weight"] = tensors.pop("layers.0.hidden_norm.weight")
    del tensors["layers.1.hidden_norm.weight"]
    write(tmp_path / "eagle3", config, tensors)
    with pytest.raises(DraftLoadError, match="older layout of ours .* with 2 layers.*Retrain"):
        load_draft(tmp_path / "eagle3")

    config, shapes = fixture("qwen3_dspark_rnn")
    tensors = random_tensors(shapes)
    tensors["markov_head.joint_proj.weight"] = torch.zeros(R, 2 * R, dtype=torch.bfloat16)  # tanh(W[e; s])
    tensors["markov_head.joint_proj.bias"] = torch.zeros(R, dtype=torch.bfloat16)
    write(tmp_path / "rnn", config, tensors)
    with pytest.raises(DraftLoadError, match=r"markov_head\.joint_proj\.weight \(8, 16\).*pre-paper RNN head"):
        load_draft(tmp_path / "rnn")

    config, shapes = fixture("gemma4_dspark")
    tensors = {
        k: v
        for k, v in random_tensors(shapes).items()
        if not k.endswith(("feedforward_layernorm.weight", "layer_scalar"))
    }
    write(tmp_path / "gemma", config, tensors)
    with pytest.raises(DraftLoadError, match="Gemma 4 draft saved by an older version of ours"):
        load_draft(tmp_path / "gemma")


def test_missing_local_folder_is_not_mistaken_for_a_hub_id(tmp_path, monkeypatch):
    with pytest.raises(DraftLoadError, match="no such folder: .*nope"):
        load_draft(str(tmp_path / "nope"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    # relative, with more than one "/", or whose first component is an existing folder: local, never the hub
    for missing in ("runs/nope/step_5", "runs/nope", "./nope", "~/surely-not-here-deepspec", "nope", "a/b/c"):
        with pytest.raises(DraftLoadError, match="no such folder: "):
            load_draft(missing)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DraftLoadError, match="is a file, not a draft folder"):
        load_draft("file")


def test_local_or_hub_id_rule(tmp_path, monkeypatch):
    from deepspec.hub import NoSuchFolderError, is_hub_id, local_or_hub_id

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "exp").mkdir(parents=True)
    assert local_or_hub_id("runs/exp") == ("runs/exp", True)
    assert local_or_hub_id(str(tmp_path / "runs")) == (str(tmp_path / "runs"), True)
    assert local_or_hub_id("Qwen/Qwen3-4B") == ("Qwen/Qwen3-4B", False)  # only a valid owner/name goes to the hub
    assert local_or_hub_id("z-lab/Qwen3-4B-DFlash-b16") == ("z-lab/Qwen3-4B-DFlash-b16", False)
    for local in (
        "runs/nope",
        "runs/exp/step_5",
        "/abs/nope",
        "./a/b",
        "~/x/y",
        "nope",
        "",
        "a/b/c",
        "own er/name",
        "owner/na--me",
        "-owner/name",
        "owner/name.",
    ):
        with pytest.raises(NoSuchFolderError, match="no such folder"):
            local_or_hub_id(local, what="target")
    assert is_hub_id("google/gemma-4-E2B-it") and not is_hub_id("a/b/c") and not is_hub_id("owner/" + "x" * 96)


# What DeepSpec's classes assert on a config (its modeling/*/config.py and model __init__).
UPSTREAM_REQUIRED = {
    "dspark": (
        "target_layer_ids",
        "mask_token_id",
        "num_anchors",
        "enable_confidence_head",
        "markov_rank",
        "markov_head_type",
        "confidence_head_with_markov",
        "block_size",
        "num_target_layers",
    ),
    "eagle3": ("target_layer_ids", "ttt_length", "step_loss_decay"),
    "gemma4": (
        "num_global_key_value_heads",
        "global_head_dim",
        "attention_k_eq_v",
        "hidden_size_per_layer_input",
        "enable_moe_block",
        "num_kv_shared_layers",
    ),
}


@pytest.mark.parametrize("kind", ["qwen3_dspark_rnn", "gemma4_dspark_k_eq_v", "gemma4_eagle3"])
def test_our_saved_draft_has_the_upstream_keys_names_and_values(kind, tmp_path):
    from safetensors.torch import load_file

    config, shapes = fixture(kind)
    tensors = random_tensors(shapes)
    write(tmp_path / "theirs", config, tensors)
    load_draft(tmp_path / "theirs").save_pretrained(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    need = UPSTREAM_REQUIRED["eagle3" if "eagle3" in kind else "dspark"]
    need += UPSTREAM_REQUIRED["gemma4"] if kind.startswith("gemma4") else ()
    assert not [k for k in need if k not in saved]
    for key in need:
        if key in config:
            assert saved[key] == config[key], key
    assert saved["architectures"] == config["architectures"] and saved["tie_word_embeddings"] is False
    ours = load_file(str(tmp_path / "ours" / "model.safetensors"))
    assert set(ours) == set(tensors)
    for key in tensors:  # float32 master copy of the bf16 values: exact
        assert torch.equal(ours[key].to(torch.bfloat16), tensors[key]), key
