"""Reports of evaluation results: text and Markdown tables, the results JSON (plots: ``deepspec.eval.plots``).

``results`` everywhere is ``{task name: task_metrics(...) dict}`` (see ``deepspec.eval.metrics``);
``results_by_algorithm`` is ``{algorithm label: results}``. Domains come from the caller's
``{task: domain}`` map, falling back to the known-task table for names it does not list.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Mapping

from deepspec.errors import DeepSpecError
from deepspec.eval.metrics import macro_average, mean_by_position
from deepspec.eval.tasks import DOMAINS, task_domain
from deepspec.fsio import atomic_write

Results = Mapping[str, Mapping]

# Checkpoint folders end in step_N / step_latest: their basename alone does not say which run.
_STEP_DIR = re.compile(r"^(step_\d+|step_latest|final|latest)$")


def short_name(path: str | os.PathLike) -> str:
    """Basename of a model path or hub id; ``<run>/step_N`` for checkpoint step folders."""
    parts = [p for p in re.split(r"[\\/]+", str(path)) if p]
    if not parts:
        return str(path)
    if _STEP_DIR.match(parts[-1]) and len(parts) > 1:
        return f"{parts[-2]}/{parts[-1]}"
    return parts[-1]


def domain_of(name: str, domains: Mapping[str, str] | None) -> str:
    """The caller's domain for ``name``, else the known-task table's."""
    return (domains or {}).get(name) or task_domain(name)


def ordered_domains(names, domains: Mapping[str, str] | None) -> list[str]:
    """Domains present among ``names``: the known ones in table order, then the rest sorted."""
    present = {domain_of(n, domains) for n in names}
    return [d for d in DOMAINS if d in present] + sorted(present - set(DOMAINS))


def _mean(values) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _num(v: float | None, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def _proposal(gamma: int, mean_len: float | None) -> str:
    """γ alone when every round verified all γ slots, else ``γ (mean ℓ)`` e.g. ``7 (4.2)``."""
    if mean_len is None or abs(mean_len - gamma) < 1e-9:
        return str(gamma)
    shown = f"{mean_len:.1f}"
    if shown == f"{gamma:.1f}":  # 6.97 would print as "7 (7.0)"; show the truncation
        shown = f"{mean_len:.2f}"
    return f"{gamma} ({shown})"


def _ci(ci) -> str:
    """A 95 % interval as ``[2.61, 3.27]`` (``-`` when there is none)."""
    return "-" if not ci else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def _row(label: str, *, target: str, draft: str, gamma: int, tau, ci, mean_len, verify, rates) -> list[str]:
    rates = list(rates) + [None] * max(0, gamma - len(rates))
    cells = [label, target, draft, _proposal(gamma, mean_len), _num(tau)] + ([] if ci is False else [_ci(ci)])
    return cells + [_pct(verify)] + [_pct(r) for r in rates[:gamma]]


def _table_rows(
    results: Results,
    *,
    target: str,
    draft: str,
    gamma: int,
    domains: Mapping[str, str] | None,
    macro_ci: Mapping[str, list] | None,
) -> tuple[list[str], list[list[str]], int]:
    """Header, rows (tasks, then per-domain averages, then the overall macro average), #task rows.

    The ``95% CI`` column (after accept_len) is there when ``macro_ci`` is given: tasks read theirs from
    ``acceptance_length_ci``, average rows from ``macro_ci`` (:mod:`deepspec.eval.intervals`).
    """
    assert gamma >= 1, f"gamma must be >= 1, got {gamma}"
    t, d = short_name(target), short_name(draft)
    with_ci = macro_ci is not None
    header = ["dataset", "target", "draft", "proposal_len", "accept_len"] + (["95% CI"] if with_ci else [])
    header += ["verify"] + [f"acc@{k}" for k in range(1, gamma + 1)]
    rows = [
        _row(
            name,
            target=t,
            draft=d,
            gamma=gamma,
            tau=m.get("acceptance_length"),
            ci=m.get("acceptance_length_ci") if with_ci else False,
            mean_len=m.get("mean_proposal_len"),
            verify=m.get("verify_rate"),
            rates=m.get("accept_rate_by_position") or [],
        )
        for name, m in results.items()
    ]
    n_tasks = len(rows)
    macro = macro_average(results, domains={n: domain_of(n, domains) for n in results})

    def avg_row(label: str, names: list[str], key: str) -> list[str]:
        ms = [results[n] for n in names]
        return _row(
            label,
            target=t,
            draft=d,
            gamma=gamma,
            tau=macro.get(key),
            ci=macro_ci.get(key) if with_ci else False,
            mean_len=_mean(m.get("mean_proposal_len") for m in ms),
            verify=_mean(m.get("verify_rate") for m in ms),
            rates=mean_by_position(ms, key="accept_rate_by_position"),
        )

    if n_tasks:
        for dom in ordered_domains(results, domains):
            names = [n for n in results if domain_of(n, domains) == dom]
            rows.append(avg_row(f"avg {dom} ({len(names)})", names, dom))
        rows.append(avg_row(f"macro-avg ({n_tasks})", list(results), "all"))
    return header, rows, n_tasks


def format_table(
    results: Results,
    *,
    target: str,
    draft: str,
    gamma: int,
    domains: Mapping[str, str] | None = None,
    macro_ci: Mapping[str, list] | None = None,
) -> str:
    """Fixed-width text table: one row per task, per-domain average rows, a final macro-average row.

    Columns: dataset, target and draft (basenames), proposal length (γ, or ``γ (mean ℓ)`` when a
    threshold/scheduler truncated proposals), accept_len τ, its 95 % interval (with ``macro_ci``), verify
    rate, accept_rate@1..@γ (%). Average rows are macro averages over tasks (each task weighs the same).
    """
    header, rows, n_tasks = _table_rows(
        results, target=target, draft=draft, gamma=gamma, domains=domains, macro_ci=macro_ci
    )
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        # Text columns (dataset, target, draft) left, numbers right.
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(line(header))
    out = [line(header), rule] + [line(r) for r in rows[:n_tasks]]
    if len(rows) > n_tasks:
        out += [rule] + [line(r) for r in rows[n_tasks:]]
    return "\n".join(out)


def markdown_table(
    results: Results,
    *,
    target: str,
    draft: str,
    gamma: int,
    domains: Mapping[str, str] | None = None,
    macro_ci: Mapping[str, list] | None = None,
) -> str:
    """The ``format_table`` content as a Markdown table (average rows in bold)."""
    header, rows, n_tasks = _table_rows(
        results, target=target, draft=draft, gamma=gamma, domains=domains, macro_ci=macro_ci
    )

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [line(header), "|" + "|".join([":---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    out += [line(r) for r in rows[:n_tasks]]
    out += [line([f"**{r[0]}**"] + r[1:]) for r in rows[n_tasks:]]
    return "\n".join(out)


def coverage_line(covered, absent=()) -> str:
    """Which tasks a τ table covers (its averages are over these), and which requested ones it lacks."""
    covered = list(covered)
    line = f"tasks covered ({len(covered)}): {', '.join(covered)}"
    if absent:
        line += f"; not covered, no prompt file: {', '.join(absent)} (eval_datasets/README.md says how to fetch them)"
    return line


def interval_line(bootstrap: Mapping, *, without=()) -> str:
    """What the τ intervals are: level, method, draws and seed (``meta.bootstrap`` of a results.json), and the
    tasks ``without`` one (a single prompt, or no round)."""
    line = (
        f"τ intervals: {100 * bootstrap['level']:.0f}% from a cluster bootstrap over prompts (whole prompts "
        f"resampled within each task; {bootstrap['draws']} draws, seed {bootstrap['seed']})"
    )
    if without:
        line += (
            f"; none for {', '.join(without)} or the averages over them (one prompt, or no round: "
            "evaluate more prompts per task)"
        )
    return line


def si(value: float | None, unit: str = "") -> str:
    """``45.2 M`` / ``5.41 G`` style: three significant digits with an SI prefix (``-`` for None)."""
    if value is None:
        return "-"
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def draft_cost_line(cost: Mapping, *, tau: float | None) -> str:
    """The draft's forward cost per round (``draft_cost`` of a results.json) and macro τ per unit of it."""
    flops, seconds = cost.get("flops_per_round"), cost.get("seconds_per_round")
    if seconds is None:
        return "draft cost per round: no round was decoded"
    line = f"draft cost per round: {si(flops, 'FLOP')}, {_g3(1000 * seconds)} ms measured here (median)"
    if tau is not None:
        line += f"; macro τ per draft GFLOP {_g3(tau / (flops / 1e9))}" if flops else ""
        line += f", per draft ms {_g3(tau / (1000 * seconds))}" if seconds else ""
    return line


def to_jsonable(obj):
    """Replace NaN/inf floats by None (strict JSON) inside dicts and lists.

    AUROC is NaN with one class present and a rate is NaN with nothing to divide by; reports store
    those as null so every JSON reader (not only Python's) can load them.
    """
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_results(
    path: str | os.PathLike,
    *,
    results: Results,
    meta: Mapping,
    domains: Mapping[str, str] | None = None,
    extra: Mapping | None = None,
) -> None:
    """Write ``{"tasks": {name: metrics}, "macro": {...}, "meta": {...}}`` and ``extra``'s keys as JSON, atomically.

    ``extra`` adds top-level keys (eval.py: ``macro_ci``, ``draft_cost`` and ``spec_decode``, the run's counters
    in vLLM's schema, :func:`deepspec.eval.metrics.engine_counters`) after the three fixed ones.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "tasks": {n: dict(m) for n, m in results.items()},
        "macro": macro_average(results, domains={n: domain_of(n, domains) for n in results}),
        "meta": dict(meta),
        **dict(extra or {}),
    }
    try:
        text = json.dumps(payload, indent=2, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"results for {path} are not plain JSON ({e}); pass numbers, strings, lists "
            "and dicts only (no NaN, tensors or paths) in results and meta"
        ) from None
    atomic_write(path, text + "\n")


class ResultsFileError(DeepSpecError, ValueError):
    """A run's results.json is missing or not what :func:`write_results` writes; the message names file and field."""


def read_results(folder: str | os.PathLike) -> dict:
    """An eval.py run's ``results.json``: ``{"tasks": {name: {"acceptance_length": number, ...}}, "meta": {...}}``,
    checked field by field (what compare.py and plot_ablations.py read)."""
    path = Path(folder) / "results.json"
    if Path(folder).is_file():
        raise ResultsFileError(
            f"{folder} is a file; pass the eval run's folder (the one eval.py wrote results.json in)"
        )
    if not path.is_file():
        raise ResultsFileError(f"{path} not found; run eval.py with --output-dir {folder} first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ResultsFileError(f"{path} is not valid JSON ({exc}); rerun eval.py into {folder}") from None
    tasks = data.get("tasks") if isinstance(data, dict) else None
    if not isinstance(tasks, dict) or not tasks:
        raise ResultsFileError(
            f'{path} has no "tasks" mapping; is it an eval.py results.json? Rerun eval.py into {folder}'
        )
    for name, metrics in tasks.items():
        if not isinstance(metrics, dict):
            raise ResultsFileError(f"{path}: tasks.{name} must be a mapping of metrics, got {metrics!r}")
        tau = metrics.get("acceptance_length")
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau):
            raise ResultsFileError(f"{path}: tasks.{name}.acceptance_length must be a number, got {tau!r}")
        rates = metrics.get("conditional_accept_rate_by_position", [])
        if not isinstance(rates, list) or not all(
            r is None or (isinstance(r, (int, float)) and not isinstance(r, bool)) for r in rates
        ):
            raise ResultsFileError(
                f"{path}: tasks.{name}.conditional_accept_rate_by_position must be a list of numbers, got {rates!r:.80}"
            )
    meta = data.get("meta", {})
    if not isinstance(meta, dict):
        raise ResultsFileError(f'{path}: "meta" must be a mapping')
    absent = meta.get("absent_tasks", [])
    if not isinstance(absent, list) or not all(isinstance(t, str) for t in absent):
        raise ResultsFileError(f"{path}: meta.absent_tasks must be a list of task names, got {absent!r}")
    return data


def task_order(results_by_algorithm: Mapping[str, Results]) -> list[str]:
    """Task names in first-seen order over all algorithms (the column order of comparisons)."""
    order: list[str] = []
    for res in results_by_algorithm.values():
        order += [n for n in res if n not in order]
    return order


def _tau_cell(tau, *, ci=None, spread=None) -> str:
    """``2.94``, ``2.94 [2.61, 3.27]`` or, over several seeds, ``2.94 ±0.05 [2.61, 3.27]``."""
    if tau is None:
        return "-"
    cell = _num(tau) + (f" ±{spread:.2f}" if spread is not None else "")
    return cell + (f" {_ci(ci)}" if ci else "")


def _g3(v: float | None) -> str:
    """Three significant digits, whole numbers from 100 up (``0.906``, ``12.5``, ``3375``)."""
    return "-" if v is None else f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _cost_cells(cost: Mapping, tau) -> list[str]:
    flops, seconds = cost.get("flops_per_round"), cost.get("seconds_per_round")
    per_gflop = _g3(tau / (flops / 1e9)) if tau is not None and flops else "-"
    per_ms = _g3(tau / (1000 * seconds)) if tau is not None and seconds else "-"
    return [si(flops), _g3(None if seconds is None else 1000 * seconds), per_gflop, per_ms]


COST_HEADER = ["draft FLOP/round", "draft ms/round", "τ per draft GFLOP", "τ per draft ms"]


def comparison_table(
    results_by_algorithm: Mapping[str, Results],
    *,
    domains: Mapping[str, str] | None = None,
    summaries: Mapping | None = None,
) -> str:
    """Markdown table: one row per algorithm; macro τ over all / math / code / chat, then τ per task.

    ``summaries`` (algorithm -> :class:`deepspec.eval.comparison.Summary`) adds to every τ its 95 %
    interval (and, over several seeds, ± the standard deviation across seeds), then the draft's cost per
    round and macro τ per unit of it (FLOPs counted, milliseconds measured).
    """
    tasks = task_order(results_by_algorithm)
    doms = ordered_domains(tasks, domains)
    header = ["algorithm", "τ all"] + [f"τ {d}" for d in doms] + tasks + (COST_HEADER if summaries else [])
    out = ["| " + " | ".join(header) + " |", "|:---|" + "---:|" * (len(header) - 1)]
    for algo, res in results_by_algorithm.items():
        macro = macro_average(res, domains={n: domain_of(n, domains) for n in res})
        s = (summaries or {}).get(algo)
        macro_ci, task_ci = (s.macro_ci, s.task_ci) if s else ({}, {})
        spread = s.spread if s and s.seeds > 1 else {}
        cells = [algo] + [_tau_cell(macro.get(g), ci=macro_ci.get(g), spread=spread.get(g)) for g in ["all", *doms]]
        cells += [_tau_cell(res[t].get("acceptance_length"), ci=task_ci.get(t)) if t in res else "-" for t in tasks]
        cells += _cost_cells(s.draft_cost, macro.get("all")) if summaries else []
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out)
