"""Acceptance metrics from the decoding engine's per-round records.

One record per verification round of one request, the lines of ``rounds.jsonl``; its fields and
their one validator are in :mod:`deepspec.decoding.rounds`. Metrics need only ``gamma`` (γ, draft
slots produced), ``proposal_len`` (ℓ ≤ γ, slots sent to the target) and ``accepted`` (0..ℓ, draft
tokens the target accepted); a round commits ``accepted + 1`` tokens.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from deepspec.decoding.rounds import RoundsError, check_counts
from deepspec.errors import DeepSpecError
from deepspec.eval.tasks import DOMAINS, task_domain


class MetricsError(DeepSpecError, ValueError):
    """Round records that cannot come from a correct engine; the message names the bad record."""


def task_metrics(
    rounds: Iterable[Mapping],
    *,
    gamma: int,
    num_samples: int,
    generated_tokens: int | None = None,
    wall_seconds: float | None = None,
) -> dict:
    """Metrics of one task from its round records.

    Returned keys (rates are fractions in [0, 1]; ``None`` where a quantity has no rounds to
    average over):

    - ``acceptance_length``: τ, the mean of ``accepted + 1`` over rounds — tokens committed per
      target forward including the bonus/resampled token (the paper's accepted length).
    - ``num_samples``: prompts evaluated (as passed by the caller).
    - ``num_rounds``: verification rounds (target forwards) over all prompts.
    - ``gamma``: the run's γ (drafted slots per round).
    - ``accept_rate_by_position``: list for k = 1..γ, the fraction of rounds with
      ``accepted ≥ k`` (the paper's accept_rate@k; truncated rounds count as not accepted).
    - ``conditional_accept_rate_by_position``: list for k = 1..γ; among rounds with
      ``accepted ≥ k−1`` and ``proposal_len ≥ k`` (slot k reached and verified), the fraction with
      ``accepted ≥ k``; ``None`` where no round qualifies (the paper's Figure 2 measure).
    - ``mean_proposal_len``: mean ℓ, slots sent to verification per round.
    - ``verify_rate``: mean of ℓ/γ — the share of drafted slots sent to the target (1.0 when
      nothing truncates proposals).
    - ``acceptance_rate``: Σaccepted / Σℓ, the share of verified draft tokens accepted.
    - ``generated_tokens``: tokens produced; the caller's count when given (it may be below
      Σ(accepted+1) when generation stops at EOS or the token limit mid-block), else
      Σ(accepted+1).
    - ``tokens_per_second``: ``generated_tokens / wall_seconds`` when ``wall_seconds`` is given.
    - ``wall_seconds``: as passed (``None`` if not).
    """
    assert gamma >= 1, f"gamma must be >= 1, got {gamma}; pass the number of draft slots per round"
    assert num_samples >= 0, f"num_samples must be >= 0, got {num_samples}"
    try:
        checked = [check_counts(r, where=f"round record #{i}", gamma=gamma) for i, r in enumerate(rounds)]
    except RoundsError as exc:  # the records' own check; MetricsError says it came from here
        raise MetricsError(str(exc)) from None
    n = len(checked)
    committed = sum(acc + 1 for _, _, acc in checked)
    total_verified = sum(ell for _, ell, _ in checked)
    total_accepted = sum(acc for _, _, acc in checked)

    accept_by_pos: list[float | None] = []
    cond_by_pos: list[float | None] = []
    for k in range(1, gamma + 1):
        hit = sum(1 for _, _, acc in checked if acc >= k)
        accept_by_pos.append(hit / n if n else None)
        # Slot k is judged only if slots 1..k-1 all passed and slot k was actually sent.
        reached = sum(1 for _, ell, acc in checked if acc >= k - 1 and ell >= k)
        cond_by_pos.append(hit / reached if reached else None)

    if generated_tokens is None:
        generated_tokens = committed
    tps = None
    if wall_seconds is not None:
        assert wall_seconds >= 0, f"wall_seconds must be >= 0, got {wall_seconds}"
        tps = generated_tokens / wall_seconds if wall_seconds > 0 else None

    return {
        "acceptance_length": committed / n if n else None,
        "num_samples": int(num_samples),
        "num_rounds": n,
        "gamma": int(gamma),
        "accept_rate_by_position": accept_by_pos,
        "conditional_accept_rate_by_position": cond_by_pos,
        "mean_proposal_len": total_verified / n if n else None,
        "verify_rate": sum(ell / g for g, ell, _ in checked) / n if n else None,
        "acceptance_rate": total_accepted / total_verified if total_verified else None,
        "generated_tokens": int(generated_tokens),
        "tokens_per_second": tps,
        "wall_seconds": wall_seconds,
    }


def engine_counters(rounds: Iterable[Mapping], *, gamma: int) -> dict:
    """vLLM's speculative-decoding counters (``SpecDecodingStats``) of round records, in vLLM's names.

    A round that sent ``proposal_len`` ℓ > 0 drafts to the target is one vLLM *draft* (a verify step with
    ℓ draft tokens, ``accepted`` of them accepted); a round with ℓ = 0 (a threshold cut the whole block) is
    a plain decode step, which vLLM does not count. Keys: ``num_spec_tokens`` (γ), ``num_drafts``,
    ``num_draft_tokens`` (Σℓ), ``num_accepted_tokens`` (Σaccepted), ``num_accepted_tokens_per_pos`` (for
    k = 1..γ, drafts with ``accepted >= k``) and ``num_draft_tokens_per_pos`` (drafts with ℓ >= k).
    vLLM's mean acceptance length is ``1 + num_accepted_tokens / num_drafts``.
    """
    try:
        checked = [check_counts(r, where=f"round record #{i}", gamma=gamma) for i, r in enumerate(rounds)]
    except RoundsError as exc:
        raise MetricsError(str(exc)) from None
    drafts = [(ell, acc) for _, ell, acc in checked if ell > 0]
    return {
        "num_spec_tokens": int(gamma),
        "num_drafts": len(drafts),
        "num_draft_tokens": sum(ell for ell, _ in drafts),
        "num_accepted_tokens": sum(acc for _, acc in drafts),
        "num_accepted_tokens_per_pos": [sum(1 for _, acc in drafts if acc >= k) for k in range(1, gamma + 1)],
        "num_draft_tokens_per_pos": [sum(1 for ell, _ in drafts if ell >= k) for k in range(1, gamma + 1)],
    }


def request_steps(rounds: Iterable[Mapping]) -> dict:
    """One request's rounds as vLLM's per-request ``detailed`` metrics: the ordered accepted and drafted
    counts of its verify steps (rounds with ℓ = 0 are no step there, see :func:`engine_counters`)."""
    steps = [(int(r["accepted"]), int(r["proposal_len"])) for r in rounds if int(r["proposal_len"]) > 0]
    return {"per_step_accepted": [a for a, _ in steps], "per_step_drafted": [d for _, d in steps]}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def macro_average(results: Mapping[str, Mapping], *, domains: Mapping[str, str] | None = None) -> dict:
    """Macro-averaged τ: ``{"all": ..., "math": ..., "code": ..., "chat": ...}``.

    Each task weighs the same regardless of its sample count (the paper's averages). Tasks with
    no rounds (τ None) are left out; domains with no tasks are omitted; custom tasks count in
    "all" and in an "other" entry. ``domains`` maps task name to domain (unlisted names fall back
    to the known-task table).
    """
    domains = dict(domains or {})
    by_domain: dict[str, list[float]] = {}
    every: list[float] = []
    for name, m in results.items():
        tau = m.get("acceptance_length")
        if tau is None:
            continue
        every.append(float(tau))
        by_domain.setdefault(domains.get(name, task_domain(name)), []).append(float(tau))
    out: dict[str, float] = {}
    if every:
        out["all"] = _mean(every)
    # Fixed key order (all, math, code, chat, then others) keeps reports and JSON stable.
    for d in list(DOMAINS) + sorted(set(by_domain) - set(DOMAINS)):
        if d in by_domain:
            out[d] = _mean(by_domain[d])
    return out


def mean_by_position(results: Iterable[Mapping], *, key: str) -> list[float | None]:
    """Per-position mean of a by-position list over several tasks, skipping ``None`` entries.

    Lists of different lengths (tasks run with different γ) are averaged position by position.
    """
    lists = [m.get(key) or [] for m in results]
    length = max((len(v) for v in lists), default=0)
    out: list[float | None] = []
    for k in range(length):
        out.append(_mean([v[k] for v in lists if k < len(v) and v[k] is not None]))
    return out
