"""The draft's forward cost per decoding round, next to τ: FLOPs counted from its modules, seconds measured.

A round of one request costs the draft one ``propose`` (draft the block) and one ``extend`` (take in the
target's states of the slots just verified). :class:`MeteredProposer` wraps a proposer during the eval
decode and adds up, per request-round, the FLOPs the proposer says those calls compute
(``extend_flops`` / ``propose_flops`` in :mod:`deepspec.decoding.proposers`, at the real context length
of every call) and the wall time they take on this device. The prefill's extend (the prompt, once per
request) is not a round's cost and is left out.

Seconds per round are the median over rounds (a round's propose plus the extend after it): the first
calls pay one-time set-up and a shared machine stalls some calls, and the median keeps both out; the mean
is kept next to it. With ``--batch-size`` B a call serves B requests: its FLOPs count B times, its time
is split evenly among the B request-rounds (amortised over the batch).
"""

from __future__ import annotations

import statistics
import time


class MeteredProposer:
    """A proposer that also counts the FLOPs and the seconds of every round it serves (see module doc)."""

    def __init__(self, proposer, *, synchronize=None):
        self.inner = proposer
        self.gamma = proposer.gamma
        self.counts_flops = hasattr(proposer, "propose_flops") and hasattr(proposer, "extend_flops")
        self._sync = synchronize or (lambda: None)  # torch.cuda.synchronize on a GPU: time the work, not the launch
        self.flops = 0
        self.round_seconds: list[float] = []  # per propose call: its time and the next extend's, per request
        self.rounds = 0  # request-rounds: one per request per propose call
        self._prefill = True

    def _timed(self, fn, **kwargs):
        self._sync()
        t0 = time.perf_counter()
        out = fn(**kwargs)
        self._sync()
        return out, time.perf_counter() - t0

    def reset(self, *, batch: int) -> None:
        self.inner.reset(batch=batch)
        self._prefill = True

    def extend(self, *, slots, hidden_states, positions, valid, next_tokens) -> None:
        cached, (rows, new) = slots.length, tuple(positions.shape)
        _, seconds = self._timed(
            self.inner.extend,
            slots=slots,
            hidden_states=hidden_states,
            positions=positions,
            valid=valid,
            next_tokens=next_tokens,
        )
        if self._prefill:  # the prompt: once per request, not a round
            self._prefill = False
            return
        self.round_seconds[-1] += seconds / rows
        if self.counts_flops:
            self.flops += rows * self.inner.extend_flops(new_slots=new, cached_slots=cached)

    def propose(self, *, slots, pending, **kwargs):
        rows, cached = int(pending.shape[0]), slots.length
        out, seconds = self._timed(self.inner.propose, slots=slots, pending=pending, **kwargs)
        self.round_seconds.append(seconds / rows)
        self.rounds += rows
        if self.counts_flops:
            self.flops += rows * self.inner.propose_flops(cached_slots=cached)
        return out

    def crop(self, n: int) -> None:
        self.inner.crop(n)

    def select_rows(self, rows) -> None:
        self.inner.select_rows(rows)

    def totals(self) -> dict:
        """``{"flops", "rounds", "round_seconds"}`` so far (flops None for a proposer that does not count them;
        round_seconds: per propose call, the seconds of each of its request-rounds)."""
        return {
            "flops": self.flops if self.counts_flops else None,
            "rounds": self.rounds,
            "round_seconds": list(self.round_seconds),
        }


def per_round(totals: list[dict]) -> dict:
    """The draft's cost per request-round over several :meth:`MeteredProposer.totals`.

    ``{"flops_per_round", "seconds_per_round" (median), "seconds_per_round_mean", "rounds"}``; a value is
    None where no round ran or no FLOPs were counted.
    """
    rounds = sum(t["rounds"] for t in totals)
    flops = None if any(t["flops"] is None for t in totals) else sum(t["flops"] for t in totals)
    seconds = [s for t in totals for s in t["round_seconds"]]
    return {
        "flops_per_round": flops / rounds if rounds and flops is not None else None,
        "seconds_per_round": statistics.median(seconds) if seconds else None,
        "seconds_per_round_mean": statistics.fmean(seconds) if seconds else None,
        "rounds": rounds,
    }
