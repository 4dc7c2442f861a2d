"""DSpark / DFlash drafts: the batched block-sparse pass equals a naive per-block loop, gradients, save/load."""

import json

import pytest
import torch
from safetensors.torch import save_file

from deepspec.models import (
    build_draft,
    draft_config_from_dict,
    draft_config_from_target,
    load_draft,
    parallel_draft_metrics,
    sample_anchors,
)
from deepspec.models.dspark import DSparkDraftModel
from deepspec.targets import Target
from deepspec.tiny_models import model_from_config
from references import G, H, MASK, V, batched_loss, make_batch, naive_loss
from shared_targets import draft_math_target_config


VARIANTS = {  # name -> (target, cfg.model overrides); targets: shared_targets.DRAFT_MATH_TARGETS
    "dspark_vanilla": (
        "qwen3",
        dict(
            algorithm="dspark",
            markov_rank=8,
            markov_head_type="vanilla",
            confidence_head_alpha=1.0,
            confidence_head_with_markov=True,
        ),
    ),
    "dflash": ("qwen3", dict(algorithm="dflash", markov_rank=0, confidence_head_alpha=0.0)),
    "dspark_gated": (
        "qwen3",
        dict(
            algorithm="dspark",
            markov_rank=8,
            markov_head_type="gated",
            confidence_head_alpha=1.0,
            confidence_head_with_markov=True,
        ),
    ),
    "dspark_rnn_conf_h_only": (
        "qwen3",
        dict(
            algorithm="dspark",
            markov_rank=8,
            markov_head_type="rnn",
            confidence_head_alpha=1.0,
            confidence_head_with_markov=False,
        ),
    ),
    "dspark_rnn": (
        "qwen3",
        dict(
            algorithm="dspark",
            markov_rank=8,
            markov_head_type="rnn",
            confidence_head_alpha=1.0,
            confidence_head_with_markov=True,
        ),
    ),
    "gemma4_dspark": (
        "gemma4",
        dict(
            algorithm="dspark",
            markov_rank=8,
            markov_head_type="vanilla",
            confidence_head_alpha=1.0,
            confidence_head_with_markov=True,
        ),
    ),
    "gemma4_k_eq_v_rnn": (
        "gemma4_k_eq_v",
        dict(
            algorithm="dspark",
            markov_rank=8,
            markov_head_type="rnn",
            confidence_head_alpha=1.0,
            confidence_head_with_markov=True,
        ),
    ),
}


def make_draft(name, dtype=torch.float64):
    target, overrides = VARIANTS[name]
    model_cfg = dict(
        num_draft_layers=2, target_layer_ids=[0, 1, 3], block_size=G, mask_token_id=MASK, num_anchors=6, **overrides
    )
    torch.manual_seed(0)
    draft = build_draft(draft_config_from_target(draft_math_target_config(target), model_cfg)).to(dtype)
    with torch.no_grad():  # non-trivial norm weights, so a norm applied in the wrong place shows up
        for name_, p in draft.named_parameters():
            if name_.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
        for name_, b in draft.named_buffers():
            if name_.endswith("layer_scalar"):
                b.fill_(0.75)
    return draft


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_batched_loss_equals_naive_per_block_loop(name, backend):
    draft = make_draft(name)
    batch = make_batch()
    out, sums = batched_loss(draft, *batch, backend=backend)
    ref, ref_logits = naive_loss(draft, *batch)
    assert ref["block_count"] >= 8 and len(ref_logits) >= 20, "the batch should exercise many blocks and slots"
    for key in ("loss_sum", "weight_sum", "ce_sum", "l1_sum", "conf_sum", "tau_sum", "block_count"):
        torch.testing.assert_close(
            sums[key].double(),
            torch.as_tensor(ref[key], dtype=torch.float64),
            rtol=1e-6,
            atol=1e-6,
            msg=f"{name}: {key}",
        )
    mask = out.targets.slot_mask
    assert int(mask.sum()) == len(ref_logits), "supervised slots differ from the naive walk over the loss mask"
    tol = 1e-6 if name.startswith("gemma4") else 1e-8  # Gemma4RMSNorm computes in float32 even for float64
    for (b, a, k), logits in ref_logits.items():
        torch.testing.assert_close(out.logits[b, a, k], logits, rtol=tol, atol=tol)
    metrics = parallel_draft_metrics(sums)
    assert 1.0 <= metrics["tau_probabilistic"] <= G + 1


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_mask_matches_dense_mask_forward(monkeypatch):
    monkeypatch.setenv("DEEPSPEC_FLEX_EAGER", "1")  # uncompiled flex: CPU forward only (no CPU backward)
    draft = make_draft("dspark_vanilla", dtype=torch.float32)
    ids, hidden, loss_mask, last, anchors, valid = make_batch(dtype=torch.float32)
    with torch.no_grad():
        dense = draft.forward_train(
            input_ids=ids,
            hidden_states=hidden,
            loss_mask=loss_mask,
            anchors=anchors,
            anchor_valid=valid,
            attention_backend="sdpa",
        )
        flex = draft.forward_train(
            input_ids=ids,
            hidden_states=hidden,
            loss_mask=loss_mask,
            anchors=anchors,
            anchor_valid=valid,
            attention_backend="flex",
        )
    torch.testing.assert_close(flex.logits, dense.logits, rtol=1e-4, atol=1e-4)


def test_sample_anchors_and_slot_supervision():
    loss_mask = torch.tensor([[0, 0, 1, 1, 1, 0, 1, 1], [0, 0, 0, 0, 1, 0, 1, 0]])
    g = torch.Generator().manual_seed(0)
    anchors, valid = sample_anchors(loss_mask, num_anchors=5, block_size=3, generator=g)
    assert anchors.shape == valid.shape == (2, 5)
    # DeepSpec's candidates: a < T-1 with loss_mask[a] = loss_mask[a+1] = 1. Never the last prompt token
    # before a span (1 or 5 in row 0): at inference the anchor is always a committed answer token.
    assert anchors[0].tolist() == [2, 3, 6, 0, 0] and valid[0].tolist() == [True, True, True, False, False]
    assert not valid[1].any() and anchors[1].tolist() == [0] * 5  # single-token spans give no anchor
    few, few_valid = sample_anchors(loss_mask, num_anchors=2, block_size=3, generator=g)
    assert few_valid[0].all() and set(few[0].tolist()) <= {2, 3, 6} and few[0, 0] < few[0, 1]
    again = sample_anchors(loss_mask, num_anchors=5, block_size=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], anchors)
    # Uniform without replacement: each of the 3 candidates is drawn with probability 2/3 at A = 2.
    counts = torch.zeros(8)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3000):
        drawn, ok = sample_anchors(loss_mask[:1], num_anchors=2, block_size=3, generator=gen)
        counts[drawn[0][ok[0]]] += 1
    assert counts[[0, 1, 4, 5, 7]].sum() == 0
    torch.testing.assert_close(counts[[2, 3, 6]] / 3000, torch.full((3,), 2 / 3), atol=0.03, rtol=0)
    from deepspec.models.dspark import block_targets

    ids = torch.arange(16).view(2, 8)
    tg = block_targets(
        input_ids=ids, loss_mask=loss_mask, anchors=anchors, anchor_valid=valid, block_size=3, mask_token_id=99
    )
    # anchor 2: tokens 3, 4 supervised, 5 is not -> slots 0, 1; anchor 3: token 4 only; anchor 6: token 7, then
    # the end of the sequence.
    assert tg.slot_mask[0].tolist() == [
        [True, True, False],
        [True, False, False],
        [True, False, False],
        [False, False, False],
        [False, False, False],
    ]
    assert tg.block_ids[0, 0].tolist() == [2, 99, 99] and tg.labels[0, 0].tolist() == [3, 4, 5]
    assert tg.prev_tokens[0, 0].tolist() == [2, 3, 4] and tg.target_positions[0, 0].tolist() == [2, 3, 4]
    assert not tg.slot_mask[1].any()


def test_slot_supervision_in_the_engines_layout():
    # sample_from_anchor false: slot 0 (the anchor, the bonus token) predicts nothing, slot k the token at p+k.
    from deepspec.models.dspark import block_targets, drafting_slots

    loss_mask = torch.tensor([[0, 0, 1, 1, 1, 0, 1, 1]])
    anchors, valid = torch.tensor([[2, 3, 6]]), torch.tensor([[True, True, True]])
    ids = torch.arange(8).view(1, 8) + 10
    tg = block_targets(
        input_ids=ids,
        loss_mask=loss_mask,
        anchors=anchors,
        anchor_valid=valid,
        block_size=3,
        mask_token_id=99,
        sample_from_anchor=False,
    )
    # anchor 2: positions 3, 4 supervised; anchor 3: 4, then 5 is not; anchor 6: 7, then the end.
    assert tg.slot_mask[0].tolist() == [[False, True, True], [False, True, False], [False, True, False]]
    assert tg.block_ids[0, 0].tolist() == [12, 99, 99] and tg.positions[0, 0].tolist() == [2, 3, 4]
    assert tg.labels[0, 0].tolist() == [12, 13, 14] and tg.target_positions[0, 0].tolist() == [1, 2, 3]
    assert tg.prev_tokens[0, 0].tolist() == [11, 12, 13]
    drafting = drafting_slots(tg, sample_from_anchor=False)
    assert drafting.labels[0, 0].tolist() == [13, 14] and drafting.target_positions[0, 0].tolist() == [2, 3]
    assert drafting.slot_mask[0].tolist() == [[True, True], [True, False], [True, False]]
    # The same tokens as DeepSpec's slots 0..1 of the same anchors, from the next slot (own position) each.
    ours = block_targets(
        input_ids=ids, loss_mask=loss_mask, anchors=anchors, anchor_valid=valid, block_size=3, mask_token_id=99
    )
    assert torch.equal(drafting.labels, ours.labels[:, :, :2]) and torch.equal(
        drafting.slot_mask, ours.slot_mask[:, :, :2]
    )
    assert torch.equal(drafting.target_positions, ours.target_positions[:, :, :2])


@pytest.mark.parametrize(
    "name",
    ["dspark_vanilla", "dspark_gated", "dspark_rnn_conf_h_only", "dspark_rnn", "gemma4_dspark", "gemma4_k_eq_v_rnn"],
)
def test_gradients_reach_every_trainable_parameter_and_never_the_frozen_ones(name):
    draft = make_draft(name, dtype=torch.float32)
    _, sums = batched_loss(draft, *make_batch(dtype=torch.float32))
    (sums["loss_sum"] / sums["weight_sum"]).backward()
    frozen = {"embed_tokens.weight", "lm_head.weight"}
    for pname, p in draft.named_parameters():
        if pname in frozen:
            assert not p.requires_grad and p.grad is None, pname
        else:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {pname}"
    assert {id(p) for p in draft.trainable_parameters()}.isdisjoint(
        {id(draft.embed_tokens.weight), id(draft.lm_head.weight)}
    )


@pytest.mark.parametrize("name", ["dspark_vanilla", "dflash", "gemma4_dspark"])
def test_save_from_pretrained_round_trip_is_exact(name, tmp_path):
    draft = make_draft(name, dtype=torch.float32)
    draft.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    family = "Gemma4" if name.startswith("gemma4") else "Qwen3"
    assert saved["architectures"] == [f"{family}DSparkModel"] and saved["tie_word_embeddings"] is False
    assert (tmp_path / "model.safetensors").exists()
    loaded = load_draft(tmp_path)
    assert type(loaded).__name__ == f"{family}DSparkModel" and isinstance(loaded, DSparkDraftModel)
    also = DSparkDraftModel.from_pretrained(tmp_path)
    assert type(also) is type(loaded)
    a, b = draft.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not loaded.embed_tokens.weight.requires_grad and not loaded.lm_head.weight.requires_grad
    batch = make_batch(dtype=torch.float32)
    with torch.no_grad():
        _, s1 = batched_loss(draft, *batch)
        _, s2 = batched_loss(loaded, *batch)
    assert torch.equal(s1["loss_sum"], s2["loss_sum"])


def test_public_layout_config_json_loads_with_expected_weight_names(tmp_path):
    # A config.json as released DeepSpec drafts ship it: Qwen3 keys + the DSpark keys.
    config = {
        "architectures": ["Qwen3DSparkModel"],
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
        "vocab_size": V,
        "torch_dtype": "bfloat16",
        "num_hidden_layers": 2,
        "tie_word_embeddings": False,
        "block_size": 7,
        "mask_token_id": MASK,
        "target_layer_ids": [1, 9, 17, 25, 33],
        "num_target_layers": 36,
        "num_anchors": 512,
        "markov_rank": 8,
        "markov_head_type": "vanilla",
        "enable_confidence_head": True,
        "confidence_head_with_markov": True,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    r, n = 8, 5
    shapes = {
        "embed_tokens.weight": (V, H),
        "lm_head.weight": (V, H),
        "fc.weight": (H, n * H),
        "hidden_norm.weight": (H,),
        "norm.weight": (H,),
        "markov_head.markov_w1.weight": (V, r),
        "markov_head.markov_w2.weight": (V, r),
        "confidence_head.proj.weight": (1, H + r),
        "confidence_head.proj.bias": (1,),
    }
    for i in range(2):
        pre = f"layers.{i}."
        shapes.update(
            {
                pre + "self_attn.q_proj.weight": (64, H),
                pre + "self_attn.k_proj.weight": (32, H),
                pre + "self_attn.v_proj.weight": (32, H),
                pre + "self_attn.o_proj.weight": (H, 64),
                pre + "self_attn.q_norm.weight": (16,),
                pre + "self_attn.k_norm.weight": (16,),
                pre + "mlp.gate_proj.weight": (64, H),
                pre + "mlp.up_proj.weight": (64, H),
                pre + "mlp.down_proj.weight": (H, 64),
                pre + "input_layernorm.weight": (H,),
                pre + "post_attention_layernorm.weight": (H,),
            }
        )
    g = torch.Generator().manual_seed(3)
    tensors = {k: torch.randn(s, generator=g).to(torch.bfloat16) for k, s in shapes.items()}
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    draft = load_draft(tmp_path)  # strict: a missing or unexpected tensor would raise
    assert type(draft).__name__ == "Qwen3DSparkModel" and draft.config.algorithm == "dspark"
    assert draft.config.rope_parameters["rope_theta"] == 1000000  # legacy rope keys understood
    state = draft.state_dict()
    assert set(state) == set(shapes)
    for key, value in tensors.items():
        assert torch.equal(state[key].to(torch.bfloat16), value), key
    rebuilt = draft_config_from_dict(config)
    assert rebuilt.target_layer_ids == [1, 9, 17, 25, 33] and rebuilt.markov_rank == 8


def test_gemma4_draft_uses_the_family_embedding_scale_and_softcap():
    draft = make_draft("gemma4_dspark", dtype=torch.float32)
    target = Target(model_from_config(draft_math_target_config("gemma4"), seed=0))
    draft.load_target_weights(target)
    ids = torch.randint(0, V, (2, 5))
    torch.testing.assert_close(draft.embed(ids), target.embed_tokens(ids))  # sqrt(H)-scaled, from the family
    last = torch.randn(2, 5, H) * 10
    torch.testing.assert_close(draft.target_logits(last), target.logits(last))
    attn = draft.layers[0].self_attn
    assert attn.scaling == 1.0 and attn.head_dim == 8  # family attention: full-attention head dim


def test_config_errors_say_what_to_change():
    from deepspec.models import DraftConfigError

    base = dict(num_draft_layers=1, target_layer_ids=[0, 1], mask_token_id=MASK)
    qwen3 = draft_math_target_config("qwen3")
    with pytest.raises(DraftConfigError, match="markov_rank=0"):
        draft_config_from_target(qwen3, dict(base, algorithm="dflash", markov_rank=4))
    with pytest.raises(DraftConfigError, match="markov_head_type"):
        draft_config_from_target(qwen3, dict(base, algorithm="dspark", markov_rank=4, markov_head_type="lstm"))
    with pytest.raises(DraftConfigError, match="mask_token_id"):
        draft_config_from_target(qwen3, dict(base, algorithm="dspark", mask_token_id=V))
    with pytest.raises(ValueError, match="last layer"):
        draft_config_from_target(qwen3, dict(base, algorithm="dspark", target_layer_ids=[0, 4]))
