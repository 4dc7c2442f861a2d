"""DSpark / DFlash parallel block drafter (one module; DFlash = ``markov_rank == 0``, no confidence head).

Shapes: B batch, T context length, A anchors per sequence, G = ``block_size`` (γ), H hidden,
V vocab, n captured target layers.

Context. ``fc`` (Linear n·H -> H) over the concatenated captured target states, then
``hidden_norm`` = ``H_ctx`` [B, T, H]. Every draft layer projects the *same* ``H_ctx`` with its
own ``k_proj``/``v_proj`` (KV injection); context features are not updated by the layers.

Block. Anchor p = the last committed token. Block input = [x_p, mask, ..., mask] (G tokens,
embedded with the frozen target embedding, family scale included); slot k sits at rotary position
p + k and predicts token p + k + 1. Context position j sits at rotary position j.

``sample_from_anchor: false`` (the engines' DFlash layout, vLLM / SGLang / z-lab): the same block and
context, but slot 0 (the anchor) is the bonus token and predicts nothing, and slot k >= 1 predicts token
p + k, its own position; a block of G slots drafts G - 1 tokens. Training drops slot 0 from the outputs
(logits, labels, masks are [B, A, G - 1]).

Which context a block sees: positions j < p (strictly before the anchor). This is what exists at
inference: the target has run over the committed tokens x_0..x_{p-1}; x_p itself (the bonus token
of the last verification, or the first sampled token after prefill) has not been through the
target yet, so it enters the draft only as the block's first token. Inside the block, attention
is bidirectional. Training puts all A blocks of a sequence in one pass (queries = A·G block slots,
keys = [context ; all blocks]) with a block-sparse mask: slot (a, k) sees context j < p_a and the
G slots of block a. Padding must be on the right (anchors are only drawn inside the loss mask).

Markov head (rank r; paper eq. 5-6, DeepSpec's layout), with e_k = W1[x_{k-1}] (W1: V×r,
``markov_w1``) and x_{k-1} the token before slot k's target (slot 0: the anchor token):
  vanilla  bias_k = W2 e_k                                       (W2: r×V, ``markov_w2``)
  gated    z_k = sigmoid(gate_proj([h_k ; e_k])) ⊙ e_k,  bias_k = W2 z_k
  rnn      [g ; c ; o] = joint_proj([s_{k-1} ; e_k ; h_k])     (2r+H -> 3r, with bias), s before slot 0 = 0,
           s_k = sigmoid(g) ⊙ s_{k-1} + (1 - sigmoid(g)) ⊙ tanh(c),  bias_k = W2 tanh(o)
``logits_k = base_logits(h_k) + bias_k`` where base logits are the LM head output after the
family's soft-cap. Training is teacher-forced (x_{k-1} = the true token).

Confidence head (paper eq. 7): ``c_k = proj([h_k ; e_k])`` (a logit; sigmoid at use) for every
Markov head type, or ``proj(h_k)`` alone when ``confidence_head_with_markov`` is false. h_k is the
post-``norm`` draft state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deepspec.models.blocks import (
    DraftLayer,
    DraftPreTrainedModel,
    attend,
    build_norm,
    build_rotary,
    make_flex_mask,
    project_qkv,
    resolve_backend,
    rotary_cos_sin,
)
from deepspec.models.draft_config import DRAFT_LAYER_TYPE, architecture_name
from deepspec.targets import FAMILIES


class MarkovHead(nn.Module):
    """Low-rank token-transition bias added to each slot's logits (see module docstring).

    One slot at a time: :meth:`step` maps (h_k, x_{k-1}, state) to (bias_k, next state); only the
    ``rnn`` head carries a state (``None`` for the others). :meth:`block_bias` runs the slots of
    teacher-forced blocks left to right (training).
    """

    def __init__(self, *, vocab_size: int, hidden_size: int, rank: int, kind: str):
        super().__init__()
        self.kind, self.rank = kind, rank
        self.markov_w1 = nn.Embedding(vocab_size, rank)
        self.markov_w2 = nn.Linear(rank, vocab_size, bias=False)
        if kind == "gated":
            self.gate_proj = nn.Linear(hidden_size + rank, rank)
        elif kind == "rnn":
            # [s_{k-1} ; W1[x_{k-1}] ; h_k] -> [gate ; candidate ; output] (paper eq. 6)
            self.joint_proj = nn.Linear(2 * rank + hidden_size, 3 * rank)

    def prev_embedding(self, prev_tokens: torch.Tensor) -> torch.Tensor:
        """e_k = W1[x_{k-1}] (also the confidence head's Markov feature, paper eq. 7)."""
        return self.markov_w1(prev_tokens)

    def initial_state(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """s_0 = 0 for the rnn head, shaped like one slot of ``hidden`` [..., H] -> [..., r]."""
        return hidden.new_zeros(*hidden.shape[:-1], self.rank) if self.kind == "rnn" else None

    def step(self, hidden: torch.Tensor, prev_tokens: torch.Tensor, state: torch.Tensor | None):
        """bias_k [..., V] and the next state from h_k [..., H], x_{k-1} [...] and s_{k-1}."""
        e = self.prev_embedding(prev_tokens).to(hidden.dtype)
        if self.kind == "vanilla":
            return self.markov_w2(e), state
        if self.kind == "gated":
            return self.markov_w2(torch.sigmoid(self.gate_proj(torch.cat([hidden, e], dim=-1))) * e), state
        gate, cand, out = self.joint_proj(torch.cat([state.to(hidden.dtype), e, hidden], dim=-1)).chunk(3, dim=-1)
        g = torch.sigmoid(gate)
        state = g * state + (1.0 - g) * torch.tanh(cand)
        return self.markov_w2(torch.tanh(out)), state

    def block_bias(self, hidden: torch.Tensor, prev_tokens: torch.Tensor) -> torch.Tensor:
        """bias [..., G, V] for slots along dim -2 of h [..., G, H] with x_{k-1} [..., G] (teacher forced)."""
        if self.kind != "rnn":  # no state: all slots at once
            return self.step(hidden, prev_tokens, None)[0]
        state, biases = self.initial_state(hidden[..., 0, :]), []
        for k in range(hidden.shape[-2]):  # G is small (7): a plain loop keeps it obviously sequential
            bias, state = self.step(hidden[..., k, :], prev_tokens[..., k], state)
            biases.append(bias)
        return torch.stack(biases, dim=-2)


class ConfidenceHead(nn.Module):
    def __init__(self, in_features: int):
        super().__init__()
        self.proj = nn.Linear(in_features, 1)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.proj(feature).squeeze(-1)


@dataclass
class BlockTargets:
    """Per-slot bookkeeping for A anchors [B, A, G] (all long/bool)."""

    block_ids: torch.Tensor  # draft input tokens: anchor token then mask tokens
    positions: torch.Tensor  # rotary position of each slot = anchor + k
    labels: torch.Tensor  # token anchor + k + 1
    prev_tokens: torch.Tensor  # x_{k-1} = token anchor + k (Markov input; slot 0: the anchor token)
    target_positions: torch.Tensor  # where the target's logits predict the slot's token = anchor + k
    slot_mask: torch.Tensor  # supervised: anchor valid and anchor+1..anchor+k+1 all in the loss mask


@dataclass
class DSparkTrainOutput:
    logits: torch.Tensor  # [B, A, G, V] draft logits (Markov bias included)
    confidence_logits: torch.Tensor | None  # [B, A, G] or None without a confidence head
    targets: BlockTargets


def sample_anchors(
    loss_mask: torch.Tensor, *, num_anchors: int, block_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw up to ``num_anchors`` distinct anchors per sequence, uniformly without replacement.

    Candidates are positions a < T-1 with ``loss_mask[a] = loss_mask[a+1] = 1`` (DeepSpec's rule):
    the anchor is itself an answer token, as at inference (the last committed token), never the
    last prompt token before a span. Returns ``anchors`` [B, A] (ascending; invalid entries are 0)
    and ``valid`` [B, A]. A sequence with fewer candidates than A gets them all and the rest marked
    invalid. ``block_size`` does not restrict candidates: a block near the end of a span still
    trains its early slots (later ones are masked by :func:`block_targets`).
    """
    assert loss_mask.dim() == 2, f"loss_mask must be [B, T], got shape {tuple(loss_mask.shape)}"
    assert num_anchors >= 1 and block_size >= 1, (
        f"need num_anchors >= 1 and block_size >= 1, got {num_anchors}, {block_size}"
    )
    B, T = loss_mask.shape
    candidate = torch.zeros(B, T, dtype=torch.bool, device=loss_mask.device)
    candidate[:, :-1] = loss_mask[:, :-1].bool() & loss_mask[:, 1:].bool()
    scores = torch.rand(B, T, generator=generator, device=generator.device if generator else loss_mask.device)
    scores = scores.to(loss_mask.device).masked_fill(~candidate, -1.0)
    k = min(num_anchors, T)
    top, idx = scores.topk(k, dim=1)
    valid = top >= 0
    idx = torch.where(valid, idx, torch.full_like(idx, T))  # invalid sort last
    idx, order = idx.sort(dim=1)
    valid = valid.gather(1, order)
    anchors = torch.where(valid, idx, torch.zeros_like(idx))
    if k < num_anchors:  # pad to a fixed A so batches stack
        pad = num_anchors - k
        anchors = torch.cat([anchors, anchors.new_zeros(B, pad)], dim=1)
        valid = torch.cat([valid, valid.new_zeros(B, pad)], dim=1)
    return anchors, valid


def block_targets(
    *,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    anchors: torch.Tensor,
    anchor_valid: torch.Tensor | None,
    block_size: int,
    mask_token_id: int,
    sample_from_anchor: bool = True,
) -> BlockTargets:
    """Every slot's bookkeeping [B, A, G]. ``sample_from_anchor`` false: slot k's label is the token at its
    own position (slot 0, the bonus token, unsupervised), so label, Markov input and target position all
    sit one position earlier than in DeepSpec's layout."""
    B, T = input_ids.shape
    G = block_size
    k = torch.arange(G, device=input_ids.device)
    positions = anchors[:, :, None] + k  # [B, A, G]
    flat = lambda t: t.reshape(B, -1)  # noqa: E731
    gather = lambda src, pos: src.gather(1, flat(pos.clamp(max=T - 1))).view_as(pos)  # noqa: E731
    predicted = positions + 1 if sample_from_anchor else positions  # the token each slot predicts
    in_mask = gather(loss_mask.bool(), predicted) & (predicted < T)
    if not sample_from_anchor:
        in_mask[:, :, 0] = True  # the bonus slot: not supervised (below), but it does not stop the others
    valid = torch.ones_like(anchors, dtype=torch.bool) if anchor_valid is None else anchor_valid.bool()
    slot_mask = in_mask.long().cumprod(dim=-1).bool() & valid[:, :, None]  # stop at the first unsupervised token
    if not sample_from_anchor:
        slot_mask[:, :, 0] = False
    block_ids = torch.full_like(positions, mask_token_id)
    block_ids[:, :, 0] = gather(input_ids, anchors[:, :, None])[:, :, 0]
    return BlockTargets(
        block_ids=block_ids,
        positions=positions,
        labels=gather(input_ids, predicted),
        prev_tokens=gather(input_ids, (predicted - 1).clamp(min=0)),
        target_positions=(predicted - 1).clamp(min=0, max=T - 1),
        slot_mask=slot_mask,
    )


def drafting_slots(targets: BlockTargets, *, sample_from_anchor: bool) -> BlockTargets:
    """The slots that draft tokens: all of them, or (the engines' layout) all but the bonus slot 0."""
    if sample_from_anchor:
        return targets
    return BlockTargets(**{k: v[:, :, 1:] for k, v in vars(targets).items()})


class DSparkDraftModel(DraftPreTrainedModel):
    """Parallel block drafter; ``Qwen3DSparkModel`` / ``Gemma4DSparkModel`` are its per-family names."""

    draft_architecture = "DSpark"

    def __init__(self, config):
        super().__init__(config)
        family = self._setup_family(config)
        H = config.hidden_size
        self.layers = nn.ModuleList(DraftLayer(family, config, i) for i in range(config.num_hidden_layers))
        self.fc = nn.Linear(config.num_context_features * H, H, bias=False)
        self.hidden_norm = build_norm(family, config, H)
        self.norm = build_norm(family, config, H)
        self.rotary_emb = build_rotary(family, config)
        rank = int(config.markov_rank)
        self.markov_head = (
            MarkovHead(vocab_size=config.vocab_size, hidden_size=H, rank=rank, kind=config.markov_head_type)
            if rank > 0
            else None
        )
        self.confidence_head = None
        if config.enable_confidence_head:
            self.confidence_head = ConfidenceHead(H + (rank if config.confidence_head_with_markov else 0))
        self.post_init()
        self._freeze_target_pieces()

    @property
    def samples_from_anchor(self) -> bool:
        """The block layout (module docstring): True for DeepSpec's, False for the engines' DFlash layout."""
        value = getattr(self.config, "sample_from_anchor", None)
        return True if value is None else bool(value)

    # -- pieces (shared by training and, later, inference) ---------------------------------------
    def context_features(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """H_ctx = hidden_norm(fc(captured states)) [B, T, H]."""
        n_h = self.fc.in_features
        assert hidden_states.shape[-1] == n_h, (
            f"captured hidden states have width {hidden_states.shape[-1]}, the draft expects "
            f"{n_h} = len(target_layer_ids) * hidden_size; capture the layers in config.target_layer_ids"
        )
        return self.hidden_norm(self.fc(hidden_states.to(self.fc.weight.dtype)))

    def block_hidden(
        self, *, block_ids, block_positions, context, context_positions, mask, backend: str
    ) -> torch.Tensor:
        """Post-norm draft states [B, Q, H] of Q block slots over ``context`` [B, T, H] (already H_ctx)."""
        x = self.embed(block_ids).to(context.dtype)
        rope_q = rotary_cos_sin(self.rotary_emb, x, block_positions, DRAFT_LAYER_TYPE)
        rope_ctx = rotary_cos_sin(self.rotary_emb, x, context_positions, DRAFT_LAYER_TYPE)
        rope_kv = tuple(torch.cat([c, q], dim=1) for c, q in zip(rope_ctx, rope_q))

        def attention(attn, normed):  # queries: the block slots; keys/values: [context ; block slots]
            q, k, v = project_qkv(attn, normed, torch.cat([context, normed], dim=1), rope_q, rope_kv)
            return attend(q, k, v, scale=attn.scaling, mask=mask, backend=backend)

        for layer in self.layers:
            x = layer(x, attention=attention)
        return self.norm(x)

    def heads(self, hidden: torch.Tensor, prev_tokens: torch.Tensor):
        """Slot logits [..., G, V] and confidence logits [..., G] (or None) from h [..., G, H] (teacher forced)."""
        logits = self.base_logits(hidden)
        if self.markov_head is not None:
            logits = logits + self.markov_head.block_bias(hidden, prev_tokens).to(logits.dtype)
        return logits, self.confidence(hidden, prev_tokens)

    def confidence(self, hidden: torch.Tensor, prev_tokens: torch.Tensor) -> torch.Tensor | None:
        """c_k = proj([h_k ; W1[x_{k-1}]]) for every Markov head type (paper eq. 7), or proj(h_k) alone."""
        if self.confidence_head is None:
            return None
        if not self.config.confidence_head_with_markov:
            return self.confidence_head(hidden)
        e = self.markov_head.prev_embedding(prev_tokens).to(hidden.dtype)
        return self.confidence_head(torch.cat([hidden, e], dim=-1))

    def training_mask(self, anchors: torch.Tensor, *, context_len: int, backend: str):
        """Block-sparse mask: slot (a, k) sees context j < anchor_a and the slots of block a."""
        B, A = anchors.shape
        G = int(self.config.block_size)
        Q = A * G
        slot_anchor = anchors.repeat_interleave(G, dim=1)  # [B, Q]
        if backend == "flex":
            ctx_len = torch.as_tensor(context_len, device=anchors.device)  # a tensor: no recompile per length

            def mask_mod(b, h, q_idx, kv_idx):
                in_ctx = kv_idx < ctx_len
                ctx_ok = kv_idx < slot_anchor[b, q_idx]
                same_block = (kv_idx - ctx_len) // G == q_idx // G
                return (in_ctx & ctx_ok) | (~in_ctx & same_block)

            return make_flex_mask(mask_mod, batch=B, q_len=Q, kv_len=context_len + Q, device=anchors.device)
        ctx_ok = torch.arange(context_len, device=anchors.device) < slot_anchor[:, :, None]
        block = torch.arange(Q, device=anchors.device) // G
        same_block = (block[:, None] == block[None, :]).expand(B, Q, Q)
        return torch.cat([ctx_ok, same_block], dim=-1)

    # -- training -------------------------------------------------------------------------------
    def forward_train(
        self,
        *,
        input_ids: torch.Tensor,
        hidden_states: torch.Tensor,
        loss_mask: torch.Tensor,
        anchors: torch.Tensor,
        anchor_valid: torch.Tensor | None = None,
        attention_backend: str = "auto",
    ) -> DSparkTrainOutput:
        """All A blocks of every sequence in one pass.

        input_ids [B, T], hidden_states [B, T, n·H] (captured target layers), loss_mask [B, T],
        anchors / anchor_valid [B, A] (see :func:`sample_anchors`). Returns per-slot logits
        [B, A, G, V], confidence logits [B, A, G] and the slot bookkeeping (labels, slot_mask,
        target_positions for the target logits); G - 1 slots in the engines' layout. Compute the loss with
        :func:`deepspec.models.losses.parallel_draft_loss`.
        """
        B, T = input_ids.shape
        assert hidden_states.shape[:2] == (B, T) and loss_mask.shape == (B, T), (
            f"input_ids {tuple(input_ids.shape)}, hidden_states {tuple(hidden_states.shape)} and loss_mask "
            f"{tuple(loss_mask.shape)} must share [B, T]"
        )
        assert anchors.dim() == 2 and anchors.shape[0] == B, f"anchors must be [B, A], got {tuple(anchors.shape)}"
        G = int(self.config.block_size)
        A = anchors.shape[1]
        backend = resolve_backend(attention_backend, input_ids.device)
        from_anchor = self.samples_from_anchor
        tg = block_targets(
            input_ids=input_ids,
            loss_mask=loss_mask,
            anchors=anchors,
            anchor_valid=anchor_valid,
            block_size=G,
            mask_token_id=int(self.config.mask_token_id),
            sample_from_anchor=from_anchor,
        )
        context = self.context_features(hidden_states)
        ctx_pos = torch.arange(T, device=input_ids.device).expand(B, T)
        hidden = self.block_hidden(
            block_ids=tg.block_ids.reshape(B, A * G),
            block_positions=tg.positions.reshape(B, A * G),
            context=context,
            context_positions=ctx_pos,
            mask=self.training_mask(anchors, context_len=T, backend=backend),
            backend=backend,
        )
        first = 0 if from_anchor else 1  # the engines' layout: the bonus slot drafts nothing
        drafting = drafting_slots(tg, sample_from_anchor=from_anchor)
        logits, conf = self.heads(hidden.view(B, A, G, -1)[:, :, first:], drafting.prev_tokens)
        return DSparkTrainOutput(logits=logits, confidence_logits=conf, targets=drafting)

    def forward(self, **kwargs) -> DSparkTrainOutput:  # DDP/FSDP call forward(); same as forward_train
        return self.forward_train(**kwargs)

    def gather_target_logits(self, target_last_hidden: torch.Tensor, targets: BlockTargets) -> torch.Tensor:
        """Target logits [B, A, G, V] at each slot's ``target_positions`` (frozen LM head, no grad)."""
        B, A, G = targets.target_positions.shape
        idx = targets.target_positions.reshape(B, A * G, 1).expand(-1, -1, target_last_hidden.shape[-1])
        return self.target_logits(target_last_hidden.gather(1, idx)).view(B, A, G, -1)


# Per-family names (the public architectures); DSparkDraftModel(config) returns the right one.
for _family in (f for f in FAMILIES if f.draft_family is None):  # families drafting with own layers
    _name = architecture_name(_family.name, "dspark")
    globals()[_name] = DraftPreTrainedModel.register(_name, DSparkDraftModel)
