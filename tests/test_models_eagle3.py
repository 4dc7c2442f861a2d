"""Eagle3 draft: the batched TTT unroll equals a naive per-step, per-position loop; gradients; save/load."""

import json

import pytest
import torch

from deepspec.models import (
    Eagle3DraftModel,
    build_draft,
    draft_config_from_target,
    eagle3_loss,
    eagle3_metrics,
    load_draft,
)
from deepspec.recipes import eagle3_model
from test_models_dspark import capped, gemma4_k_eq_v_target_config, gemma4_target_config, qwen3_target_config, rope

V, H, S, DECAY = 96, 32, 3, 0.8
TARGETS = {"qwen3": qwen3_target_config, "gemma4": gemma4_target_config, "gemma4_k_eq_v": gemma4_k_eq_v_target_config}


def make_draft(family="qwen3", dtype=torch.float64, layers=1):
    model_cfg = dict(
        eagle3_model(target="unused", target_layer_ids=[0, 1, 3]),
        ttt_length=S,
        step_loss_decay=DECAY,
        num_draft_layers=layers,
    )
    torch.manual_seed(0)
    draft = build_draft(draft_config_from_target(TARGETS[family](), model_cfg)).to(dtype)
    with torch.no_grad():
        for name, p in draft.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
        for name, b in draft.named_buffers():
            if name.endswith("layer_scalar"):
                b.fill_(0.75)
    return draft


LENGTHS = (12, 10)  # row 1 is right-padded to 12


def make_batch(dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    B, T = 2, 12
    ids = torch.randint(4, V, (B, T), generator=g)
    loss_mask = torch.zeros(B, T, dtype=torch.long)
    loss_mask[0, 4:] = 1  # runs to the last token: it has no next token and leaves the mask
    loss_mask[1, 3:10] = 1  # ends at the last valid token of a padded row
    ids[1, 10:] = 0
    attention_mask = torch.arange(T)[None] < torch.tensor(LENGTHS)[:, None]
    return (
        ids,
        torch.randn(B, T, 3 * H, generator=g, dtype=dtype),
        loss_mask,
        torch.randn(B, T, H, generator=g, dtype=dtype) * 3,
        attention_mask,
    )


def naive_unroll(draft, ids, hidden, loss_mask, last, attention_mask):
    """Per sequence, per step, per position: explicit key lists (step-0 keys j<=t, own earlier steps at t)."""
    cfg = draft.config
    B, T = ids.shape
    gemma = "gemma" in cfg.model_type
    sums = {"loss_sum": 0.0, "weight_sum": 0.0, "correct": [0.0] * S, "count": [0.0] * S}
    for b in range(B):
        pos = torch.arange(T + S)[None]
        x0 = draft.embed(ids[b : b + 1])
        cos, sin = draft.rotary_emb(x0, pos, "full_attention") if gemma else draft.rotary_emb(x0, pos)
        cos, sin = cos[0], sin[0]
        prev = draft.fc(hidden[b])  # [T, H]: g_t at step 0
        keys = [[None] * S for _ in draft.layers]  # keys[layer][step] = (k [T, hkv, d], v)
        for s in range(S):
            out = []
            for t in range(T):
                tok = int(ids[b, min(t + 1 + s, T - 1)])
                x = prev[t]
                for li, layer in enumerate(draft.layers):
                    attn, d = layer.self_attn, layer.self_attn.head_dim
                    # every layer: [input_layernorm(embed) ; its own hidden_norm(x)], residual = x
                    inp = torch.cat([layer.input_layernorm(draft.embed(torch.tensor(tok))), layer.hidden_norm(x)])
                    c, si = cos[t + s : t + s + 1], sin[t + s : t + s + 1]
                    q = rope(attn.q_norm(attn.q_proj(inp).view(1, -1, d)), c, si)[0]
                    k_raw = attn.k_proj(inp).view(-1, d)
                    k = rope(attn.k_norm(k_raw)[None], c, si)[0]
                    v = k_raw if gemma and cfg.attention_k_eq_v else attn.v_proj(inp).view(-1, d)
                    if gemma:
                        v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps)  # scale-free v_norm
                    if keys[li][s] is None:
                        keys[li][s] = ([None] * T, [None] * T)
                    keys[li][s][0][t], keys[li][s][1][t] = k, v
                    # step-0 keys at j <= t; for this index t, the keys steps 1..s produced
                    ks = [keys[li][0][0][j] for j in range(t + 1)] + [keys[li][i][0][t] for i in range(1, s + 1)]
                    vs = [keys[li][0][1][j] for j in range(t + 1)] + [keys[li][i][1][t] for i in range(1, s + 1)]
                    K, Vv = torch.stack(ks), torch.stack(vs)  # [L, hkv, d]
                    rep = q.shape[0] // K.shape[1]
                    K, Vv = K.repeat_interleave(rep, 1), Vv.repeat_interleave(rep, 1)
                    w = (torch.einsum("hd,lhd->hl", q, K) * (1.0 if gemma else d**-0.5)).softmax(-1)
                    o = attn.o_proj(torch.einsum("hl,lhd->hd", w, Vv).reshape(-1))
                    if gemma:  # sandwich norms and layer_scalar
                        x = x + layer.post_attention_layernorm(o)
                        x = (
                            x + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(x)))
                        ) * layer.layer_scalar
                    else:
                        x = x + o
                        x = x + layer.mlp(layer.post_attention_layernorm(x))
                out.append(x)
                # DeepSpec: step s supervises t iff loss_mask[t+s] and t+s is not the row's last valid token,
                # against the target distribution at t+s+1; each step's sum is divided by B*T.
                j = t + s
                if j < T and loss_mask[b, j] and j != int(attention_mask[b].sum()) - 1:
                    logits = capped(cfg, draft.norm(x) @ draft.lm_head.weight.T)
                    tl = capped(cfg, last[b, j + 1] @ draft.lm_head.weight.T)
                    ce = -(tl.softmax(-1) * logits.log_softmax(-1)).sum()
                    sums["loss_sum"] += DECAY**s * ce / (B * T)
                    sums["correct"][s] += float(logits.argmax() == tl.argmax())
                    sums["count"][s] += 1
            prev = torch.stack(out)
    sums["weight_sum"] = 1.0
    return sums


def batched(draft, ids, hidden, loss_mask, last, attention_mask, backend="sdpa"):
    out = draft.forward_train(
        input_ids=ids,
        hidden_states=hidden,
        loss_mask=loss_mask,
        attention_mask=attention_mask,
        attention_backend=backend,
    )
    return out, eagle3_loss(
        logits=out.logits,
        target_logits=draft.gather_target_logits(last, out.target_positions),
        step_mask=out.step_mask,
        step_loss_decay=DECAY,
    )


@pytest.mark.parametrize(
    "family,layers,backend",
    [("qwen3", 1, "sdpa"), ("qwen3", 2, "eager"), ("gemma4", 1, "sdpa"), ("gemma4_k_eq_v", 2, "sdpa")],
)
def test_ttt_unroll_equals_naive_loop(family, layers, backend):
    draft = make_draft(family, layers=layers)
    batch = make_batch()
    out, sums = batched(draft, *batch, backend=backend)
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
    _, sums = batched(draft, *make_batch(dtype=torch.float32))
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
    batch = make_batch(dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(batched(draft, *batch)[1]["loss_sum"], batched(loaded, *batch)[1]["loss_sum"])


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_ttt_mask_matches_dense(monkeypatch):
    monkeypatch.setenv("DEEPSPEC_FLEX_EAGER", "1")  # uncompiled flex: CPU forward only (no CPU backward)
    draft = make_draft(dtype=torch.float32)
    ids, hidden, loss_mask, _, _ = make_batch(dtype=torch.float32)
    with torch.no_grad():
        dense = draft.forward_train(input_ids=ids, hidden_states=hidden, loss_mask=loss_mask, attention_backend="sdpa")
        flex = draft.forward_train(input_ids=ids, hidden_states=hidden, loss_mask=loss_mask, attention_backend="flex")
    torch.testing.assert_close(flex.logits, dense.logits, rtol=1e-4, atol=1e-4)
