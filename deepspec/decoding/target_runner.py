"""The target side of decoding: one KV cache, forward passes over new slots, captured features.

The only family difference here is which attention layer types exist (Gemma: sliding-window layers
next to full ones); we hand transformers one prepared mask per layer type (a single one to configs
without ``layer_types``, e.g. Llama) so every family sees explicit per-row positions and the slot
validity of :class:`~deepspec.decoding.slots.SlotTable`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

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
        types = list(getattr(config, "layer_types", None) or ["full_attention"])
        self.windows = {t: (int(config.sliding_window) if t == "sliding_attention" else None) for t in set(types)}
        # Configs with layer_types (Qwen3, Gemma) take a mask per layer type; the others one 4D mask.
        self.per_layer_type_masks = getattr(config, "layer_types", None) is not None
        self.cache = None

    def reset(self) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache()  # full-length layers: slots are never dropped behind our back

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
        if not self.per_layer_type_masks:  # e.g. Llama: one causal mask, no mapping per layer type
            masks = masks["full_attention"]
        out = self.target.forward_with_capture(
            tokens, layer_ids=self.layer_ids, attention_mask=masks, position_ids=positions, past_key_values=self.cache
        )
        return TargetStep(logits=self.target.logits(out.last_hidden_state).float(), hidden_states=out.hidden_states)

    def crop(self, n: int) -> None:
        if n > 0:
            self.cache.crop(-n)

    def select_rows(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)
