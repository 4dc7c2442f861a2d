"""Eagle3 draft: one autoregressive layer over fused target features, trained with a training-time test (TTT).

Shapes: B batch, T length, S = ``ttt_length`` steps, H hidden, V vocab, n captured target layers.

Inputs at index t (step 0): ``g_t = fc(captured states at t)`` (Linear n·H -> H) and the embedding
of the next token x_{t+1} (frozen target embedding). It predicts x_{t+2}; the target distribution is
the target's logits at position t+1. This matches inference: after the target ran over x_0..x_{p-1}
and sampled x_p, the draft's first step sits at p-1 with (g_{p-1}, x_p).

Every layer (EAGLE-3, DeepSpec's layout): the attention input is ``[input_layernorm(embed) ;
hidden_norm(x)]`` of width 2H (each layer has its own ``hidden_norm``; q/k/v projections take 2H
inputs), x = g for the first layer and the previous layer's output after that; the residual stream
is the un-normalised x. Then the family's MLP block (pre-norm, or Gemma's sandwich norms, see
:class:`~deepspec.models.blocks.DraftLayer`). The final ``norm`` -> frozen LM head (+ family
soft-cap) gives the logits.

TTT (EAGLE-3): step s >= 1 repeats the layers at every index t with the previous step's output
at t in place of g_t and the true token x_{t+1+s} (teacher forcing), predicting x_{t+2+s}.
Its query sits at rotary position t+s. Keys/values grow per step: step s at index t attends the
step-0 keys at indices j <= t (the real context) and the keys that steps 1..s produced *at index
t* (its own earlier draft tokens), exactly what a chain of s draft tokens after position t sees at
inference.

Supervision (DeepSpec's rule): step s supervises index t iff ``loss_mask[t+s] = 1`` and t+s is
not the sequence's last valid token (that token is removed from the mask before shifting),
against the target distribution at position t+s+1. Loss (see ``losses.eagle3_loss``): each
step's summed soft cross-entropy divided by B·T of the micro-batch, weighted ``step_loss_decay**s``.
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


@dataclass
class Eagle3TrainOutput:
    logits: torch.Tensor  # [S, B, T, V]
    step_mask: torch.Tensor  # [S, B, T] supervised: loss_mask[t+s] with each row's last valid token off
    labels: torch.Tensor  # [S, B, T] x_{t+2+s}
    target_positions: torch.Tensor  # [S, B, T] t+1+s: where the target's logits predict the label


def ttt_mask(*, step: int, length: int, device) -> torch.Tensor:
    """[T, (step+1)·T] bool: causal over step-0 keys, diagonal over the keys of steps 1..step."""
    idx = torch.arange(length, device=device)
    causal = idx[None, :] <= idx[:, None]
    diagonal = idx[None, :] == idx[:, None]
    return torch.cat([causal] + [diagonal] * step, dim=1)


def next_token_mask(loss_mask: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``loss_mask`` [B, T] as bool with each row's last valid token removed (it has no next token)."""
    mask = loss_mask.bool().clone()
    B, T = mask.shape
    lengths = torch.full((B,), T, device=mask.device) if attention_mask is None else attention_mask.long().sum(dim=1)
    rows = torch.arange(B, device=mask.device)
    mask[rows, (lengths - 1).clamp(min=0)] = False
    return mask


class Eagle3DraftModel(DraftPreTrainedModel):
    """EAGLE-3 draft (one layer by default); ``Qwen3Eagle3Model`` / ``Gemma4Eagle3Model`` are its per-family names."""

    draft_architecture = "Eagle3"

    def __init__(self, config):
        super().__init__(config)
        family = self._setup_family(config)
        H = config.hidden_size
        self.layers = nn.ModuleList(
            DraftLayer(family, config, i, fused_input=True) for i in range(config.num_hidden_layers)
        )
        self.fc = nn.Linear(config.num_context_features * H, H, bias=False)
        self.norm = build_norm(family, config, H)
        self.rotary_emb = build_rotary(family, config)
        self.post_init()
        self._freeze_target_pieces()

    def fuse(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """g = fc(captured target states) [B, T, H]."""
        assert hidden_states.shape[-1] == self.fc.in_features, (
            f"captured hidden states have width {hidden_states.shape[-1]}, the draft expects {self.fc.in_features} "
            "= len(target_layer_ids) * hidden_size; capture the layers in config.target_layer_ids"
        )
        return self.fc(hidden_states.to(self.fc.weight.dtype))

    def step(self, *, hidden, token_embeds, positions, caches, mask, backend):
        """One TTT step over all indices. ``caches[i]`` = lists of earlier steps' (k, v) for layer i."""
        x = hidden
        rope = rotary_cos_sin(self.rotary_emb, x, positions, DRAFT_LAYER_TYPE)

        def attention_over(cache):  # this step's keys/values join the layer's earlier steps'
            def attention(attn, attn_in):
                q, k, v = project_qkv(attn, attn_in, attn_in, rope, rope)
                cache[0].append(k)
                cache[1].append(v)
                keys, values = torch.cat(cache[0], dim=2), torch.cat(cache[1], dim=2)
                return attend(q, keys, values, scale=attn.scaling, mask=mask, backend=backend)

            return attention

        for layer, cache in zip(self.layers, caches):
            x = layer(x, attention=attention_over(cache), embeds=token_embeds)
        return x

    def _mask(self, *, step: int, batch: int, length: int, backend: str, device):
        if backend == "flex":
            n = torch.as_tensor(length, device=device)  # a tensor: no recompile per length

            def mask_mod(b, h, q_idx, kv_idx):
                j = kv_idx % n
                return torch.where(kv_idx < n, j <= q_idx, j == q_idx)

            return make_flex_mask(mask_mod, batch=batch, q_len=length, kv_len=(step + 1) * length, device=device)
        return ttt_mask(step=step, length=length, device=device).expand(batch, -1, -1)

    def forward_train(
        self,
        *,
        input_ids: torch.Tensor,
        hidden_states: torch.Tensor,
        loss_mask: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        attention_backend: str = "auto",
        ttt_length: int | None = None,
    ) -> Eagle3TrainOutput:
        """Unrolled TTT over ``ttt_length`` (default: config) steps; logits [S, B, T, V].

        ``attention_mask`` [B, T] marks each row's valid (non-padding) tokens; right padding only
        (None: every row is T long). Compute the loss with :func:`deepspec.models.losses.eagle3_loss`
        and target logits from :meth:`gather_target_logits`.
        """
        B, T = input_ids.shape
        assert hidden_states.shape[:2] == (B, T) and loss_mask.shape == (B, T), (
            f"input_ids {tuple(input_ids.shape)}, hidden_states {tuple(hidden_states.shape)} and loss_mask "
            f"{tuple(loss_mask.shape)} must share [B, T]"
        )
        S = int(ttt_length or self.config.ttt_length)
        backend = resolve_backend(attention_backend, input_ids.device)
        t = torch.arange(T, device=input_ids.device).expand(B, T)
        caches = [([], []) for _ in self.layers]
        hidden = self.fuse(hidden_states)
        supervised = next_token_mask(loss_mask, attention_mask)
        logits, masks, labels, tpos = [], [], [], []
        for s in range(S):
            tokens = input_ids.gather(1, (t + 1 + s).clamp(max=T - 1))
            hidden = self.step(
                hidden=hidden,
                token_embeds=self.embed(tokens).to(hidden.dtype),
                positions=t + s,
                caches=caches,
                mask=self._mask(step=s, batch=B, length=T, backend=backend, device=input_ids.device),
                backend=backend,
            )
            logits.append(self.base_logits(self.norm(hidden)))
            masks.append(((t + s) < T) & supervised.gather(1, (t + s).clamp(max=T - 1)))
            labels.append(input_ids.gather(1, (t + 2 + s).clamp(max=T - 1)))
            tpos.append((t + 1 + s).clamp(max=T - 1))
        return Eagle3TrainOutput(
            logits=torch.stack(logits),
            step_mask=torch.stack(masks),
            labels=torch.stack(labels),
            target_positions=torch.stack(tpos),
        )

    def forward(self, **kwargs) -> Eagle3TrainOutput:  # DDP/FSDP call forward(); same as forward_train
        return self.forward_train(**kwargs)

    def gather_target_logits(self, target_last_hidden: torch.Tensor, target_positions: torch.Tensor) -> torch.Tensor:
        """Target logits [S, B, T, V] at ``target_positions`` [S, B, T] (frozen LM head, no grad)."""
        S, B, T = target_positions.shape
        idx = target_positions.permute(1, 0, 2).reshape(B, S * T, 1).expand(-1, -1, target_last_hidden.shape[-1])
        picked = target_last_hidden.gather(1, idx).view(B, S, T, -1).permute(1, 0, 2, 3)
        return self.target_logits(picked)


for _family in (f for f in FAMILIES if f.draft_family is None):  # families drafting with own layers
    _name = architecture_name(_family.name, "eagle3")
    globals()[_name] = DraftPreTrainedModel.register(_name, Eagle3DraftModel)
