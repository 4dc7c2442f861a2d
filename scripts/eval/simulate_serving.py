#!/usr/bin/env python
"""Replay recorded decoding traces under a measured cost table to compare proposal-length
policies at serving concurrency R (DSpark paper Figures 7 and 8, simulated).

Inputs: rounds.jsonl files written by eval.py (one record per request and round, with the slot
confidence logits), best from a threshold-0 run so every round drafted and verified all γ slots —
only rounds with proposal_len == gamma are used — and a cost table from
scripts/eval/profile_engine.py (steps/second SPS(B) of the target at B batch tokens).

The simulation: R requests decode concurrently. Each step every request takes its next recorded
round (each prompt's rounds in order; a finished trace is replaced by one drawn with a seeded
RNG; requests start at a random round so the batch begins in steady state). The policy picks
ℓ_r from the round's confidences c = sigmoid(conf_logits / T) (T per slot from --calibration,
else 1); the request commits min(accepted_r, ℓ_r) + 1 tokens and the step costs
1/SPS(Σ_r (ℓ_r + 1)) + --draft-time-ms. Every policy sees the same rounds in the same order.
Approximation: a round's acceptance does not depend on what the previous round committed.

Metrics per (policy, R): aggregate throughput (tokens/s), per-user speed (tokens/s/user =
throughput / R), mean verification budget per request (ℓ and ℓ + 1), mean τ (tokens committed
per request per step).

Gains of the prefix scheduler over fixed-γ and fixed-1 are printed at the lowest and highest R,
and at matched interactivity: for each R, take the per-user speed s the prefix policy gives its
users and interpolate the baseline's aggregate throughput at that same per-user speed along the
baseline's own curve (its R values sorted by per-user speed, linear in between; n/a when s is
outside the baseline's range). A ratio > 1 means more total tokens/s for the same user experience.

Example (from the repo root):
    python scripts/eval/simulate_serving.py runs/eval/*/rounds.jsonl --cost-table cost_table.json \\
        --calibration runs/eval/calibration.json --output-dir runs/serving_sim
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np


from deepspec.cli import nonnegative_float, nonnegative_int, positive_int, probability  # noqa: E402
from deepspec.decoding.confidence import CalibrationError  # noqa: E402
from deepspec.eval.report import to_jsonable  # noqa: E402
from deepspec.errors import check_outputs_apart, cli_main  # noqa: E402
from deepspec.fsio import atomic_write  # noqa: E402

DEFAULT_CONCURRENCY = [1, 2, 4, 8, 16, 32, 64, 128, 256]


def _list(kind, what: str):
    """Comma-separated values, each checked by ``kind`` (one of deepspec.cli's type functions)."""

    def parse(text: str):
        try:
            values = [kind(v.strip()) for v in text.split(",") if v.strip()]
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}: {exc}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
        return values

    return parse


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "rounds",
        nargs="+",
        type=pathlib.Path,
        help="rounds.jsonl files (or folders searched recursively for rounds.jsonl)",
    )
    parser.add_argument(
        "--cost-table", type=pathlib.Path, required=True, help="profiler JSON from scripts/eval/profile_engine.py"
    )
    parser.add_argument(
        "--calibration",
        type=pathlib.Path,
        default=None,
        help='calibration JSON {"temperatures": [T_1..T_γ]}; default: T = 1 (raw sigmoid)',
    )
    parser.add_argument(
        "--concurrency",
        type=_list(positive_int, "integers >= 1"),
        default=DEFAULT_CONCURRENCY,
        help="comma-separated concurrency levels R (default: 1,2,4,...,256)",
    )
    parser.add_argument(
        "--steps", type=positive_int, default=200, help="simulated steps per (policy, R) at least (default: 200)"
    )
    parser.add_argument(
        "--min-request-rounds",
        type=nonnegative_int,
        default=4000,
        help="more steps at low R until steps*R reaches this many request-rounds (default: 4000)",
    )
    parser.add_argument(
        "--draft-time-ms",
        type=nonnegative_float,
        default=0.0,
        help="draft cost added to every step, in ms (default: 0, verification only)",
    )
    parser.add_argument(
        "--fixed-lengths",
        type=_list(positive_int, "integers >= 1"),
        default=None,
        help="fixed proposal lengths to compare (default: γ,3,1)",
    )
    parser.add_argument(
        "--thresholds",
        type=_list(probability, "numbers in [0, 1]"),
        default=[0.3, 0.5, 0.7],
        help="static confidence thresholds to compare (default: 0.3,0.5,0.7)",
    )
    parser.add_argument(
        "--rule",
        choices=("per-slot", "cumulative"),
        default="per-slot",
        help="threshold rule: per-slot c_k >= t (eval.py --confidence-threshold, DeepSpec's) or "
        "cumulative prefix survival a_k >= t (eval.py --survival-threshold); default per-slot",
    )
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="trace sampling seed (default: 0)")
    parser.add_argument(
        "--output-dir",
        type=pathlib.Path,
        default=pathlib.Path("serving_sim"),
        help="where simulation.json and the plots go (default: ./serving_sim)",
    )
    args = parser.parse_args(argv)
    args.concurrency = sorted(set(args.concurrency))
    return args


# ----------------------------------------------------------------------------- traces


@dataclass
class Traces:
    gamma: int
    accepted: np.ndarray  # [N] accepted drafts of each full-length round
    conf: np.ndarray | None  # [N, γ] calibrated confidences; None when no round carries conf_logits
    starts: np.ndarray  # [P] first round of each prompt's trace
    lengths: np.ndarray  # [P] rounds in each trace
    skipped: int  # rounds dropped because proposal_len < gamma


def _rounds_files(paths: list[pathlib.Path]) -> list[pathlib.Path]:
    files = []
    for p in paths:
        if p.is_dir():
            found = sorted(p.rglob("rounds.jsonl"))
            if not found:
                raise CalibrationError(
                    f"no rounds.jsonl under the folder {p}; run eval.py (--confidence-threshold 0) "
                    "to record traces there, or pass the rounds file itself"
                )
            files += found
        else:
            files.append(p)  # read_rounds says "no such file" for a missing one
    return files


def load_traces(paths: list[pathlib.Path], *, temperatures: list[float] | None) -> Traces:
    from deepspec.decoding.confidence import apply_temperatures
    from deepspec.decoding.rounds import read_rounds

    groups: dict[tuple, list[tuple[int, int, list | None]]] = defaultdict(list)
    gammas, skipped = set(), 0
    for fi, path in enumerate(_rounds_files(paths)):
        for r in read_rounds([path]):  # the one validation of round records (and of an empty file)
            if r["proposal_len"] != r["gamma"]:
                skipped += 1
                continue
            gammas.add(r["gamma"])
            groups[(fi, str(r["task"]), int(r["prompt_index"]))].append((r["round"], r["accepted"], r["conf_logits"]))
    if not groups:
        raise CalibrationError(
            f"no usable rounds: all {skipped} rounds were truncated (proposal_len < gamma); record "
            "traces with a threshold-0 / fixed-gamma run (eval.py --confidence-threshold 0)"
        )
    if len(gammas) != 1:
        raise CalibrationError(f"traces mix gammas {sorted(gammas)}; simulate one gamma at a time")
    gamma = gammas.pop()
    rounds = [sorted(v, key=lambda x: x[0]) for _, v in sorted(groups.items())]
    flat = [x for trace in rounds for x in trace]
    lengths = np.array([len(t) for t in rounds])
    accepted = np.array([x[1] for x in flat], dtype=np.int64)
    conf = None
    if all(x[2] is not None for x in flat):
        try:
            conf = apply_temperatures(
                np.array([x[2] for x in flat], dtype=np.float64),
                [1.0] * gamma if temperatures is None else temperatures,
            )
        except CalibrationError as exc:
            raise CalibrationError(f"--calibration: {exc}") from None
    elif any(x[2] is not None for x in flat):
        print("warning: some rounds lack conf_logits; confidence-based policies are skipped")
    return Traces(
        gamma=gamma, accepted=accepted, conf=conf, starts=np.cumsum(lengths) - lengths, lengths=lengths, skipped=skipped
    )


# ----------------------------------------------------------------------------- simulation


def simulate(
    traces: Traces, policy, *, concurrency: int, steps: int, cost_table, draft_seconds: float, seed: int
) -> dict:
    """Run ``steps`` batched steps of ``concurrency`` requests; totals → metrics."""
    import torch

    R, G = concurrency, traces.gamma
    rng = np.random.default_rng(seed)  # same seed for every policy: identical rounds, fair comparison
    trace = rng.integers(len(traces.lengths), size=R)
    pos = (rng.random(R) * traces.lengths[trace]).astype(np.int64)
    policy.reset()
    tokens = seconds = ell_sum = batch_sum = 0.0
    for _ in range(steps):
        idx = traces.starts[trace] + pos
        conf = torch.from_numpy(traces.conf[idx]) if traces.conf is not None else None
        ell = policy.plan(conf, gamma=G, num_requests=R).cpu().numpy()
        committed = np.minimum(traces.accepted[idx], ell) + 1
        batch = R + int(ell.sum())
        tokens += committed.sum()
        seconds += cost_table.step_time(batch) + draft_seconds
        ell_sum += ell.sum()
        batch_sum += batch
        pos += 1
        done = pos >= traces.lengths[trace]
        if done.any():
            trace[done] = rng.integers(len(traces.lengths), size=int(done.sum()))
            pos[done] = 0
    throughput = tokens / seconds
    return {
        "policy": policy.name,
        "concurrency": R,
        "steps": steps,
        "throughput": throughput,
        "per_user_speed": throughput / R,
        "mean_proposal_len": ell_sum / (steps * R),
        "mean_verify_tokens": 1.0 + ell_sum / (steps * R),
        "mean_tau": tokens / (steps * R),
        "mean_batch_tokens": batch_sum / steps,
        "mean_step_ms": 1e3 * seconds / steps,
    }


def make_policies(args, *, gamma: int, cost_table, has_confidences: bool) -> list:
    from deepspec.decoding.scheduler import CumulativeThreshold, FixedLength, PerSlotThreshold, PrefixScheduler

    lengths = args.fixed_lengths or [gamma, 3, 1]
    lengths = list(dict.fromkeys(min(L, gamma) for L in lengths))
    policies = []
    if has_confidences:
        policies += [PrefixScheduler(cost_table), PrefixScheduler(cost_table, asynchronous=True)]
    policies += [FixedLength(L) for L in lengths]
    if has_confidences:
        threshold = PerSlotThreshold if args.rule == "per-slot" else CumulativeThreshold
        policies += [threshold(t) for t in args.thresholds]
    else:
        print("note: traces carry no conf_logits; only fixed-length policies are simulated")
    return policies


# ----------------------------------------------------------------------------- gains and output


def _curve(results: list[dict], name: str) -> dict[int, dict]:
    return {r["concurrency"]: r for r in results if r["policy"] == name}


def gains(results: list[dict], *, baselines: list[str]) -> dict:
    """Prefix-over-baseline throughput ratios at min/max R and at matched per-user speed."""
    prefix = _curve(results, "prefix")
    if not prefix:
        return {}
    lo, hi = min(prefix), max(prefix)
    out = {}
    for name in baselines:
        base = _curve(results, name)
        if not base:
            continue
        pts = sorted((b["per_user_speed"], b["throughput"]) for b in base.values())
        speeds, tputs = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
        matched = {}
        for R, p in sorted(prefix.items()):
            s = p["per_user_speed"]
            inside = speeds[0] <= s <= speeds[-1]
            matched[R] = p["throughput"] / float(np.interp(s, speeds, tputs)) if inside else None
        out[name] = {
            f"R={lo}": prefix[lo]["throughput"] / base[lo]["throughput"],
            f"R={hi}": prefix[hi]["throughput"] / base[hi]["throughput"],
            "matched_interactivity": matched,
        }
    return out


_STYLES = {"prefix": "o-", "prefix-async": "s:"}  # async often overlaps prefix: keep both visible


def figures(results: list[dict]) -> dict[str, object]:
    """The two figures, by file name: throughput vs per-user speed (log-log, a point per concurrency R) and the
    mean verification tokens per request vs R; one line per policy, in the order the results name them."""
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(r["policy"] for r in results))
    speed = Figure(figsize=(7, 5))
    ax = speed.add_subplot(1, 1, 1)
    for name in names:
        curve = sorted(_curve(results, name).items())
        xs, ys = [c["per_user_speed"] for _, c in curve], [c["throughput"] for _, c in curve]
        ax.plot(xs, ys, _STYLES.get(name, ".--"), label=name, lw=2 if name == "prefix" else 1)
        if name == "prefix":
            for R, c in curve:
                ax.annotate(
                    f"R={R}",
                    (c["per_user_speed"], c["throughput"]),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(4, 4),
                )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="per-user speed (tokens/s/user)",
        ylabel="throughput (tokens/s)",
        title="Throughput vs interactivity (points: concurrency R)",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)

    budget = Figure(figsize=(7, 4.5))
    ax = budget.add_subplot(1, 1, 1)
    for name in names:
        curve = sorted(_curve(results, name).items())
        ax.plot(
            [R for R, _ in curve],
            [c["mean_verify_tokens"] for _, c in curve],
            _STYLES.get(name, ".--"),
            label=name,
            lw=2 if name == "prefix" else 1,
        )
    ax.set_xscale("log", base=2)
    ax.set(
        xlabel="concurrency R",
        ylabel="mean verification tokens per request (ℓ+1)",
        title="Verification budget vs concurrency",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return {"throughput_vs_speed.png": speed, "budget_vs_concurrency.png": budget}


def plot(results: list[dict], *, out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Write :func:`figures` into ``out_dir``; returns the PNG paths."""
    paths = []
    for name, fig in figures(results).items():
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=120)
        paths.append(out_dir / name)
    return paths


def _fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    from deepspec.decoding.confidence import read_calibration_file
    from deepspec.decoding.scheduler import CostTable

    # Where the outputs go is checked first; every input is read and checked before anything is written.
    outputs = [args.output_dir / n for n in ("simulation.json", "throughput_vs_speed.png", "budget_vs_concurrency.png")]
    inputs = [*args.rounds, args.cost_table] + ([args.calibration] if args.calibration else [])
    check_outputs_apart(inputs=inputs, outputs=outputs, what="--output-dir")
    if args.output_dir.exists() and not args.output_dir.is_dir():
        raise CalibrationError(
            f"--output-dir {args.output_dir} is a file; pass a folder for simulation.json and the plots"
        )
    cost_table = CostTable.from_json(args.cost_table)
    temperatures = read_calibration_file(args.calibration) if args.calibration else None
    traces = load_traces(args.rounds, temperatures=temperatures)
    G = traces.gamma
    print(
        f"{len(traces.lengths)} traces, {len(traces.accepted)} full rounds (gamma={G}), "
        f"{traces.skipped} truncated rounds skipped; cost table: {cost_table.device}, "
        f"B {cost_table.batch_tokens[0]}..{cost_table.batch_tokens[-1]}"
    )
    if max(args.concurrency) * (G + 1) > cost_table.batch_tokens[-1]:
        print(
            f"note: batches up to {max(args.concurrency) * (G + 1)} tokens exceed the profiled "
            f"{cost_table.batch_tokens[-1]}; step time is extrapolated linearly there"
        )

    policies = make_policies(args, gamma=G, cost_table=cost_table, has_confidences=traces.conf is not None)
    results, started = [], time.perf_counter()
    for policy in policies:
        for R in args.concurrency:
            steps = max(args.steps, math.ceil(args.min_request_rounds / R))
            results.append(
                simulate(
                    traces,
                    policy,
                    concurrency=R,
                    steps=steps,
                    cost_table=cost_table,
                    draft_seconds=args.draft_time_ms / 1e3,
                    seed=args.seed + R,
                )
            )

    print(
        f"\n{'policy':<15} {'R':>4} {'tokens/s':>11} {'tok/s/user':>11} {'mean ℓ':>7} {'ℓ+1':>6} "
        f"{'τ':>6} {'batch B':>8}"
    )
    for r in results:
        print(
            f"{r['policy']:<15} {r['concurrency']:>4} {r['throughput']:>11.1f} {r['per_user_speed']:>11.2f} "
            f"{r['mean_proposal_len']:>7.2f} {r['mean_verify_tokens']:>6.2f} {r['mean_tau']:>6.2f} "
            f"{r['mean_batch_tokens']:>8.1f}"
        )

    gain = gains(results, baselines=[f"fixed-{G}", "fixed-1"])
    for name, g in gain.items():
        lo, hi = (k for k in g if k.startswith("R="))
        matched = ", ".join(f"R={R}: {_fmt_ratio(v)}" for R, v in g["matched_interactivity"].items())
        print(f"\nprefix vs {name}: {lo} {_fmt_ratio(g[lo])}, {hi} {_fmt_ratio(g[hi])} (throughput ratio)")
        print(f"  at matched per-user speed: {matched}")

    args.output_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "gamma": G,
        "num_traces": int(len(traces.lengths)),
        "num_rounds": int(len(traces.accepted)),
        "skipped_rounds": traces.skipped,
        "rounds_files": [str(p) for p in args.rounds],
        "calibration": str(args.calibration) if args.calibration else None,
        "draft_time_ms": args.draft_time_ms,
        "seed": args.seed,
        "cost_table": cost_table.to_dict(),
        "threshold_rule": args.rule,
        "results": results,
        "gains": {
            n: {
                **{k: v for k, v in g.items() if k != "matched_interactivity"},
                "matched_interactivity": {str(R): v for R, v in g["matched_interactivity"].items()},
            }
            for n, g in gain.items()
        },
    }
    atomic_write(args.output_dir / "simulation.json", json.dumps(to_jsonable(summary), indent=2) + "\n")
    paths = plot(results, out_dir=args.output_dir)
    print(
        f"\nsimulated in {time.perf_counter() - started:.1f}s; wrote {args.output_dir / 'simulation.json'}, "
        + ", ".join(str(p) for p in paths)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
