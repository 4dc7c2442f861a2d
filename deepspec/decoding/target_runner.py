"""The target side of decoding: one KV cache, forward passes over new slots, captured features.

The family differences here are which layer types exist (Gemma: sliding-window layers next to full
ones; Qwen3.5: recurrent Gated DeltaNet layers next to full ones). We hand transformers one prepared
mask per attention layer type (a single one to configs without ``layer_types``, e.g. Llama) so every
family sees explicit per-row positions and the slot validity of
:class:`~deepspec.decoding.slots.SlotTable`; recurrent layers get the prefill's padding mask and keep
per-row states through :mod:`deepspec.decoding.recurrent`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import torch

from deepspec.decoding.recurrent import RecurrentStates
from deepspec.decoding.slots import SlotTable, additive
from deepspec.targets import Target


@dataclass
class TargetStep:
    logits: torch.Tensor  # [B, n, V] target logits at the new slots
    hidden_states: torch.Tensor  # [B, n, n_layers*H] captured layers (the draft's context features)


class TargetRunner:
    def __init__(self, target: Target, *, layer_ids: Sequence[int]):
        self.target = target
        self.layer_ids = list(layer_ids)
        config = target.config
        types = set(getattr(config, "layer_types", None) or ["full_attention"])
        self.recurrent_types = set(target.family.recurrent_layer_types) & types
        self.windows = {
            t: (int(config.sliding_window) if t == "sliding_attention" else None) for t in types - self.recurrent_types
        }
        # Configs with layer_types (Qwen3, Gemma) take a mask per layer type; the others one 4D mask.
        self.per_layer_type_masks = getattr(config, "layer_types", None) is not None
        self.cache = None
        self.recurrent = None

    def reset(self) -> None:
        from transformers import DynamicCache

        if self.recurrent_types:  # the config lays out the recurrent layers' state holders
            self.cache = DynamicCache(config=self.target.config)
            kinds = {type(layer).__name__ for layer in self.cache.layers}
            assert kinds <= {"DynamicLayer", "LinearAttentionLayer"}, f"unexpected cache layers {kinds}"
        else:
            self.cache = DynamicCache()  # full-length layers: slots are never dropped behind our back
        self.recurrent = RecurrentStates(self.target, self.cache)

    @torch.no_grad()
    def forward(
        self, *, slots: SlotTable, tokens: torch.Tensor, positions: torch.Tensor, new_valid: torch.Tensor | None = None
    ) -> TargetStep:
        """Run the target over new slots ``tokens`` [B, n] at ``positions`` [B, n] (causal among them;
        ``new_valid`` hides left padding).

        The slots are not appended to ``slots`` here: the caller does that once it knows which are valid.
        """
        dtype = self.target.model.dtype
        masks = {
            t: additive(slots.query_mask(query_pos=positions, new_valid=new_valid, window=w), dtype)
            for t, w in self.windows.items()
        }
        for t in self.recurrent_types:  # a padding mask [B, n] (None: no padding) zeroes pads' inputs
            masks[t] = None if new_valid is None or bool(new_valid.all()) else new_valid.to(dtype)
        if not self.per_layer_type_masks:  # e.g. Llama: one causal mask, no mapping per layer type
            masks = masks["full_attention"]
        # After the prefill, recurrent layers record their state per new slot until commit() picks one.
        verifying = self.recurrent and slots.length > 0
        with self.recurrent.recording() if verifying else contextlib.nullcontext():
            out = self.target.forward_with_capture(
                tokens,
                layer_ids=self.layer_ids,
                attention_mask=masks,
                position_ids=positions,
                past_key_values=self.cache,
            )
        return TargetStep(logits=self.target.logits(out.last_hidden_state).float(), hidden_states=out.hidden_states)

    def commit(self, num_valid: torch.Tensor) -> None:
        """After a verify pass: each row keeps its first ``num_valid`` [B] new slots. Attention layers need
        nothing (the slot table masks the rest); recurrent layers take the state after those slots."""
        if self.recurrent:
            self.recurrent.commit(num_valid)

    def _attention_layers(self) -> list:
        """The KV layers (transformers creates them on first use when the cache has no config)."""
        recurrent = set(self.recurrent.layer_ids)
        return [layer for i, layer in enumerate(self.cache.layers) if i not in recurrent]

    def crop(self, n: int) -> None:
        if n > 0:
            for layer in self._attention_layers():
                layer.crop(-n)

    def select_rows(self, rows: torch.Tensor) -> None:
        for layer in self._attention_layers():
            layer.batch_select_indices(rows)
        self.recurrent.select_rows(rows)
