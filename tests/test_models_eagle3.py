"""Eagle3 draft: the batched TTT unroll equals a naive per-step, per-position loop; gradients; save/load."""

import json

import pytest
import torch

from deepspec.models import Eagle3DraftModel, build_draft, draft_config_from_target, eagle3_metrics, load_draft
from deepspec.recipes import model_recipe
from references import DECAY, H, S, V, eagle3_batch, eagle3_batched, naive_unroll
from shared_targets import draft_math_target_config


def make_draft(family="qwen3", dtype=torch.float64, layers=1):
    model_cfg = dict(
        model_recipe("eagle3", target="unused", target_layer_ids=[0, 1, 3]),
        ttt_length=S,
        step_loss_decay=DECAY,
        num_draft_layers=layers,
    )
    torch.manual_seed(0)
    draft = build_draft(draft_config_from_target(draft_math_target_config(family), model_cfg)).to(dtype)
    with torch.no_grad():
        for name, p in draft.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
        for name, b in draft.named_buffers():
            if name.endswith("layer_scalar"):
                b.fill_(0.75)
    return draft


@pytest.mark.parametrize(
    "family,layers,backend",
    [("qwen3", 1, "sdpa"), ("qwen3", 2, "eager"), ("gemma4", 1, "sdpa"), ("gemma4_k_eq_v", 2, "sdpa")],
)
def test_ttt_unroll_equals_naive_loop(family, layers, backend):
    draft = make_draft(family, layers=layers)
    batch = eagle3_batch()
    out, sums = eagle3_batched(draft, *batch, backend=backend)
    ref = naive_unroll(draft, *batch)
    assert out.logits.shape == (S, 2, 12, V)
    tol = 1e-6 if family.startswith("gemma4") else 1e-7  # Gemma4RMSNorm computes in float32
    torch.testing.assert_close(
        sums["loss_sum"].double(), torch.as_tensor(ref["loss_sum"], dtype=torch.float64), rtol=tol, atol=tol
    )
    torch.testing.assert_close(sums["weight_sum"].double(), torch.tensor(ref["weight_sum"], dtype=torch.float64))
    assert sums["step_count"].tolist() == ref["count"] and sums["step_correct"].tolist() == ref["correct"]
    assert all(0 <= v <= 1 for k, v in eagle3_metrics(sums).items() if k.startswith("accuracy@"))


@pytest.mark.parametrize("family,layers", [("qwen3", 2), ("gemma4", 1)])
def test_gradients_reach_every_trainable_parameter_and_never_the_frozen_ones(family, layers):
    draft = make_draft(family, dtype=torch.float32, layers=layers)
    _, sums = eagle3_batched(draft, *eagle3_batch(dtype=torch.float32))
    (sums["loss_sum"] / sums["weight_sum"]).backward()
    for layer in draft.layers:  # every layer fuses [embed ; hidden_norm(x)]: 2H-wide q/k/v
        assert layer.self_attn.q_proj.in_features == 2 * H and layer.self_attn.k_proj.in_features == 2 * H
    for name, p in draft.named_parameters():
        if name in ("embed_tokens.weight", "lm_head.weight"):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"


@pytest.mark.parametrize("family", ["qwen3", "gemma4"])
def test_save_from_pretrained_round_trip_is_exact(family, tmp_path):
    draft = make_draft(family, dtype=torch.float32)
    draft.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    arch = f"{family[:1].upper()}{family[1:]}Eagle3Model"
    assert saved["architectures"] == [arch] and saved["ttt_length"] == S and saved["draft_num_hidden_layers"] == 1
    loaded = load_draft(tmp_path)
    assert type(loaded).__name__ == arch and isinstance(loaded, Eagle3DraftModel)
    assert isinstance(Eagle3DraftModel.from_pretrained(tmp_path), Eagle3DraftModel)
    a, b = draft.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert {"fc.weight", "layers.0.hidden_norm.weight", "norm.weight", "layers.0.self_attn.q_proj.weight"} <= set(a)
    assert "hidden_norm.weight" not in a  # DeepSpec's layout: the norm lives in each layer
    batch = eagle3_batch(dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(eagle3_batched(draft, *batch)[1]["loss_sum"], eagle3_batched(loaded, *batch)[1]["loss_sum"])


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_ttt_mask_matches_dense(monkeypatch):
    monkeypatch.setenv("DEEPSPEC_FLEX_EAGER", "1")  # uncompiled flex: CPU forward only (no CPU backward)
    draft = make_draft(dtype=torch.float32)
    ids, hidden, loss_mask, _, _ = eagle3_batch(dtype=torch.float32)
    with torch.no_grad():
        dense = draft.forward_train(input_ids=ids, hidden_states=hidden, loss_mask=loss_mask, attention_backend="sdpa")
        flex = draft.forward_train(input_ids=ids, hidden_states=hidden, loss_mask=loss_mask, attention_backend="flex")
    torch.testing.assert_close(flex.logits, dense.logits, rtol=1e-4, atol=1e-4)
