"""Lossless verification with recurrent target layers (Qwen3.5's Gated DeltaNet "linear attention").

An attention layer's rejected slots are masked and cropped (:mod:`deepspec.decoding.slots`); a recurrent
layer folds every token it sees into one state, so a rejected token cannot be masked out of it afterwards.
We **snapshot the state after every verified position and keep each row's accepted one**:

* during a verify pass, each recurrent layer steps its convolution window and its delta-rule state one
  token at a time (transformers' own single-token decode functions, so the arithmetic is exactly that of
  ``generate``) and keeps the state after each token;
* :meth:`RecurrentStates.commit` then sets every row's state to the one after its accepted slots.

Why not re-run the accepted prefix from the last committed state: that is a second forward of the whole
target per round (the recurrent layers' inputs depend on every layer below), and rows accept different
lengths, so the re-run is padded, and a padded step still decays the state (the gate g is never 0), which
would need its own masking. Snapshots cost memory instead, for one round only: (γ + 1) states per
recurrent layer per row (Qwen3.5-9B: 24 layers × 2 MiB per row per position in fp32).

Prefill runs the target's own chunked kernel: left padding is zeroed before the layer (a zero input never
moves a zero state), so the state after a prompt is exact without snapshots.
"""

from __future__ import annotations

import contextlib
import importlib
import types

import torch
from torch import nn


class RecurrentStates:
    """The recurrent layers of one target and their per-position snapshots of the current verify pass."""

    def __init__(self, target, cache):
        self.cache = cache
        self.layer_ids = target.family.recurrent_layers(target.model.config)
        self.mixers = {i: target.layers[i].linear_attn for i in self.layer_ids}
        # transformers' single-token decode functions, from the mixers' own modeling module
        self.kernels = (
            importlib.import_module(type(self.mixers[self.layer_ids[0]]).__module__) if self.layer_ids else None
        )
        self.snapshots: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __bool__(self) -> bool:
        return bool(self.layer_ids)

    @contextlib.contextmanager
    def recording(self):
        """Within: every recurrent layer steps token by token and records its states (a verify pass)."""
        self.snapshots = {}
        originals = {}
        for i, mixer in self.mixers.items():
            originals[i] = mixer.forward
            mixer.forward = types.MethodType(_stepwise_forward(self, i), mixer)
        try:
            yield
        finally:
            for i, mixer in self.mixers.items():
                mixer.forward = originals[i]

    def commit(self, num_valid: torch.Tensor) -> None:
        """Keep, per row, the state after its first ``num_valid`` [B] slots of the last verify pass."""
        rows = torch.arange(num_valid.shape[0], device=num_valid.device)
        for i, (conv, recurrent) in self.snapshots.items():
            layer = self.cache.layers[i]
            layer.conv_states[0] = conv[rows, num_valid].contiguous()
            layer.recurrent_states[0] = recurrent[rows, num_valid].contiguous()
        self.snapshots = {}

    def select_rows(self, rows: torch.Tensor) -> None:
        for i in self.layer_ids:
            self.cache.layers[i].reorder_cache(rows)


def _stepwise_forward(states: RecurrentStates, layer_id: int):
    """A Gated DeltaNet forward over n new tokens that records the state after each of them.

    Same projections, convolution and delta rule as the layer's own forward from a cached state; only the
    order differs: one token at a time through transformers' decode kernels of the layer's own module.
    """

    def forward(mixer: nn.Module, hidden_states: torch.Tensor, cache_params=None, attention_mask=None, **_):
        kernels = states.kernels
        layer = states.cache.layers[layer_id]
        B, n, _ = hidden_states.shape
        mixed = mixer.in_proj_qkv(hidden_states).transpose(1, 2)  # [B, conv_dim, n]
        z = mixer.in_proj_z(hidden_states).reshape(B, n, -1, mixer.head_v_dim)
        beta = mixer.in_proj_b(hidden_states).sigmoid()
        g = -mixer.A_log.float().exp() * nn.functional.softplus(mixer.in_proj_a(hidden_states).float() + mixer.dt_bias)

        conv_state = layer.conv_states[0].clone()  # updated in place by each decode step
        conv_states, conv_out = [conv_state.clone()], []
        weight = mixer.conv1d.weight.squeeze(1)
        for t in range(n):
            conv_out.append(
                kernels.causal_conv1d_update(
                    mixed[:, :, t : t + 1], conv_state, weight, mixer.conv1d.bias, mixer.activation
                )
            )
            conv_states.append(conv_state.clone())
        mixed = torch.cat(conv_out, dim=2).transpose(1, 2)
        query, key, value = torch.split(mixed, [mixer.key_dim, mixer.key_dim, mixer.value_dim], dim=-1)
        query = query.reshape(B, n, -1, mixer.head_k_dim)
        key = key.reshape(B, n, -1, mixer.head_k_dim)
        value = value.reshape(B, n, -1, mixer.head_v_dim)
        if mixer.num_v_heads // mixer.num_k_heads > 1:
            query = query.repeat_interleave(mixer.num_v_heads // mixer.num_k_heads, dim=2)
            key = key.repeat_interleave(mixer.num_v_heads // mixer.num_k_heads, dim=2)

        state = layer.recurrent_states[0]
        recurrent_states, core = [state], []
        for t in range(n):
            step = slice(t, t + 1)
            out, state = kernels.torch_recurrent_gated_delta_rule(
                query[:, step],
                key[:, step],
                value[:, step],
                g=g[:, step],
                beta=beta[:, step],
                initial_state=state,
                output_final_state=True,
                use_qk_l2norm_in_kernel=True,
            )
            core.append(out)
            recurrent_states.append(state)
        states.snapshots[layer_id] = (torch.stack(conv_states, 1), torch.stack(recurrent_states, 1))
        # Until commit() the cache holds the state after all n tokens (what a plain forward would leave).
        layer.conv_states[0], layer.recurrent_states[0] = conv_states[-1], recurrent_states[-1]

        core = torch.cat(core, dim=1).reshape(-1, mixer.head_v_dim)
        core = mixer.norm(core, z.reshape(-1, mixer.head_v_dim)).reshape(B, n, -1)
        return mixer.out_proj(core)

    return forward
