"""Eagle3 draft: one autoregressive layer over fused target features, trained with a training-time test (TTT).

Shapes: B batch, T length, S = ``ttt_length`` steps, H hidden, V vocab, n captured target layers.

Inputs at index t (step 0): ``g_t = fc(captured states at t)`` (Linear n·H -> H) and the embedding
of the next token x_{t+1} (frozen target embedding). It predicts x_{t+2}; the target distribution is
the target's logits at position t+1. This matches inference: after the target ran over x_0..x_{p-1}
and sampled x_p, the draft's first step sits at p-1 with (g_{p-1}, x_p).

Layer 0 (EAGLE-3): the attention input is the concatenation ``[input_layernorm(embed) ;
hidden_norm(g)]`` of width 2H, so ``q_proj``/``k_proj``/``v_proj`` take 2H inputs (our choice of where
the fusion happens: inside the projections, as EAGLE-3 does); the residual stream is g itself.
Then ``post_attention_layernorm`` -> MLP -> residual. Further layers, if any, are plain pre-norm
blocks. The final ``norm`` -> frozen LM head (+ family soft-cap) gives the logits.

TTT (EAGLE-3): step s >= 1 repeats the layer at every index t with the previous step's layer
output at t in place of g_t and the true token x_{t+1+s} (teacher forcing), predicting x_{t+2+s}.
Its query sits at rotary position t+s. Keys/values grow per step: step s at index t attends the
step-0 keys at indices j <= t (the real context) and the keys that steps 1..s produced *at index
t* (its own earlier draft tokens), exactly what a chain of s draft tokens after position t sees at
inference. Step s is supervised where x_{t+2+s} exists and is in the loss mask; weight
``step_loss_decay**s``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deepspec.models.blocks import (
    DraftLayer, DraftPreTrainedModel, attend, build_norm, build_rotary, make_flex_mask, project_qkv,
    resolve_backend, rotary_cos_sin,
)
from deepspec.models.config import DRAFT_LAYER_TYPE, architecture_name
from deepspec.targets import FAMILIES


@dataclass
class Eagle3TrainOutput:
    logits: torch.Tensor            # [S, B, T, V]
    step_mask: torch.Tensor         # [S, B, T] supervised (label x_{t+2+s} in range and in the loss mask)
    labels: torch.Tensor            # [S, B, T] x_{t+2+s}
    target_positions: torch.Tensor  # [S, B, T] t+1+s: where the target's logits predict the label


def ttt_mask(*, step: int, length: int, device) -> torch.Tensor:
    """[T, (step+1)·T] bool: causal over step-0 keys, diagonal over the keys of steps 1..step."""
    idx = torch.arange(length, device=device)
    causal = idx[None, :] <= idx[:, None]
    diagonal = idx[None, :] == idx[:, None]
    return torch.cat([causal] + [diagonal] * step, dim=1)


class Eagle3DraftModel(DraftPreTrainedModel):
    """One-layer EAGLE-3 draft; ``Qwen3Eagle3Model`` / ``Gemma4Eagle3Model`` are its per-family names."""

    def __init__(self, config):
        super().__init__(config)
        family = self._setup_family(config)
        H = config.hidden_size
        self.layers = nn.ModuleList(DraftLayer(family, config, i, attn_in_features=2 * H if i == 0 else None)
                                    for i in range(config.num_hidden_layers))
        self.fc = nn.Linear(config.num_context_features * H, H, bias=False)
        self.hidden_norm = build_norm(family, config, H)
        self.norm = build_norm(family, config, H)
        self.rotary_emb = build_rotary(family, config)
        self.post_init()
        self._freeze_target_pieces()

    def fuse(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """g = fc(captured target states) [B, T, H]."""
        assert hidden_states.shape[-1] == self.fc.in_features, (
            f"captured hidden states have width {hidden_states.shape[-1]}, the draft expects {self.fc.in_features} "
            "= len(target_layer_ids) * hidden_size; capture the layers in config.target_layer_ids")
        return self.fc(hidden_states.to(self.fc.weight.dtype))

    def step(self, *, hidden, token_embeds, positions, caches, mask, backend):
        """One TTT step over all indices. ``caches[i]`` = lists of earlier steps' (k, v) for layer i."""
        x = hidden
        rope = rotary_cos_sin(self.rotary_emb, x, positions, DRAFT_LAYER_TYPE)
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            if i == 0:
                attn_in = torch.cat([layer.input_layernorm(token_embeds), self.hidden_norm(x)], dim=-1)
            else:
                attn_in = layer.input_layernorm(x)
            q, k, v = project_qkv(attn, attn_in, attn_in, rope, rope)
            caches[i][0].append(k)
            caches[i][1].append(v)
            keys, values = torch.cat(caches[i][0], dim=2), torch.cat(caches[i][1], dim=2)
            x = x + attn.o_proj(attend(q, keys, values, scale=attn.scaling, mask=mask, backend=backend))
            x = layer.mlp_block(x)
        return x

    def _mask(self, *, step: int, batch: int, length: int, backend: str, device):
        if backend == "flex":
            def mask_mod(b, h, q_idx, kv_idx):
                j = kv_idx % length
                return torch.where(kv_idx < length, j <= q_idx, j == q_idx)

            return make_flex_mask(mask_mod, batch=batch, q_len=length, kv_len=(step + 1) * length, device=device)
        return ttt_mask(step=step, length=length, device=device).expand(batch, -1, -1)

    def forward_train(self, *, input_ids: torch.Tensor, hidden_states: torch.Tensor, loss_mask: torch.Tensor,
                      attention_backend: str = "auto", ttt_length: int | None = None) -> Eagle3TrainOutput:
        """Unrolled TTT over ``ttt_length`` (default: config) steps; logits [S, B, T, V].

        Compute the loss with :func:`deepspec.models.losses.eagle3_loss` and target logits from
        :meth:`gather_target_logits`.
        """
        B, T = input_ids.shape
        assert hidden_states.shape[:2] == (B, T) and loss_mask.shape == (B, T), (
            f"input_ids {tuple(input_ids.shape)}, hidden_states {tuple(hidden_states.shape)} and loss_mask "
            f"{tuple(loss_mask.shape)} must share [B, T]")
        S = int(ttt_length or self.config.ttt_length)
        backend = resolve_backend(attention_backend, input_ids.device)
        t = torch.arange(T, device=input_ids.device).expand(B, T)
        caches = [([], []) for _ in self.layers]
        hidden = self.fuse(hidden_states)
        logits, masks, labels, tpos = [], [], [], []
        for s in range(S):
            tokens = input_ids.gather(1, (t + 1 + s).clamp(max=T - 1))
            hidden = self.step(hidden=hidden, token_embeds=self.embed(tokens).to(hidden.dtype), positions=t + s,
                               caches=caches, mask=self._mask(step=s, batch=B, length=T, backend=backend,
                                                              device=input_ids.device), backend=backend)
            logits.append(self.base_logits(self.norm(hidden)))
            label_pos = t + 2 + s
            masks.append((label_pos < T) & loss_mask.bool().gather(1, label_pos.clamp(max=T - 1)))
            labels.append(input_ids.gather(1, label_pos.clamp(max=T - 1)))
            tpos.append((t + 1 + s).clamp(max=T - 1))
        return Eagle3TrainOutput(logits=torch.stack(logits), step_mask=torch.stack(masks), labels=torch.stack(labels),
                                 target_positions=torch.stack(tpos))

    def forward(self, **kwargs) -> Eagle3TrainOutput:  # DDP/FSDP call forward(); same as forward_train
        return self.forward_train(**kwargs)

    def gather_target_logits(self, target_last_hidden: torch.Tensor, target_positions: torch.Tensor) -> torch.Tensor:
        """Target logits [S, B, T, V] at ``target_positions`` [S, B, T] (frozen LM head, no grad)."""
        S, B, T = target_positions.shape
        idx = target_positions.permute(1, 0, 2).reshape(B, S * T, 1).expand(-1, -1, target_last_hidden.shape[-1])
        picked = target_last_hidden.gather(1, idx).view(B, S, T, -1).permute(1, 0, 2, 3)
        return self.target_logits(picked)


for _family in FAMILIES:
    _name = architecture_name(_family.name, "eagle3")
    globals()[_name] = DraftPreTrainedModel.register(_name, Eagle3DraftModel)
