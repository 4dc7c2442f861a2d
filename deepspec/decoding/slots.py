"""KV slot bookkeeping shared by the target cache and the draft context caches.

Every token the target has run over occupies one *slot* (one column of every KV cache), in the
same order for the target and the draft. Rows of a batch advance by different amounts each round,
so instead of shuffling caches we keep rejected slots in place and mark them invalid: nothing ever
attends to an invalid slot again, and each slot carries its own rotary position. Trailing slots
that are invalid in every row are cropped (with batch size 1 that is every rejected slot, so the
cache stays exactly the committed prefix).
"""

from __future__ import annotations

import torch


class SlotTable:
    """``valid`` [B, L] (slot holds a committed token) and ``pos`` [B, L] (its position)."""

    def __init__(self, *, batch: int, device: torch.device):
        self.valid = torch.zeros(batch, 0, dtype=torch.bool, device=device)
        self.pos = torch.zeros(batch, 0, dtype=torch.long, device=device)

    @property
    def length(self) -> int:
        return self.valid.shape[1]

    def next_position(self) -> torch.Tensor:
        """[B] position of each row's pending token = number of committed tokens through the target."""
        return self.valid.sum(dim=1)

    def append(self, *, valid: torch.Tensor, pos: torch.Tensor) -> None:
        self.valid = torch.cat([self.valid, valid], dim=1)
        self.pos = torch.cat([self.pos, pos], dim=1)

    def trailing_invalid(self) -> int:
        """How many final slots are invalid in every row (safe to crop)."""
        any_valid = self.valid.any(dim=0)
        nz = any_valid.nonzero()
        return self.length - (int(nz[-1]) + 1 if len(nz) else 0)

    def crop(self, n: int) -> None:
        if n > 0:
            self.valid, self.pos = self.valid[:, :-n], self.pos[:, :-n]

    def select_rows(self, rows: torch.Tensor) -> None:
        self.valid, self.pos = self.valid[rows], self.pos[rows]

    def query_mask(
        self,
        *,
        query_pos: torch.Tensor,
        causal_new: bool = True,
        new_valid: torch.Tensor | None = None,
        window: int | None = None,
    ) -> torch.Tensor:
        """Bool mask [B, n, L + n] for n new query slots at ``query_pos`` [B, n] appended after the table.

        Cached slot j is visible iff valid; new slot i' is visible to new slot i iff i' <= i
        (``causal_new``) or always (a bidirectional draft block); ``new_valid`` [B, n] hides invalid new
        slots (left padding of a prefill) from every query but their own. ``window`` adds a sliding window
        (key position > query position - window) for families with sliding-attention layers.
        """
        B, n = query_pos.shape
        cached = self.valid[:, None, :].expand(B, n, self.length)
        if causal_new:
            new = torch.ones(n, n, dtype=torch.bool, device=query_pos.device).tril()[None].expand(B, n, n)
        else:
            new = torch.ones(B, n, n, dtype=torch.bool, device=query_pos.device)
        if new_valid is not None:
            new = new & (new_valid[:, None, :] | torch.eye(n, dtype=torch.bool, device=query_pos.device))
        mask = torch.cat([cached, new], dim=2)
        if window is not None:
            key_pos = torch.cat([self.pos, query_pos], dim=1)
            mask = mask & (key_pos[:, None, :] > query_pos[:, :, None] - window)
        return mask


def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool [B, n, L] -> the additive [B, 1, n, L] float mask transformers' attention takes as-is."""
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(mask, zero, torch.finfo(dtype).min)[:, None]
