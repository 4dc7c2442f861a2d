"""Draft proposers: what each algorithm does between two target verifications.

Common contract (driven by :mod:`deepspec.decoding.engine`):

* ``extend(...)`` — the target just ran over new slots; the proposer appends its own context for
  them (same slot order as the target's KV cache, see :mod:`deepspec.decoding.slots`). This is how
  the draft's context features are refreshed from each verify pass.
* ``propose(...)`` — draft γ tokens after each row's pending token (the last committed token, not yet
  through the target). Returns the tokens, the distribution each was drawn from, and raw confidence
  logits when the draft has a confidence head.
* ``crop`` / ``select_rows`` — mirror the engine's slot table.

DSpark / DFlash (:class:`ParallelProposer`): one bidirectional backbone pass over the block
[pending, mask, ..., mask] at positions p..p+γ−1 against the cached context keys/values, then (DSpark)
the Markov head samples left to right, each slot's bias depending on the token drawn before it.
Eagle3 (:class:`Eagle3Proposer`): a chain of ``ttt_length`` single-token steps, each feeding its own
output state and token to the next, with a per-round chain cache on top of the context cache.

Draft cost. Each proposer also says what its two calls compute for one request
(``extend_flops`` / ``propose_flops``), counted by one rule (:func:`linear_flops`, :func:`attention_flops`):
2 FLOPs per multiply-add of every ``nn.Linear`` a token passes (the frozen LM head included, embedding
look-ups free), and 4·(heads·head_dim) per (query, key) pair an attention scores and sums over (masked
pairs count: the kernel computes them). Norms, rotary, softmax and sampling are left out (O(H) or O(V)
per token, not O(H²) or O(H·V)). The counts follow the module shapes, so they hold for every family.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deepspec.decoding.slots import SlotTable
from deepspec.decoding.verify import probs_from_logits, sample
from deepspec.models.blocks import attend, project_kv, project_q, project_qkv, rotary_cos_sin
from deepspec.models.draft_config import DRAFT_LAYER_TYPE


@dataclass
class Proposal:
    tokens: torch.Tensor  # [B, γ] drafted tokens
    probs: torch.Tensor  # [B, γ, V] the distribution each token was drawn from (float32)
    conf_logits: torch.Tensor | None  # [B, γ] raw confidence logits (DSpark), else None


class _LayerCache:
    """Per draft layer keys/values [B, hkv, L, d] of the context slots."""

    def __init__(self, num_layers: int):
        self.kv = [None] * num_layers

    def append(self, i: int, k: torch.Tensor, v: torch.Tensor) -> None:
        old = self.kv[i]
        self.kv[i] = (k, v) if old is None else (torch.cat([old[0], k], 2), torch.cat([old[1], v], 2))

    def with_new(self, i: int, k: torch.Tensor, v: torch.Tensor):
        """Cached keys/values followed by ``k``/``v`` (not stored)."""
        old = self.kv[i]
        return (k, v) if old is None else (torch.cat([old[0], k], 2), torch.cat([old[1], v], 2))

    def crop(self, n: int) -> None:
        if n > 0:
            self.kv = [(k[:, :, :-n], v[:, :, :-n]) for k, v in self.kv]

    def select_rows(self, rows: torch.Tensor) -> None:
        self.kv = [None if kv is None else (kv[0][rows], kv[1][rows]) for kv in self.kv]


def linear_flops(*modules: torch.nn.Module) -> int:
    """FLOPs per token through every ``nn.Linear`` inside ``modules``: 2 · (its weight's in × out)."""
    return 2 * sum(m.weight.numel() for mod in modules for m in mod.modules() if isinstance(m, torch.nn.Linear))


def attention_flops(attn: torch.nn.Module, *, pairs: int) -> int:
    """FLOPs of ``pairs`` (query, key) pairs of one attention: q·k and the weighted sum of v, per query head."""
    return 4 * int(attn.q_proj.out_features) * int(pairs)


class ParallelProposer:
    """DSpark (Markov + confidence heads) and DFlash (``markov_rank == 0``). DeepSpec's layout: a block of
    γ slots [pending, mask, ...], γ = ``block_size``; the engines' layout (``sample_from_anchor`` false):
    γ + 1 slots whose slot 0 (pending, the bonus token) drafts nothing, γ = ``block_size - 1``. ``gamma``
    asks for fewer (an engine's smaller num_speculative_tokens)."""

    def __init__(self, draft, *, gamma: int | None = None):
        self.draft = draft.eval()
        self.bonus_slots = 0 if draft.samples_from_anchor else 1
        self.gamma = int(gamma or int(draft.config.block_size) - self.bonus_slots)
        self.mask_token_id = int(draft.config.mask_token_id)
        self.cache = _LayerCache(len(draft.layers))

    def reset(self, *, batch: int) -> None:
        self.cache = _LayerCache(len(self.draft.layers))

    @torch.no_grad()
    def extend(self, *, slots: SlotTable, hidden_states, positions, valid, next_tokens) -> None:
        d = self.draft
        ctx = d.context_features(hidden_states)
        rope = rotary_cos_sin(d.rotary_emb, ctx, positions, DRAFT_LAYER_TYPE)
        for i, layer in enumerate(d.layers):  # every layer projects the same H_ctx (KV injection)
            self.cache.append(i, *project_kv(layer.self_attn, ctx, rope))

    @torch.no_grad()
    def propose(self, *, slots: SlotTable, pending, temperature: float, generator=None, sequences=None) -> Proposal:
        d, n = self.draft, self.gamma + self.bonus_slots
        B = pending.shape[0]
        block = torch.full((B, n), self.mask_token_id, dtype=torch.long, device=pending.device)
        block[:, 0] = pending
        pos = slots.next_position()[:, None] + torch.arange(n, device=pending.device)
        x = d.embed(block).to(d.fc.weight.dtype)
        rope = rotary_cos_sin(d.rotary_emb, x, pos, DRAFT_LAYER_TYPE)
        mask = slots.query_mask(query_pos=pos, causal_new=False)  # committed context + the whole block

        def attention_of(i):  # layer i: the block's keys/values join its cached context
            def attention(attn, normed):
                k, v = self.cache.with_new(i, *project_kv(attn, normed, rope))
                return attend(project_q(attn, normed, rope), k, v, scale=attn.scaling, mask=mask, backend="sdpa")

            return attention

        for i, layer in enumerate(d.layers):
            x = layer(x, attention=attention_of(i))
        return self._sample_block(d.norm(x)[:, self.bonus_slots :], pending, temperature, generator)

    def extend_flops(self, *, new_slots: int, cached_slots: int) -> int:
        """One request's extend over ``new_slots`` verified slots: ``fc``, then each layer's k/v projections
        (the context is not run through the layers: KV injection)."""
        d = self.draft
        per_token = linear_flops(d.fc) + sum(
            linear_flops(*(m for m in (layer.self_attn.k_proj, layer.self_attn.v_proj) if m is not None))
            for layer in d.layers
        )
        return per_token * int(new_slots)

    def propose_flops(self, *, cached_slots: int) -> int:
        """One request's block: γ slots through every layer (each attending the cache and the whole block),
        then per slot the LM head and (DSpark) the Markov and confidence heads."""
        d, G = self.draft, self.gamma
        layers = sum(
            linear_flops(layer) * G + attention_flops(layer.self_attn, pairs=G * (cached_slots + G))
            for layer in d.layers
        )
        heads = [d.lm_head] + [m for m in (d.markov_head, d.confidence_head) if m is not None]
        return layers + linear_flops(*heads) * G

    def _sample_block(self, h, pending, temperature, generator) -> Proposal:
        d, G = self.draft, self.gamma
        base = d.base_logits(h)  # [B, G, V]
        if d.markov_head is None:  # DFlash: all slots independent given the backbone
            probs = probs_from_logits(base, temperature)
            conf = d.confidence_head(h) if d.confidence_head is not None else None
            return Proposal(tokens=sample(probs, generator), probs=probs, conf_logits=conf)
        head, prev, state = d.markov_head, pending, d.markov_head.initial_state(h[:, 0])
        tokens, probs, confs = [], [], []
        for k in range(G):  # slot k's Markov bias needs the token drawn at slot k-1 (and the rnn state)
            bias, state = head.step(h[:, k], prev, state)
            p = probs_from_logits(base[:, k] + bias.to(base.dtype), temperature)
            if d.confidence_head is not None:
                confs.append(d.confidence(h[:, k], prev))
            prev = sample(p, generator)
            tokens.append(prev), probs.append(p)
        return Proposal(
            tokens=torch.stack(tokens, 1),
            probs=torch.stack(probs, 1),
            conf_logits=torch.stack(confs, 1) if confs else None,
        )

    def crop(self, n: int) -> None:
        self.cache.crop(n)

    def select_rows(self, rows: torch.Tensor) -> None:
        self.cache.select_rows(rows)


class Eagle3Proposer:
    """Eagle3: step 0 comes from the context pass (state at p−1 with token p), steps 1..γ−1 chain;
    γ = ``ttt_length`` or ``gamma`` (a shorter chain)."""

    def __init__(self, draft, *, gamma: int | None = None):
        self.draft = draft.eval()
        self.gamma = int(gamma or draft.config.ttt_length)
        self.cache = _LayerCache(len(draft.layers))
        self.last_state = None  # [B, H] layer output at each row's last committed slot

    def reset(self, *, batch: int) -> None:
        self.cache, self.last_state = _LayerCache(len(self.draft.layers)), None

    def _layers(self, x, tokens, rope, mask, *, store_in: _LayerCache, below: _LayerCache | None = None):
        """The Eagle3 layer stack on states ``x`` [B, n, H] with input tokens [B, n].

        New keys/values go to ``store_in``; queries see ``below`` (the context) followed by ``store_in``.
        """
        d = self.draft
        emb = d.embed(tokens).to(x.dtype)

        def attention_of(i):  # layer i: new keys/values go to store_in; queries see below, then store_in
            def attention(attn, attn_in):
                q, k, v = project_qkv(attn, attn_in, attn_in, rope, rope)
                store_in.append(i, k, v)
                k, v = store_in.kv[i] if below is None else below.with_new(i, *store_in.kv[i])
                return attend(q, k, v, scale=attn.scaling, mask=mask, backend="sdpa")

            return attention

        for i, layer in enumerate(d.layers):
            x = layer(x, attention=attention_of(i), embeds=emb)
        return x

    @torch.no_grad()
    def extend(self, *, slots: SlotTable, hidden_states, positions, valid, next_tokens) -> None:
        d = self.draft
        g = d.fuse(hidden_states)
        rope = rotary_cos_sin(d.rotary_emb, g, positions, DRAFT_LAYER_TYPE)
        mask = slots.query_mask(query_pos=positions, new_valid=valid)
        x = self._layers(g, next_tokens, rope, mask, store_in=self.cache)
        last = valid.long().cumsum(1).argmax(1)  # last valid new slot of each row
        self.last_state = x[torch.arange(x.shape[0], device=x.device), last]

    @torch.no_grad()
    def propose(self, *, slots: SlotTable, pending, temperature: float, generator=None, sequences=None) -> Proposal:
        d, G = self.draft, self.gamma
        x = self.last_state[:, None]
        p = probs_from_logits(d.base_logits(d.norm(x))[:, 0], temperature)
        tokens, probs = [sample(p, generator)], [p]
        chain = _LayerCache(len(d.layers))  # this round's chain keys, on top of the context cache
        B, last_pos = x.shape[0], slots.next_position() - 1
        for s in range(1, G):  # step s sits at position p-1+s and sees the context + steps 1..s
            pos = (last_pos + s)[:, None]
            rope = rotary_cos_sin(d.rotary_emb, x, pos, DRAFT_LAYER_TYPE)
            mask = torch.cat([slots.valid, slots.valid.new_ones(B, s)], 1)[:, None]
            x = self._layers(x, tokens[-1][:, None], rope, mask, store_in=chain, below=self.cache)
            p = probs_from_logits(d.base_logits(d.norm(x))[:, 0], temperature)
            tokens.append(sample(p, generator)), probs.append(p)
        return Proposal(tokens=torch.stack(tokens, 1), probs=torch.stack(probs, 1), conf_logits=None)

    def extend_flops(self, *, new_slots: int, cached_slots: int) -> int:
        """One request's extend: ``fc`` and every layer over the ``new_slots`` verified slots, each attending
        the cache and the new slots."""
        d, n = self.draft, int(new_slots)
        attn = sum(attention_flops(layer.self_attn, pairs=n * (cached_slots + n)) for layer in d.layers)
        return linear_flops(d.fc, *d.layers) * n + attn

    def propose_flops(self, *, cached_slots: int) -> int:
        """One request's chain: the LM head on γ states; steps 1..γ-1 run every layer on one token that attends
        the cache and the chain so far (step s: s chain keys)."""
        d, G = self.draft, self.gamma
        attn = sum(attention_flops(layer.self_attn, pairs=cached_slots + s) for s in range(1, G) for layer in d.layers)
        return linear_flops(d.lm_head) * G + linear_flops(*d.layers) * (G - 1) + attn

    def crop(self, n: int) -> None:
        self.cache.crop(n)

    def select_rows(self, rows: torch.Tensor) -> None:
        self.cache.select_rows(rows)
        self.last_state = self.last_state[rows]


class TargetSelfProposer:
    """The target drafting for itself (the ceiling check: every draft is accepted, τ = γ + 1).

    Recomputes the whole sequence per drafted token (no cache): only for small diagnostic runs.
    """

    def __init__(self, target, *, gamma: int):
        self.target, self.gamma = target, int(gamma)

    def reset(self, *, batch: int) -> None:
        pass

    def extend(self, **_) -> None:
        pass

    @torch.no_grad()
    def propose(self, *, slots, pending, temperature: float, generator=None, sequences=None) -> Proposal:
        assert sequences is not None, "TargetSelfProposer needs the committed sequences"
        rows_tokens, rows_probs = [], []
        for seq in sequences:
            ids = torch.tensor([seq], device=pending.device)
            toks, ps = [], []
            for _ in range(self.gamma):
                logits = self.target.model(input_ids=ids).logits[0, -1].float()
                p = probs_from_logits(logits, temperature)
                tok = sample(p, generator)
                toks.append(tok), ps.append(p)
                ids = torch.cat([ids, tok.view(1, 1)], 1)
            rows_tokens.append(torch.stack(toks)), rows_probs.append(torch.stack(ps))
        return Proposal(tokens=torch.stack(rows_tokens), probs=torch.stack(rows_probs), conf_logits=None)

    def crop(self, n: int) -> None:
        pass

    def select_rows(self, rows: torch.Tensor) -> None:
        pass
