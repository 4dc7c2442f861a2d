"""Reports of evaluation results: text and Markdown tables, the results JSON, comparison plots.

``results`` everywhere is ``{task name: task_metrics(...) dict}`` (see ``deepspec.eval.metrics``);
``results_by_algorithm`` is ``{algorithm label: results}``. Domains come from the caller's
``{task: domain}`` map, falling back to the known-task table for names it does not list.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Mapping

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


def _domain_of(name: str, domains: Mapping[str, str] | None) -> str:
    return (domains or {}).get(name) or task_domain(name)


def _ordered_domains(names, domains: Mapping[str, str] | None) -> list[str]:
    present = {_domain_of(n, domains) for n in names}
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


def _row(label: str, *, target: str, draft: str, gamma: int, tau, mean_len, verify, rates) -> list[str]:
    rates = list(rates) + [None] * max(0, gamma - len(rates))
    return [label, target, draft, _proposal(gamma, mean_len), _num(tau), _pct(verify)] + [
        _pct(r) for r in rates[:gamma]
    ]


def _table_rows(
    results: Results, *, target: str, draft: str, gamma: int, domains: Mapping[str, str] | None
) -> tuple[list[str], list[list[str]], int]:
    """Header, rows (tasks, then per-domain averages, then the overall macro average), #task rows."""
    assert gamma >= 1, f"gamma must be >= 1, got {gamma}"
    t, d = short_name(target), short_name(draft)
    header = ["dataset", "target", "draft", "proposal_len", "accept_len", "verify"] + [
        f"acc@{k}" for k in range(1, gamma + 1)
    ]
    rows = [
        _row(
            name,
            target=t,
            draft=d,
            gamma=gamma,
            tau=m.get("acceptance_length"),
            mean_len=m.get("mean_proposal_len"),
            verify=m.get("verify_rate"),
            rates=m.get("accept_rate_by_position") or [],
        )
        for name, m in results.items()
    ]
    n_tasks = len(rows)
    macro = macro_average(results, domains={n: _domain_of(n, domains) for n in results})

    def avg_row(label: str, names: list[str], tau) -> list[str]:
        ms = [results[n] for n in names]
        return _row(
            label,
            target=t,
            draft=d,
            gamma=gamma,
            tau=tau,
            mean_len=_mean(m.get("mean_proposal_len") for m in ms),
            verify=_mean(m.get("verify_rate") for m in ms),
            rates=mean_by_position(ms, key="accept_rate_by_position"),
        )

    if n_tasks:
        for dom in _ordered_domains(results, domains):
            names = [n for n in results if _domain_of(n, domains) == dom]
            rows.append(avg_row(f"avg {dom} ({len(names)})", names, macro.get(dom)))
        rows.append(avg_row(f"macro-avg ({n_tasks})", list(results), macro.get("all")))
    return header, rows, n_tasks


def format_table(
    results: Results, *, target: str, draft: str, gamma: int, domains: Mapping[str, str] | None = None
) -> str:
    """Fixed-width text table: one row per task, per-domain average rows, a final macro-average row.

    Columns: dataset, target and draft (basenames), proposal length (γ, or ``γ (mean ℓ)`` when a
    threshold/scheduler truncated proposals), accept_len τ, verify rate, accept_rate@1..@γ (%).
    Average rows are macro averages over tasks (each task weighs the same).
    """
    header, rows, n_tasks = _table_rows(results, target=target, draft=draft, gamma=gamma, domains=domains)
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
    results: Results, *, target: str, draft: str, gamma: int, domains: Mapping[str, str] | None = None
) -> str:
    """The ``format_table`` content as a Markdown table (average rows in bold)."""
    header, rows, n_tasks = _table_rows(results, target=target, draft=draft, gamma=gamma, domains=domains)

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [line(header), "|" + "|".join([":---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    out += [line(r) for r in rows[:n_tasks]]
    out += [line([f"**{r[0]}**"] + r[1:]) for r in rows[n_tasks:]]
    return "\n".join(out)


def write_results(
    path: str | os.PathLike, *, results: Results, meta: Mapping, domains: Mapping[str, str] | None = None
) -> None:
    """Write ``{"tasks": {name: metrics}, "macro": {...}, "meta": {...}}`` as JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "tasks": {n: dict(m) for n, m in results.items()},
        "macro": macro_average(results, domains={n: _domain_of(n, domains) for n in results}),
        "meta": dict(meta),
    }
    try:
        text = json.dumps(payload, indent=2, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"results for {path} are not plain JSON ({e}); pass numbers, strings, lists "
            "and dicts only (no NaN, tensors or paths) in results and meta"
        ) from None
    atomic_write(path, text + "\n")


# ----------------------------------------------------------------------------------------------- plots


def _new_axes(*, figsize: tuple[float, float]):
    # A bare Figure renders with Agg and leaves pyplot's global backend and state alone.
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=120)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    atomic_write(path, buf.getvalue())


def _nan(values) -> list[float]:
    # NaN breaks the line where a position has no data instead of drawing it at 0.
    return [float("nan") if v is None else float(v) for v in values]


def _plot_position_lines(series: dict[str, list[float | None]], *, path, title: str, ylabel: str) -> None:
    series = {k: v for k, v in series.items() if any(x is not None for x in v)}
    if not series:
        raise ValueError(
            f"nothing to plot for {path}: no task has per-position acceptance data "
            "(every task had zero rounds); check that the evaluation generated tokens"
        )
    fig, ax = _new_axes(figsize=(6.0, 4.0))
    for label, values in series.items():
        ax.plot(range(1, len(values) + 1), _nan(values), marker="o", label=label)
    longest = max(len(v) for v in series.values())
    ax.set_xticks(range(1, longest + 1))
    ax.set_xlabel("draft position k")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    ax.legend()
    _save(fig, path)


_COND_LABEL = "P(accept k | 1..k-1 accepted)"


def plot_conditional_acceptance(
    results: Results, *, domains: Mapping[str, str], path: str | os.PathLike, title: str | None = None
) -> None:
    """PNG of conditional acceptance by position, one line per domain (mean over its tasks)."""
    series = {}
    for dom in _ordered_domains(results, domains):
        ms = [m for n, m in results.items() if _domain_of(n, domains) == dom]
        series[dom] = mean_by_position(ms, key="conditional_accept_rate_by_position")
    _plot_position_lines(series, path=path, title=title or "Conditional acceptance by position", ylabel=_COND_LABEL)


def plot_conditional_by_algorithm(
    results_by_algorithm: Mapping[str, Results], *, path: str | os.PathLike, title: str | None = None
) -> None:
    """PNG of conditional acceptance by position, one line per algorithm (macro over its tasks)."""
    series = {
        algo: mean_by_position(list(res.values()), key="conditional_accept_rate_by_position")
        for algo, res in results_by_algorithm.items()
    }
    _plot_position_lines(series, path=path, title=title or "Conditional acceptance by algorithm", ylabel=_COND_LABEL)


def _task_order(results_by_algorithm: Mapping[str, Results]) -> list[str]:
    order: list[str] = []
    for res in results_by_algorithm.values():
        order += [n for n in res if n not in order]
    return order


def plot_tau_by_task(
    results_by_algorithm: Mapping[str, Results], *, path: str | os.PathLike, title: str | None = None
) -> None:
    """PNG of grouped bars: τ per task (plus the macro average), one bar per algorithm."""
    tasks = _task_order(results_by_algorithm)
    assert results_by_algorithm and tasks, "plot_tau_by_task needs at least one algorithm with one task"
    groups = tasks + ["macro-avg"]
    n_algo = len(results_by_algorithm)
    width = 0.8 / n_algo
    fig, ax = _new_axes(figsize=(max(6.0, 0.9 * len(groups) * max(1, n_algo) / 2 + 2), 4.0))
    for i, (algo, res) in enumerate(results_by_algorithm.items()):
        values = [res[t].get("acceptance_length") if t in res else None for t in tasks]
        values.append(macro_average(res).get("all"))
        # Missing tasks get no bar (not a zero bar that would read as "nothing accepted").
        xs = [g + (i - (n_algo - 1) / 2) * width for g, v in enumerate(values) if v is not None]
        hs = [float(v) for v in values if v is not None]
        bars = ax.bar(xs, hs, width=width, label=algo)
        ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30, ha="right")
    ax.set_ylabel("accepted length τ")
    ax.set_title(title or "Accepted length τ by task")
    ax.grid(True, axis="y", alpha=0.3)
    ax.margins(y=0.08)  # headroom for the value labels
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: bars fill the axes
    _save(fig, path)


def comparison_table(results_by_algorithm: Mapping[str, Results], *, domains: Mapping[str, str] | None = None) -> str:
    """Markdown table: one row per algorithm; macro τ over all / math / code / chat, then τ per task."""
    tasks = _task_order(results_by_algorithm)
    doms = _ordered_domains(tasks, domains)
    header = ["algorithm", "τ all"] + [f"τ {d}" for d in doms] + tasks
    out = ["| " + " | ".join(header) + " |", "|:---|" + "---:|" * (len(header) - 1)]
    for algo, res in results_by_algorithm.items():
        macro = macro_average(res, domains={n: _domain_of(n, domains) for n in res})
        cells = [algo, _num(macro.get("all"))] + [_num(macro.get(d)) for d in doms]
        cells += [_num(res[t].get("acceptance_length")) if t in res else "-" for t in tasks]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out)
