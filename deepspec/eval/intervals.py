"""Error bars for τ: a cluster bootstrap over prompts, paired differences between runs, seeds.

τ of a task is Σ committed / Σ rounds over its prompts (``committed = accepted + rounds``: each round
commits its accepted drafts plus one token), so rounds of one prompt are not independent draws: a
prompt's length and difficulty move all of them together. The bootstrap therefore resamples whole
prompts: each draw picks n prompts of a task with replacement (n = the task's prompt count), and every
task is resampled on its own (a stratified bootstrap: the macro average weighs tasks equally, so the
number of prompts per task is fixed). The interval is the central ``level`` share of the draws (the
percentile interval). A draw uses the same prompts for every run and every seed it covers, which makes
differences between runs paired.

Per-prompt counts are what ``eval.py`` writes in ``results.json`` under ``tasks.<name>.per_prompt``:
``{"prompt_index", "prompt_id", "prompt_tokens", "rounds", "accepted"}`` (:func:`prompt_counts`).
A *run* here is one or more seeds of one algorithm: a list of ``{task: per_prompt list}``; its τ is the
mean over seeds, its draws the mean over seeds of each seed's draw.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from deepspec.errors import DeepSpecError
from deepspec.eval.tasks import DOMAINS, task_domain

DEFAULT_DRAWS = 1000
DEFAULT_SEED = 0
MIN_DRAWS = 100  # a 95 % interval reads the 2.5 % tails: fewer draws leave a handful of values there
# A task of one prompt resamples to itself in every draw: a zero-width interval that would read as certainty.
# It gets none, and neither does an average over it.
MIN_PROMPTS = 2
LEVEL = 0.95
METHOD = "percentile interval of a cluster bootstrap over prompts, resampled within each task"

Interval = list  # [low, high]
PerPrompt = Sequence[Mapping]  # tasks.<name>.per_prompt of a results.json
Seeds = Sequence[Mapping[str, PerPrompt]]  # one {task: per_prompt} per seed of one run


class PromptMismatchError(DeepSpecError, ValueError):
    """Runs that claim the same prompt but hold different ones; the message names the task and prompt."""


def _draws(text: str) -> int:
    """``--bootstrap-draws``: a whole number >= MIN_DRAWS, refused at parse time."""
    import argparse

    try:
        draws = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if draws < MIN_DRAWS:
        raise argparse.ArgumentTypeError(
            f"must be >= {MIN_DRAWS} (a 95% interval reads the tails of the draws), got {draws}"
        )
    return draws


def add_bootstrap_args(parser) -> None:
    """``--bootstrap-draws N`` and ``--bootstrap-seed S``: the draws behind every τ interval (eval.py, compare.py)."""
    from deepspec.cli import nonnegative_int

    parser.add_argument(
        "--bootstrap-draws",
        type=_draws,
        default=DEFAULT_DRAWS,
        metavar="N",
        help="draws of the bootstrap over prompts behind every τ interval (95%%; whole prompts resampled "
        f"within each task; at least {MIN_DRAWS}; default: %(default)s)",
    )
    parser.add_argument(
        "--bootstrap-seed",
        type=nonnegative_int,
        default=DEFAULT_SEED,
        metavar="S",
        help="seed of those draws, recorded with the intervals (default: %(default)s)",
    )


def prompt_id(text: str) -> str:
    """A short fingerprint of a prompt's text: runs on different prompt files never pair up by index alone."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def prompt_counts(records: Sequence[Mapping]) -> list[dict]:
    """Per prompt: index, id, prompt tokens, rounds and accepted drafts, from the runner's decoded records."""
    return [
        {
            "prompt_index": int(r["prompt_index"]),
            "prompt_id": r.get("prompt_id"),
            "prompt_tokens": r.get("prompt_tokens"),
            "rounds": len(r["rounds"]),
            "accepted": sum(int(x["accepted"]) for x in r["rounds"]),
        }
        for r in records
    ]


def _key(p: Mapping) -> int:
    return int(p["prompt_index"])


def check_per_prompt(per_prompt, *, where: str) -> None:
    """A ``per_prompt`` list as eval.py writes it, or a :class:`DeepSpecError` naming ``where``."""
    if not isinstance(per_prompt, list):
        raise DeepSpecError(f"{where}: per_prompt must be a list of per-prompt counts, got {type(per_prompt).__name__}")
    seen = set()
    for i, p in enumerate(per_prompt):
        ok = isinstance(p, Mapping) and all(
            isinstance(p.get(k), int) and not isinstance(p.get(k), bool) and p.get(k) >= 0
            for k in ("prompt_index", "rounds", "accepted")
        )
        if not ok:
            raise DeepSpecError(
                f"{where}: per_prompt[{i}] needs whole numbers >= 0 prompt_index, rounds and accepted, got {p!r}"
            )
        if p["prompt_index"] in seen:
            raise DeepSpecError(f"{where}: prompt_index {p['prompt_index']} appears twice in per_prompt")
        seen.add(p["prompt_index"])


@dataclass
class Alignment:
    """The prompts several result sets share, per task, in one order; ``notes`` say what was left out."""

    keys: dict[str, list[int]]  # task -> shared prompt indices (sorted)
    notes: list[str]

    def few_prompts_note(self) -> str | None:
        """Names the tasks with too few prompts for an interval (None when every task has enough)."""
        few = [f"{t} ({len(k)})" for t, k in self.keys.items() if len(k) < MIN_PROMPTS]
        if not few:
            return None
        return (
            f"no interval for {', '.join(few)} or the averages over them: one prompt resamples to itself; "
            "evaluate more prompts per task"
        )


def align(named: Mapping[str, Mapping[str, PerPrompt]]) -> Alignment:
    """The tasks and prompts every result set in ``named`` (label -> {task: per_prompt}) holds.

    Pairs prompts by task and ``prompt_index``; a prompt whose ``prompt_id`` differs between two sets is
    not the same prompt: :class:`PromptMismatchError`. Tasks or prompts that only some sets have are
    left out, and said so in ``notes``.
    """
    labels = list(named)
    tasks = [t for t in dict.fromkeys(t for res in named.values() for t in res)]
    keys, notes = {}, []
    for task in tasks:
        having = [lab for lab in labels if task in named[lab]]
        if len(having) < len(labels):
            missing = [lab for lab in labels if lab not in having]
            notes.append(f"{task} left out of the pairing: {', '.join(missing)} did not evaluate it")
            continue
        ids: dict[int, tuple[str, object]] = {}
        sets = []
        for lab in labels:
            mine = {}
            for p in named[lab][task]:
                k, pid = _key(p), p.get("prompt_id")
                if k in ids and pid is not None and ids[k][1] is not None and ids[k][1] != pid:
                    raise PromptMismatchError(
                        f"{task} prompt {k} is not the same prompt in {ids[k][0]} and {lab} (prompt_id "
                        f"{ids[k][1]} vs {pid}): they read different prompt files; evaluate both on the same "
                        "--eval-data-dir to compare them"
                    )
                ids.setdefault(k, (lab, pid))
                mine[k] = p
            sets.append(set(mine))
        shared = sorted(set.intersection(*sets))
        if not shared:
            notes.append(f"{task} left out of the pairing: no prompt in common")
            continue
        if any(len(s) != len(shared) for s in sets):
            counts = ", ".join(f"{lab} {len(s)}" for lab, s in zip(labels, sets))
            notes.append(f"{task} paired over the {len(shared)} prompts all runs share ({counts})")
        keys[task] = shared
    return Alignment(keys=keys, notes=notes)


def _arrays(per_prompt: PerPrompt, keys: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(rounds, committed) per prompt, in the order of ``keys``."""
    by_key = {_key(p): p for p in per_prompt}
    rounds = np.array([int(by_key[k]["rounds"]) for k in keys], dtype=np.int64)
    accepted = np.array([int(by_key[k]["accepted"]) for k in keys], dtype=np.int64)
    return rounds, rounds + accepted


def resample(sizes: Mapping[str, int], *, draws: int, seed: int) -> dict[str, np.ndarray]:
    """Prompt positions [draws, n] per task, drawn with replacement; tasks in ``sizes`` order, one generator."""
    assert draws >= 1, f"draws must be >= 1, got {draws}"
    rng = np.random.default_rng(seed)
    return {task: rng.integers(0, n, size=(draws, n)) for task, n in sizes.items()}


def tau_of(rounds: np.ndarray, committed: np.ndarray, *, index: np.ndarray | None = None):
    """Σ committed / Σ rounds over the prompts (or over each row of ``index``); NaN where no round ran."""
    if index is None:
        r, c = rounds.sum(), committed.sum()
    else:
        r, c = rounds[index].sum(axis=-1), committed[index].sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(r > 0, c / np.maximum(r, 1), np.nan)


def interval(draws: np.ndarray, *, level: float = LEVEL) -> Interval | None:
    """The central ``level`` share of ``draws`` (NaN draws ignored); None when every draw is NaN."""
    draws = np.asarray(draws, dtype=np.float64)
    if not np.isfinite(draws).any():
        return None
    lo, hi = np.nanpercentile(draws, [50 * (1 - level), 50 * (1 + level)])
    return [float(lo), float(hi)]


def _domains_of(tasks, domains: Mapping[str, str] | None) -> dict[str, list[str]]:
    """``{"all": tasks, domain: its tasks}`` in the fixed order all, math, code, chat, then others."""
    domains = domains or {}
    by = {}
    for t in tasks:
        by.setdefault(domains.get(t) or task_domain(t), []).append(t)
    order = [d for d in DOMAINS if d in by] + sorted(set(by) - set(DOMAINS))
    return {"all": list(tasks), **{d: by[d] for d in order}}


def _macro(per_task: Mapping[str, np.ndarray], groups: Mapping[str, list[str]]) -> dict[str, np.ndarray]:
    """Per group, the mean over its tasks of their values (tasks whose τ is NaN everywhere are left out)."""
    out = {}
    for name, tasks in groups.items():
        kept = [per_task[t] for t in tasks if t in per_task]
        if kept:
            out[name] = np.mean(np.stack(kept), axis=0)
    return out


@dataclass
class RunDraws:
    """A run's (all seeds') point estimates and bootstrap draws on aligned prompts."""

    tau: dict[str, float]  # task -> τ, mean over seeds
    task_draws: dict[str, np.ndarray]  # task -> [draws]
    macro: dict[str, float]  # group (all, math, ...) -> macro τ, mean over seeds
    macro_draws: dict[str, np.ndarray]
    seed_macro: list[dict[str, float]]  # per seed: group -> macro τ


def run_draws(
    seeds: Seeds, *, keys: Mapping[str, list[int]], index: Mapping[str, np.ndarray], domains=None
) -> RunDraws:
    """τ and bootstrap draws of one run (its seeds averaged) over the prompts ``keys`` resampled by ``index``."""
    per_seed_tau, per_seed_draws = [], []
    for seed in seeds:
        taus, draws = {}, {}
        for task, k in keys.items():
            rounds, committed = _arrays(seed[task], k)
            point = tau_of(rounds, committed)
            if np.isfinite(point):  # a task without rounds has no τ, as in metrics.macro_average
                taus[task] = float(point)
                enough = len(k) >= MIN_PROMPTS
                draws[task] = (
                    tau_of(rounds, committed, index=index[task]) if enough else np.full(len(index[task]), np.nan)
                )
        per_seed_tau.append(taus)
        per_seed_draws.append(draws)
    tasks = [t for t in keys if all(t in taus for taus in per_seed_tau)]
    tau = {t: float(np.mean([taus[t] for taus in per_seed_tau])) for t in tasks}
    task_draws = {t: np.mean(np.stack([d[t] for d in per_seed_draws]), axis=0) for t in tasks}
    groups = _domains_of(tasks, domains)
    seed_macro = [
        {g: float(v) for g, v in _macro({t: np.float64(taus[t]) for t in tasks}, groups).items()}
        for taus in per_seed_tau
    ]
    macro = {g: float(np.mean([m[g] for m in seed_macro])) for g in seed_macro[0]} if seed_macro else {}
    return RunDraws(
        tau=tau, task_draws=task_draws, macro=macro, macro_draws=_macro(task_draws, groups), seed_macro=seed_macro
    )


def tau_intervals(
    per_task: Mapping[str, PerPrompt],
    *,
    domains: Mapping[str, str] | None = None,
    draws: int = DEFAULT_DRAWS,
    seed: int = DEFAULT_SEED,
    level: float = LEVEL,
) -> tuple[dict[str, Interval | None], dict[str, Interval | None]]:
    """One run's 95 % intervals: ``({task: [lo, hi]}, {group: [lo, hi]})``, groups all / math / code / chat."""
    keys = {t: sorted(_key(p) for p in pp) for t, pp in per_task.items() if pp}
    index = resample({t: len(k) for t, k in keys.items()}, draws=draws, seed=seed)
    run = run_draws([per_task], keys=keys, index=index, domains=domains)
    tasks = {t: interval(run.task_draws[t], level=level) if t in run.task_draws else None for t in per_task}
    return tasks, {g: interval(d, level=level) for g, d in run.macro_draws.items()}


@dataclass
class Difference:
    """``a`` against ``b`` on paired prompts: relative difference τ_a/τ_b − 1 and its interval."""

    relative: float | None
    interval: Interval | None

    @property
    def resolved(self) -> bool | None:
        """False when the interval contains 0 (the sign is not measured), None without an interval."""
        if self.interval is None:
            return None
        return not (self.interval[0] <= 0.0 <= self.interval[1])


def relative_difference(a: RunDraws, b: RunDraws, *, level: float = LEVEL) -> dict[str, Difference]:
    """Per group (all, math, ...) both runs have: τ_a/τ_b − 1 and its paired bootstrap interval.

    ``a`` and ``b`` must come from :func:`run_draws` with the same ``keys`` and ``index``.
    """
    out = {}
    for g in a.macro:
        if g not in b.macro or not b.macro[g]:
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = a.macro_draws[g] / b.macro_draws[g] - 1.0
        out[g] = Difference(relative=a.macro[g] / b.macro[g] - 1.0, interval=interval(ratio, level=level))
    return out


def seed_spread(values: Sequence[float]) -> float | None:
    """Sample standard deviation across seeds (n − 1 in the denominator); None for one seed."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else None
