"""Batched speculative decoding: propose, choose lengths, verify, commit — one round per loop.

Each row of the batch is one request. A round:

1. the proposer drafts γ tokens after each row's pending token;
2. the policy chooses how many of them each row sends to verification (ℓ_r; default all γ);
3. the target runs once over [pending, x_1..x_ℓ] per row (rows padded to the longest ℓ + 1);
4. :func:`~deepspec.decoding.verify.verify_block` accepts a prefix and draws the next token;
5. accepted slots stay valid in both KV caches, the rest are masked and, where no row still
   needs them, cropped (recurrent target layers keep the state after each row's accepted slots:
   :mod:`deepspec.decoding.recurrent`); the proposer extends its context from the verify pass.

Output is token-for-token the target's own sampling process (exact greedy at temperature 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from deepspec.decoding.confidence import apply_temperatures
from deepspec.decoding.rounds import engine_round
from deepspec.decoding.slots import SlotTable
from deepspec.decoding.target_runner import TargetRunner
from deepspec.decoding.verify import probs_from_logits, sample, verify_block


@dataclass
class Generation:
    tokens: list[int] = field(default_factory=list)  # generated token ids (stop token included)
    rounds: list[dict] = field(default_factory=list)  # deepspec.decoding.rounds.engine_round records
    stopped: bool = False  # hit a stop token (else max_new_tokens)


def _left_pad(prompts: Sequence[Sequence[int]], device):
    P = max(len(p) for p in prompts)
    tokens = torch.zeros(len(prompts), P, dtype=torch.long, device=device)
    valid = torch.zeros(len(prompts), P, dtype=torch.bool, device=device)
    for r, p in enumerate(prompts):
        tokens[r, P - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        valid[r, P - len(p) :] = True
    return tokens, valid, (valid.long().cumsum(1) - 1).clamp_min(0)


def _finish(gen: Generation, new_tokens: list[int], *, max_new_tokens: int, stop_ids: set[int]) -> bool:
    """Append committed tokens up to a stop token or the budget; True when the request is done."""
    for tok in new_tokens:
        gen.tokens.append(tok)
        if tok in stop_ids:
            gen.stopped = True
            return True
        if len(gen.tokens) >= max_new_tokens:
            return True
    return False


@torch.no_grad()
def speculative_generate(
    *,
    runner: TargetRunner,
    proposer,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float,
    stop_token_ids: Sequence[int] = (),
    policy=None,
    confidence_temperatures: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
) -> list[Generation]:
    """Decode a batch of tokenized prompts together; returns one :class:`Generation` per prompt.

    ``policy.plan(confidences [R, γ] | None, gamma=γ, num_requests=R) -> ℓ [R]`` chooses proposal lengths
    (:mod:`deepspec.decoding.scheduler`); confidences are sigmoid(logit / T_k) with the STS
    ``confidence_temperatures`` when given.
    """
    assert max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {max_new_tokens}"
    assert all(len(p) for p in prompts), "every prompt needs at least one token"
    device = runner.target.device
    stop_ids = set(int(t) for t in stop_token_ids)
    G = proposer.gamma
    gens = [Generation() for _ in prompts]
    B = len(prompts)
    slots = SlotTable(batch=B, device=device)
    runner.reset()
    proposer.reset(batch=B)
    if policy is not None:
        policy.reset()  # the asynchronous scheduler keeps a short history per run
    temps = [1.0] * G if confidence_temperatures is None else list(confidence_temperatures)

    # Prefill: the target runs over the prompts and samples the first token of each row.
    tokens, valid, pos = _left_pad(prompts, device)
    step = runner.forward(slots=slots, tokens=tokens, positions=pos, new_valid=valid)
    pending = sample(probs_from_logits(step.logits[:, -1], temperature), generator)
    proposer.extend(
        slots=slots,
        hidden_states=step.hidden_states,
        positions=pos,
        valid=valid,
        next_tokens=torch.cat([tokens[:, 1:], pending[:, None]], 1),
    )
    slots.append(valid=valid, pos=pos)
    rows = list(range(B))  # row -> request index
    sequences = [list(p) + [int(t)] for p, t in zip(prompts, pending.tolist())]
    done = [_finish(gens[r], [int(pending[r])], max_new_tokens=max_new_tokens, stop_ids=stop_ids) for r in rows]

    while True:
        keep = [i for i, r in enumerate(rows) if not done[r]]
        if not keep:
            break
        if len(keep) < len(rows):  # drop finished requests from every cache
            idx = torch.tensor(keep, device=device)
            for part in (slots, runner, proposer):
                part.select_rows(idx)
            pending, rows = pending[idx], [rows[i] for i in keep]
        n_rows = len(rows)

        prop = proposer.propose(
            slots=slots,
            pending=pending,
            temperature=temperature,
            generator=generator,
            sequences=[sequences[r] for r in rows],
        )
        conf = None if prop.conf_logits is None else apply_temperatures(prop.conf_logits, temps)
        lengths = (
            policy.plan(conf, gamma=G, num_requests=n_rows)
            if policy is not None
            else torch.full((n_rows,), G, dtype=torch.long)
        ).to(device)
        n = int(lengths.max()) + 1  # pending + the longest proposal

        feed = torch.cat([pending[:, None], prop.tokens[:, : n - 1]], 1)
        feed_pos = slots.next_position()[:, None] + torch.arange(n, device=device)
        step = runner.forward(slots=slots, tokens=feed, positions=feed_pos)
        verdict = verify_block(
            draft_tokens=prop.tokens[:, : n - 1],
            draft_probs=prop.probs[:, : n - 1],
            target_probs=probs_from_logits(step.logits, temperature),
            proposal_len=lengths,
            generator=generator,
        )
        accepted, pending = verdict.num_accepted, verdict.next_token
        runner.commit(accepted + 1)  # pending + the accepted drafts are this row's committed slots

        # Fed slot i holds token i of the feed; its successor is draft i+1, or the new pending token.
        new_valid = torch.arange(n, device=device)[None] <= accepted[:, None]
        successors = torch.cat([prop.tokens[:, : n - 1], pending[:, None]], 1)
        successors[torch.arange(n_rows, device=device), accepted] = pending
        proposer.extend(
            slots=slots, hidden_states=step.hidden_states, positions=feed_pos, valid=new_valid, next_tokens=successors
        )
        slots.append(valid=new_valid, pos=feed_pos)
        cut = slots.trailing_invalid()
        for part in (slots, runner, proposer):
            part.crop(cut)

        for i, r in enumerate(rows):
            a = int(accepted[i])
            gens[r].rounds.append(
                engine_round(
                    index=len(gens[r].rounds),
                    gamma=G,
                    proposal_len=int(lengths[i]),
                    accepted=a,
                    conf_logits=None if prop.conf_logits is None else prop.conf_logits[i].tolist(),
                )
            )
            new = prop.tokens[i, :a].tolist() + [int(pending[i])]
            sequences[r].extend(new)
            done[r] = _finish(gens[r], new, max_new_tokens=max_new_tokens, stop_ids=stop_ids)
    return gens


@torch.no_grad()
def target_generate(
    *,
    runner: TargetRunner,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float,
    stop_token_ids: Sequence[int] = (),
    generator: torch.Generator | None = None,
) -> list[Generation]:
    """Plain autoregressive decoding with the same cache code (the reference and the speed baseline)."""
    return speculative_generate(
        runner=runner,
        proposer=_NoDraft(),
        prompts=prompts,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        stop_token_ids=stop_token_ids,
        generator=generator,
    )


class _NoDraft:
    """Proposes nothing: every round is one target step (γ = 0)."""

    gamma = 0

    def reset(self, *, batch):
        pass

    def extend(self, **_):
        pass

    def propose(self, *, pending, **_):
        from deepspec.decoding.proposers import Proposal

        B = pending.shape[0]
        return Proposal(
            tokens=pending.new_zeros(B, 0), probs=torch.zeros(B, 0, 1, device=pending.device), conf_logits=None
        )

    def crop(self, n):
        pass

    def select_rows(self, rows):
        pass
