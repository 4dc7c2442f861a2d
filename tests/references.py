"""Independent references the tests compare against, and the batches they run on.

- The drafts' math written out naively in float64: DSpark / DFlash one block at a time
  (:func:`naive_loss`), Eagle3 one step and one position at a time (:func:`naive_unroll`), each next to the
  batched forward it checks (:func:`batched_loss`, :func:`eagle3_batched`); test_models_dspark,
  test_models_eagle3 and test_released_layout (released checkpoints must compute the same formulas).
- Decoding: the target's exact token marginals by enumeration, the TV bound a sampled distribution must meet,
  and transformers' own greedy output (test_decoding, test_recurrent_target).
"""

import math

import torch
import torch.nn.functional as F

from deepspec.models import eagle3_loss, parallel_draft_loss, sample_anchors
from deepspec.targets import Target

# The draft tests' sizes: vocab, hidden, block size, mask token; Eagle3's unroll length and step loss decay.
V, H, G, MASK = 96, 32, 4, 3
S, DECAY = 3, 0.8
LOSS = dict(loss_decay_gamma=4.0, ce_loss_alpha=0.1, l1_loss_alpha=0.9, confidence_head_alpha=1.0)


# ----------------------------------------------------------------------------- DSpark / DFlash


def make_batch(dtype=torch.float64, seed=1):
    """(ids, hidden, loss_mask, last, anchors, valid) of two rows: many blocks, one span cut mid-sequence."""
    g = torch.Generator().manual_seed(seed)
    B, T = 2, 24
    ids = torch.randint(4, V, (B, T), generator=g)
    loss_mask = torch.zeros(B, T, dtype=torch.long)
    loss_mask[0, 8:] = 1
    loss_mask[1, 5:14] = 1  # a span that ends mid-sequence: blocks get cut there
    loss_mask[1, 17:21] = 1
    hidden = torch.randn(B, T, 3 * H, generator=g, dtype=dtype)
    last = torch.randn(B, T, H, generator=g, dtype=dtype) * 3
    anchors, valid = sample_anchors(loss_mask, num_anchors=6, block_size=G, generator=g)
    return ids, hidden, loss_mask, last, anchors, valid


# ----------------------------------------------------------------------------- naive reference


def rope(x, cos, sin):  # x [L, heads, d], cos/sin [L, d]
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rot * sin[:, None]


def naive_block(draft, ctx_states, block_ids, anchor):
    """One block on its own: keys = [fc-normed context 0..anchor-1 ; block], all visible (no mask needed)."""
    cfg = draft.config
    ctx = draft.hidden_norm(draft.fc(ctx_states))  # [anchor, H]
    x = draft.embed(block_ids)  # [G, H]
    pos = torch.arange(anchor + G)[None]
    cos, sin = (
        draft.rotary_emb(x[None], pos, "full_attention")
        if "gemma" in cfg.model_type
        else draft.rotary_emb(x[None], pos)
    )
    cos, sin = cos[0], sin[0]
    gemma = "gemma" in cfg.model_type  # sandwich norms + layer_scalar, as Gemma 4's own decoder layer
    for layer in draft.layers:
        attn = layer.self_attn
        d = attn.head_dim
        normed = layer.input_layernorm(x)
        kv_in = torch.cat([ctx, normed])
        q = rope(attn.q_norm(attn.q_proj(normed).view(G, -1, d)), cos[anchor:], sin[anchor:])
        k_raw = attn.k_proj(kv_in).view(len(kv_in), -1, d)
        k = rope(attn.k_norm(k_raw), cos, sin)
        v = (
            k_raw
            if cfg.model_type.startswith("gemma") and cfg.attention_k_eq_v
            else attn.v_proj(kv_in).view(len(kv_in), -1, d)
        )
        if gemma:
            v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps)  # scale-free v_norm
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) * (1.0 if gemma else d**-0.5)
        out = attn.o_proj(torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(G, -1))
        if gemma:
            x = x + layer.post_attention_layernorm(out)
            x = x + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(x)))
            x = x * layer.layer_scalar
        else:
            x = x + out
            x = x + layer.mlp(layer.post_attention_layernorm(x))
    return draft.norm(x)


def capped(cfg, logits):
    cap = getattr(cfg, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def naive_heads(draft, h, prev):
    cfg = draft.config
    logits = capped(cfg, h @ draft.lm_head.weight.T)
    if cfg.markov_rank:
        mh, r = draft.markov_head, cfg.markov_rank
        e = mh.markov_w1.weight[prev]  # e_k = W1[x_{k-1}]
        if cfg.markov_head_type == "vanilla":
            bias = e @ mh.markov_w2.weight.T
        elif cfg.markov_head_type == "gated":
            z = torch.sigmoid(torch.cat([h, e], -1) @ mh.gate_proj.weight.T + mh.gate_proj.bias) * e
            bias = z @ mh.markov_w2.weight.T
        else:  # paper eq. 6: z_k = [s_{k-1}; e_k; h_k] -> gate g, candidate c, output o
            s, bias = torch.zeros(r, dtype=h.dtype), []
            for k in range(G):
                proj = torch.cat([s, e[k], h[k]]) @ mh.joint_proj.weight.T + mh.joint_proj.bias
                g, c, o = proj[:r], proj[r : 2 * r], proj[2 * r :]
                s = torch.sigmoid(g) * s + (1 - torch.sigmoid(g)) * torch.tanh(c)
                bias.append(torch.tanh(o) @ mh.markov_w2.weight.T)
            bias = torch.stack(bias)
        logits = logits + bias
    conf = None
    if cfg.enable_confidence_head:  # paper eq. 7: [h_k ; W1[x_{k-1}]] for every head type
        inp = torch.cat([h, draft.markov_head.markov_w1.weight[prev]], -1) if cfg.confidence_head_with_markov else h
        conf = inp @ draft.confidence_head.proj.weight[0] + draft.confidence_head.proj.bias[0]
    return logits, conf


def naive_loss(draft, ids, hidden, loss_mask, last, anchors, valid):
    """Loop over sequences, anchors and slots; returns the same sums as parallel_draft_loss."""
    T = ids.shape[1]
    sums = dict(loss_sum=0.0, weight_sum=0.0, ce_sum=0.0, l1_sum=0.0, conf_sum=0.0, tau_sum=0.0, block_count=0.0)
    slot_logits = {}
    for b in range(ids.shape[0]):
        for a in range(anchors.shape[1]):
            if not valid[b, a]:
                continue
            p = int(anchors[b, a])
            block_ids = torch.tensor([int(ids[b, p])] + [MASK] * (G - 1))
            prev = torch.tensor([int(ids[b, min(p + k, T - 1)]) for k in range(G)])
            logits, conf = naive_heads(draft, naive_block(draft, hidden[b, :p], block_ids, p), prev)
            survive, tau = 1.0, 1.0
            for k in range(G):
                if p + k + 1 >= T or not loss_mask[b, p + k + 1]:
                    break  # supervision stops at the first token outside the loss mask
                w = math.exp(-k / LOSS["loss_decay_gamma"])
                p_d = logits[k].softmax(-1)
                p_t = capped(draft.config, last[b, p + k] @ draft.lm_head.weight.T).softmax(-1)
                ce = -torch.log(p_d[ids[b, p + k + 1]])
                l1 = (p_d - p_t).abs().sum()
                sums["weight_sum"] += w
                sums["ce_sum"] += w * ce
                sums["l1_sum"] += w * l1
                if conf is not None:
                    sums["conf_sum"] += w * F.binary_cross_entropy_with_logits(conf[k], (1 - 0.5 * l1).detach())
                survive *= float(1 - 0.5 * l1.detach())
                tau += survive
                slot_logits[(b, a, k)] = logits[k]
            sums["tau_sum"] += tau
            sums["block_count"] += 1
    sums["loss_sum"] = (
        LOSS["ce_loss_alpha"] * sums["ce_sum"]
        + LOSS["l1_loss_alpha"] * sums["l1_sum"]
        + LOSS["confidence_head_alpha"] * sums["conf_sum"]
    )
    return sums, slot_logits


def batched_loss(draft, ids, hidden, loss_mask, last, anchors, valid, backend="sdpa"):
    out = draft.forward_train(
        input_ids=ids,
        hidden_states=hidden,
        loss_mask=loss_mask,
        anchors=anchors,
        anchor_valid=valid,
        attention_backend=backend,
    )
    alpha = dict(LOSS, confidence_head_alpha=LOSS["confidence_head_alpha"] if out.confidence_logits is not None else 0)
    sums = parallel_draft_loss(
        logits=out.logits,
        target_logits=draft.gather_target_logits(last, out.targets),
        labels=out.targets.labels,
        slot_mask=out.targets.slot_mask,
        confidence_logits=out.confidence_logits,
        **alpha,
    )
    return out, sums


# ----------------------------------------------------------------------------- Eagle3


LENGTHS = (12, 10)  # row 1 is right-padded to 12


def eagle3_batch(dtype=torch.float64):
    """(ids, hidden, loss_mask, last, attention_mask) of two rows, the second right-padded."""
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


def eagle3_batched(draft, ids, hidden, loss_mask, last, attention_mask, backend="sdpa"):
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


# ----------------------------------------------------------------------------- decoding


def hf_greedy(target: Target, prompt, n):
    """transformers' ``generate``: the target's greedy continuation of ``prompt`` (``n`` tokens, no stop token)."""
    out = target.model.generate(
        torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    return out[0, len(prompt) :].tolist()


def exact_token_marginals(target: Target, prompt, steps: int):
    """P(token i = v) for i = 1..steps by enumerating every prefix (small vocab)."""
    V = target.vocab_size
    prefixes, weights = torch.tensor([prompt]), torch.ones(1, dtype=torch.float64)
    marginals = []
    for _ in range(steps):
        with torch.no_grad():
            probs = torch.softmax(target.model(input_ids=prefixes).logits[:, -1].double(), -1)
        joint = weights[:, None] * probs  # [prefixes, V]
        marginals.append(joint.sum(0))
        prefixes = torch.cat([prefixes.repeat_interleave(V, 0), torch.arange(V).repeat(len(prefixes))[:, None]], 1)
        weights = joint.reshape(-1)
    return marginals


def tv_bound(*, outcomes: int, samples: int, delta: float = 1e-4) -> float:
    # E[TV] <= 1/2 sum_v sqrt(p_v / N) <= 1/2 sqrt(K / N) (Cauchy-Schwarz); TV moves by <= 1/N per
    # sample, so McDiarmid adds sqrt(ln(1/delta) / 2N) at confidence 1 - delta.
    return 0.5 * math.sqrt(outcomes / samples) + math.sqrt(math.log(1 / delta) / (2 * samples))
