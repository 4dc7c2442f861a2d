"""Several eval.py runs side by side (compare.py): seeds averaged, τ intervals, paired differences.

A run is one algorithm: one eval.py results.json per seed. :func:`summarize` gives each run's τ (mean over
seeds), the spread across seeds and the bootstrap interval; :func:`paired` gives the relative difference
of one run over another on the prompts both evaluated, with its interval (:mod:`deepspec.eval.intervals`).
Runs written before eval.py recorded per-prompt counts get no interval, and the lines say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from deepspec.eval.intervals import (
    LEVEL,
    Difference,
    PromptMismatchError,
    align,
    interval,
    relative_difference,
    resample,
    run_draws,
    seed_spread,
)
from deepspec.eval.metrics import mean_by_position

_BY_POSITION = ("accept_rate_by_position", "conditional_accept_rate_by_position")


@dataclass
class Run:
    """One algorithm's results.json files (one per seed), as read, with the folders they came from."""

    name: str
    folders: list[str]
    results: list[dict]

    def has_counts(self) -> bool:
        return all(isinstance(m.get("per_prompt"), list) for r in self.results for m in r["tasks"].values())

    def seeds(self) -> list[dict]:
        """Per seed ``{task: per_prompt}``."""
        return [{t: m["per_prompt"] for t, m in r["tasks"].items()} for r in self.results]

    def labels(self) -> list[str]:
        """How notes and errors name each seed: the run's name, or ``<name> seed <k>`` (k from 1)."""
        return (
            [self.name]
            if len(self.folders) == 1
            else [f"{self.name} seed {k}" for k in range(1, len(self.folders) + 1)]
        )


def mean_tasks(results: Sequence[Mapping]) -> dict:
    """Per task the mean over seeds of τ and of the by-position rates (one seed: its tasks as they are)."""
    if len(results) == 1:
        return dict(results[0]["tasks"])
    out = {}
    for task in dict.fromkeys(t for r in results for t in r["tasks"]):
        ms = [r["tasks"][task] for r in results if task in r["tasks"]]
        taus = [m["acceptance_length"] for m in ms if m.get("acceptance_length") is not None]
        out[task] = {"acceptance_length": sum(taus) / len(taus) if taus else None, "num_seeds": len(ms)}
        for key in _BY_POSITION:
            out[task][key] = mean_by_position(ms, key=key)
    return out


@dataclass
class Summary:
    """A run's τ with error bars: per group (all, math, code, chat) and per task."""

    seeds: int
    macro: dict[str, float] = field(default_factory=dict)  # mean over seeds
    macro_ci: dict[str, list | None] = field(default_factory=dict)
    task_ci: dict[str, list | None] = field(default_factory=dict)
    spread: dict[str, float | None] = field(default_factory=dict)  # sd across seeds
    seed_macro: list[dict[str, float]] = field(default_factory=list)
    draft_cost: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what has no interval, or was left out, and why

    def as_json(self) -> dict:
        return {
            "seeds": self.seeds,
            "macro_ci": self.macro_ci,
            "task_ci": self.task_ci,
            "seed_macro": self.seed_macro,
            "spread_across_seeds": self.spread,
            "draft_cost": self.draft_cost,
            "notes": self.notes,
        }


def _mean_cost(run: Run) -> dict:
    """Mean over seeds of each draft-cost figure (None when a seed lacks it)."""
    costs = [r.get("draft_cost") or {} for r in run.results]
    out = {}
    for key in ("flops_per_round", "seconds_per_round"):
        values = [c.get(key) for c in costs]
        out[key] = None if any(v is None for v in values) else sum(values) / len(values)
    return out


def summarize(run: Run, *, domains, draws: int, seed: int, level: float = LEVEL) -> Summary:
    """τ (mean over seeds), its spread across seeds and its bootstrap interval, per group and per task."""
    s = Summary(seeds=len(run.results), draft_cost=_mean_cost(run))
    if not run.has_counts():
        s.notes.append(
            f"no interval, {' / '.join(run.folders)} has no per-prompt counts (written before eval.py recorded "
            "them); rerun eval.py there"
        )
        return s
    aligned = align(dict(zip(run.labels(), run.seeds())))
    s.notes += aligned.notes if len(run.results) > 1 else []
    s.notes += [n for n in [aligned.few_prompts_note()] if n]
    index = resample({t: len(k) for t, k in aligned.keys.items()}, draws=draws, seed=seed)
    d = run_draws(run.seeds(), keys=aligned.keys, index=index, domains=domains)
    s.macro, s.seed_macro = d.macro, d.seed_macro
    s.macro_ci = {g: interval(v, level=level) for g, v in d.macro_draws.items()}
    s.task_ci = {t: interval(v, level=level) for t, v in d.task_draws.items()}
    s.spread = {g: seed_spread([m[g] for m in d.seed_macro]) for g in d.macro}
    return s


@dataclass
class Pairing:
    """``a`` over ``b``: per group the relative difference and its interval, on the prompts both ran."""

    a: str
    b: str
    differences: dict[str, Difference]
    prompts: int  # paired prompts, over all tasks
    tasks: int
    notes: list[str]
    point: dict[str, float]  # without counts: the ratio of the two macro τs, no interval

    def as_json(self) -> dict:
        return {
            "differences": {
                g: {"relative": d.relative, "interval": d.interval, "resolved": d.resolved}
                for g, d in self.differences.items()
            },
            "paired_prompts": self.prompts,
            "paired_tasks": self.tasks,
            "notes": self.notes,
        }


def paired(a: Run, b: Run, *, domains, macro: Mapping[str, Mapping[str, float]], draws: int, seed: int) -> Pairing:
    """The paired difference of ``a`` over ``b`` (both runs' seeds, same prompts resampled together).

    ``macro`` (name -> group -> τ) gives the point difference of runs without per-prompt counts.
    Different prompts under the same task and index raise :class:`PromptMismatchError`.
    """
    if not (a.has_counts() and b.has_counts()):
        point = {g: macro[a.name][g] / macro[b.name][g] - 1 for g in macro[a.name] if macro[b.name].get(g)}
        return Pairing(a.name, b.name, {}, 0, 0, [], point)  # pairing_line says why there is no interval
    try:
        aligned = align(dict(zip(a.labels() + b.labels(), a.seeds() + b.seeds())))
    except PromptMismatchError as exc:
        raise PromptMismatchError(f"{a.name} vs {b.name}: {exc}") from None
    index = resample({t: len(k) for t, k in aligned.keys.items()}, draws=draws, seed=seed)
    da = run_draws(a.seeds(), keys=aligned.keys, index=index, domains=domains)
    db = run_draws(b.seeds(), keys=aligned.keys, index=index, domains=domains)
    prompts = sum(len(k) for k in aligned.keys.values())
    notes = aligned.notes + [n for n in [aligned.few_prompts_note()] if n]
    return Pairing(a.name, b.name, relative_difference(da, db), prompts, len(aligned.keys), notes, {})


def _pct(v: float) -> str:
    return f"{100 * v:+.1f}%"


def pairing_line(p: Pairing) -> str:
    """``dspark vs dflash (paired: 20 prompts in 5 tasks): all +46.1% [+20.3%, +70.2%], code +2.0% [...] not
    resolved, ...``."""
    if not p.differences:
        cells = ", ".join(f"{g} {_pct(v)}" for g, v in p.point.items())
        return f"{p.a} vs {p.b}: {cells} (no interval: a run has no per-prompt counts; rerun eval.py)"
    cells = []
    for g, d in p.differences.items():
        ci = "[no interval]" if d.interval is None else f"[{_pct(d.interval[0])}, {_pct(d.interval[1])}]"
        cells.append(f"{g} {_pct(d.relative)} {ci}" + (" not resolved" if d.resolved is False else ""))
    tasks = f"{p.tasks} task" + ("s" if p.tasks != 1 else "")
    return f"{p.a} vs {p.b} (paired: {p.prompts} prompts in {tasks}): " + ", ".join(cells)


def note_lines(summaries: Mapping[str, Summary], pairings: Sequence[Pairing]) -> list[str]:
    """The runs' notes, each once with the runs it concerns, then every paired difference with the notes of
    its own (those the runs' notes already say are left out)."""
    by_text: dict[str, list[str]] = {}
    for name, s in summaries.items():
        for note in s.notes:
            by_text.setdefault(note, []).append(name)
    lines = [f"{', '.join(names)}: {text}" for text, names in by_text.items()]
    for p in pairings:
        lines += [pairing_line(p)] + [f"  {note}" for note in p.notes if note not in by_text]
    return lines


def legend_lines(*, draws: int, seed: int, seeds: int) -> list[str]:
    """What the τ cells and the difference lines mean."""
    lines = []
    if seeds > 1:
        lines.append(f"τ: mean over {seeds} seeds ± its standard deviation across seeds, then the 95% interval")
    lines.append(
        f"intervals: 95% from a cluster bootstrap over prompts (whole prompts resampled within each task, the "
        f"same prompts for every run and seed of a draw; {draws} draws, seed {seed}); a difference whose interval "
        "contains 0 is marked 'not resolved': these prompts do not tell its sign"
    )
    return lines
