"""Every figure of the eval stage (PNG files); the one module that imports matplotlib, lazily.

Computing and plotting stay apart so that the metrics, calibration and replay modules (and the
decode, which must never pay for matplotlib) import without it: each function here imports
matplotlib when called. Each figure has a ``*_figure`` function that builds it (a bare matplotlib
``Figure``, outside pyplot, so tests read what it shows: labels, lines, bar heights) and a
``plot_*`` function that writes it as a PNG. Figures:

- conditional acceptance by position (per domain, per algorithm) and τ by task — eval.py and compare.py;
- reliability diagrams of the confidence head's prefix survival a_k (before / after STS) — eval.py
  and calibrate.py;
- accepted vs rejected draft tokens per threshold — threshold_sweep.py.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from deepspec.eval.calibration import expected_calibration_error
from deepspec.eval.metrics import macro_average, mean_by_position
from deepspec.eval.report import Results, domain_of, ordered_domains, task_order
from deepspec.fsio import atomic_write

# ----------------------------------------------------------------------------- acceptance by position, τ by task


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


def _position_lines_figure(series: dict[str, list[float | None]], *, title: str, ylabel: str):
    """One line per series that has data (x = draft position 1..); None when none has: every proposal was cut to
    0 slots (a confidence threshold above every confidence) or no round was decoded."""
    series = {k: v for k, v in series.items() if any(x is not None for x in v)}
    if not series:
        return None
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
    return fig


def _save_if_any(fig, path: str | os.PathLike) -> bool:
    if fig is None:
        return False
    _save(fig, path)
    return True


_COND_LABEL = "P(accept k | 1..k-1 accepted)"


def conditional_acceptance_figure(results: Results, *, domains: Mapping[str, str], title: str | None = None):
    """Conditional acceptance by position, one line per domain (mean over its tasks); None when no position
    has data."""
    series = {}
    for dom in ordered_domains(results, domains):
        ms = [m for n, m in results.items() if domain_of(n, domains) == dom]
        series[dom] = mean_by_position(ms, key="conditional_accept_rate_by_position")
    return _position_lines_figure(series, title=title or "Conditional acceptance by position", ylabel=_COND_LABEL)


def plot_conditional_acceptance(
    results: Results, *, domains: Mapping[str, str], path: str | os.PathLike, title: str | None = None
) -> bool:
    """PNG of :func:`conditional_acceptance_figure`; False when no position has data (nothing written)."""
    return _save_if_any(conditional_acceptance_figure(results, domains=domains, title=title), path)


def conditional_by_algorithm_figure(results_by_algorithm: Mapping[str, Results], *, title: str | None = None):
    """Conditional acceptance by position, one line per algorithm (macro over its tasks); None when no
    position has data."""
    series = {
        algo: mean_by_position(list(res.values()), key="conditional_accept_rate_by_position")
        for algo, res in results_by_algorithm.items()
    }
    return _position_lines_figure(series, title=title or "Conditional acceptance by algorithm", ylabel=_COND_LABEL)


def plot_conditional_by_algorithm(
    results_by_algorithm: Mapping[str, Results], *, path: str | os.PathLike, title: str | None = None
) -> bool:
    """PNG of :func:`conditional_by_algorithm_figure`; False when no position has data (nothing written)."""
    return _save_if_any(conditional_by_algorithm_figure(results_by_algorithm, title=title), path)


def tau_by_task_figure(
    results_by_algorithm: Mapping[str, Results], *, title: str | None = None, intervals: Mapping | None = None
):
    """Grouped bars: τ per task (plus the macro average), one bar container per algorithm.

    ``intervals`` (algorithm -> {task or "macro-avg": [low, high]}) draws each bar's 95 % interval as an
    error bar (bars without one get none)."""
    tasks = task_order(results_by_algorithm)
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
        cis = [((intervals or {}).get(algo) or {}).get(g) for g, v in zip(groups, values) if v is not None]
        yerr = None
        if any(cis):  # asymmetric: down to the low end, up to the high end (0 where a bar has no interval)
            yerr = [
                [h - c[0] if c else 0.0 for h, c in zip(hs, cis)],
                [c[1] - h if c else 0.0 for h, c in zip(hs, cis)],
            ]
        bars = ax.bar(xs, hs, width=width, label=algo, yerr=yerr, capsize=2 if yerr else 0)
        ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30, ha="right")
    ax.set_ylabel("accepted length τ")
    ax.set_title(title or "Accepted length τ by task")
    ax.grid(True, axis="y", alpha=0.3)
    ax.margins(y=0.08)  # headroom for the value labels
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: bars fill the axes
    return fig


def plot_tau_by_task(
    results_by_algorithm: Mapping[str, Results],
    *,
    path: str | os.PathLike,
    title: str | None = None,
    intervals: Mapping | None = None,
) -> None:
    """PNG of :func:`tau_by_task_figure`."""
    _save(tau_by_task_figure(results_by_algorithm, title=title, intervals=intervals), path)


# ----------------------------------------------------------------------------- reliability diagrams


def _draw_reliability(ax, pred, label, *, num_bins: int, title: str) -> None:
    pred = np.asarray(pred, dtype=np.float64)
    label = np.asarray(label).astype(np.float64)
    pred, label = pred.reshape(pred.shape[0], -1), label.reshape(label.shape[0], -1)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    for k in range(pred.shape[1]):
        bins = np.clip((pred[:, k] * num_bins).astype(np.int64), 0, num_bins - 1)
        n = np.bincount(bins, minlength=num_bins)
        keep = n > 0
        mean_p = np.bincount(bins, weights=pred[:, k], minlength=num_bins)[keep] / n[keep]
        mean_y = np.bincount(bins, weights=label[:, k], minlength=num_bins)[keep] / n[keep]
        ece = expected_calibration_error(pred[:, k], label[:, k], num_bins=num_bins)
        ax.plot(mean_p, mean_y, "o-", ms=3, label=f"k={k + 1} ECE {ece:.1%}")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted prefix survival a_k", ylabel="empirical survival", title=title)
    ax.legend(fontsize=7, loc="upper left")


def _save_tight(fig, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def reliability_figure(pred, label, *, title: str, num_bins: int = 10):
    """Reliability diagram: the diagonal, then one line per position k (pred, label: [N, γ]) through the
    (mean predicted, empirical) survival of each non-empty bin."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5))
    _draw_reliability(fig.add_subplot(1, 1, 1), pred, label, num_bins=num_bins, title=title)
    return fig


def plot_reliability(pred, label, *, path, title: str, num_bins: int = 10) -> None:
    """PNG of :func:`reliability_figure`."""
    _save_tight(reliability_figure(pred, label, title=title, num_bins=num_bins), path)


def reliability_before_after_figure(pred_before, pred_after, label, *, title: str, num_bins: int = 10):
    """Two reliability diagrams side by side: uncalibrated and calibrated, same labels."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 5))
    axes = fig.subplots(1, 2)
    _draw_reliability(axes[0], pred_before, label, num_bins=num_bins, title=f"{title}: before")
    _draw_reliability(axes[1], pred_after, label, num_bins=num_bins, title=f"{title}: after STS")
    return fig


def plot_reliability_before_after(pred_before, pred_after, label, *, path, title: str, num_bins: int = 10) -> None:
    """PNG of :func:`reliability_before_after_figure`."""
    _save_tight(reliability_before_after_figure(pred_before, pred_after, label, title=title, num_bins=num_bins), path)


# ----------------------------------------------------------------------------- threshold sweep


def threshold_sweep_figure(results: list[dict], *, title: str):
    """Grouped bars per threshold: accepted vs rejected draft tokens per step."""
    from matplotlib.figure import Figure

    x = np.arange(len(results))
    width = 0.4
    fig = Figure(figsize=(max(6, 0.7 * len(results) + 2), 4))
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(x - width / 2, [r["avg_accepted"] for r in results], width, label="accepted / step", color="tab:green")
    ax.bar(x + width / 2, [r["avg_rejected"] for r in results], width, label="rejected / step", color="tab:red")
    ax.set_xticks(x, [f"{r['threshold']:g}" for r in results])
    on = {"per-slot": "per-slot confidence c_k", "cumulative": "prefix survival a_k"}.get(results[0].get("rule"), "?")
    ax.set(xlabel=f"confidence threshold on {on}", ylabel="draft tokens per step", title=title)
    ax.legend()
    return fig


def plot_threshold_sweep(results: list[dict], *, path, title: str) -> None:
    """PNG of :func:`threshold_sweep_figure`."""
    _save_tight(threshold_sweep_figure(results, title=title), path)
