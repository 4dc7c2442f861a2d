"""One target forward over right-padded token lists, rounded to what the cache stores (bf16 on the CPU).

Both producers of training batches use this: the cache builder (which writes the result to shards) and
online training (which hands it to the draft directly). Keeping it in one place keeps the two identical.
"""

from __future__ import annotations

from typing import Sequence

import torch

PAD_ID = 0
STORED_DTYPE = torch.bfloat16  # the cache stores hidden states as bf16


def capture_states(
    target, token_lists: Sequence[Sequence[int]], *, layer_ids: Sequence[int], device, to_cpu: bool = True
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per sample: (hidden_states [n, L*H], last_hidden_state [n, H]) in bf16, padding cut off.

    On the CPU unless ``to_cpu=False`` (online training on a GPU keeps them there; values are the same).
    """
    longest = max(len(t) for t in token_lists)
    ids = torch.full((len(token_lists), longest), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(token_lists), longest), dtype=torch.long)
    for row, toks in enumerate(token_lists):
        ids[row, : len(toks)] = torch.as_tensor(list(toks), dtype=torch.long)
        mask[row, : len(toks)] = 1
    with torch.no_grad():
        states = target.capture(ids.to(device), layer_ids=list(layer_ids), attention_mask=mask.to(device))
    # Copy to CPU bf16 here for the cache: a writer thread must never hold device tensors.
    hidden, last = states.hidden_states.to(STORED_DTYPE), states.last_hidden_state.to(STORED_DTYPE)
    if to_cpu:
        hidden, last = hidden.cpu(), last.cpu()
    return [(hidden[row, : len(t)].clone(), last[row, : len(t)].clone()) for row, t in enumerate(token_lists)]
