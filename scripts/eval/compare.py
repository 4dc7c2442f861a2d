"""Compare several eval.py runs side by side: the paper's Table 1 layout, in miniature, with error bars.

    python scripts/eval/compare.py --runs dspark=runs/q/eval/dspark dflash=runs/q/eval/dflash \
        --ceiling runs/q/eval/self7 --output-dir runs/q
    python scripts/eval/compare.py --runs dspark=runs/q/eval/dspark,runs/q/eval/dspark_s1 \
        dflash=runs/q/eval/dflash,runs/q/eval/dflash_s1 --output-dir runs/q   # two seeds each

Reads each run's results.json (several folders after NAME=, comma-separated: seeds of one algorithm) and
writes <output-dir>/results.json (every run's per-task metrics, macro τ per domain, intervals, paired
differences), table.md (one row per algorithm: τ over all / math / code / chat tasks, then per task, each
with its 95% interval from a cluster bootstrap over prompts (and, over seeds, the mean ± the spread across
seeds), then the draft's cost per round and τ per unit of it; a line naming the tasks covered; the paired
difference of the first run over each other one, on the prompts both evaluated, with its interval and
"not resolved" where the interval contains 0), tau_by_task.png and conditional_acceptance_by_algorithm.png.
--ceiling names a run of the target drafting for itself (eval.py --self-draft GAMMA): its τ must be
GAMMA+1, and the table says whether it is.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from deepspec.cli import add_output_dir  # noqa: E402
from deepspec.errors import DeepSpecError, check_outputs_apart, cli_main  # noqa: E402
from deepspec.eval.report import read_results, to_jsonable  # noqa: E402


def parse_runs(p: argparse.ArgumentParser, items: list[str]) -> dict[str, list[str]]:
    """``NAME=DIR[,DIR...]`` entries as ``{name: [folders]}`` (several folders: seeds of one algorithm)."""
    folders: dict[str, list[str]] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        dirs = spec.split(",")
        if not sep or not name or not all(dirs):
            p.error(
                f"--runs entry {item!r}: write NAME=DIR, e.g. dspark=runs/quickstart/eval/dspark "
                "(NAME=DIR1,DIR2 for seeds of one algorithm)"
            )
        if name in folders:
            p.error(f"--runs names {name!r} twice ({folders[name][0]} and {dirs[0]}); give each run its own name")
        folders[name] = dirs
    return folders


def read_run(name: str, folders: list[str]):
    """A :class:`deepspec.eval.comparison.Run` of the folders' results.json, per-prompt counts checked."""
    from deepspec.eval.comparison import Run
    from deepspec.eval.intervals import check_per_prompt

    results = [read_results(f) for f in folders]
    for folder, r in zip(folders, results):
        for task, m in r["tasks"].items():
            if "per_prompt" in m:
                check_per_prompt(m["per_prompt"], where=f"{Path(folder) / 'results.json'}: tasks.{task}")
    return Run(name=name, folders=folders, results=results)


def ceiling_check(folder: str) -> tuple[dict, str]:
    from deepspec.eval.metrics import macro_average

    c = read_results(folder)
    gamma = c.get("meta", {}).get("gamma")
    if isinstance(gamma, bool) or not isinstance(gamma, int):
        raise DeepSpecError(f"{folder}/results.json: meta.gamma must be an integer (an eval.py --self-draft run)")
    tau = macro_average(c["tasks"]).get("all")
    ceiling = {"gamma": gamma, "acceptance_length": tau, "ok": tau is not None and abs(tau - (gamma + 1)) < 1e-6}
    return ceiling, (
        f"ceiling check: the target drafting for itself gives τ = {tau:.3f} with γ = {gamma} "
        f"({'= γ+1, as it must' if ceiling['ok'] else 'NOT γ+1: investigate'})"
    )


def parse_args(argv=None) -> argparse.Namespace:
    from deepspec.eval.intervals import add_bootstrap_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--runs",
        nargs="+",
        required=True,
        metavar="NAME=DIR[,DIR...]",
        help="eval.py output folders, named; several folders after one name are seeds of that algorithm",
    )
    p.add_argument("--ceiling", default=None, metavar="DIR", help="an eval.py --self-draft run (τ must be γ+1)")
    add_output_dir(p, required=True, help="folder for table.md and the comparison plot")
    p.add_argument("--title", default="Accepted length τ", help="the plot's title (default: %(default)s)")
    add_bootstrap_args(p)
    args = p.parse_args(argv)
    args.folders = parse_runs(p, args.runs)
    return args


def table_lines(*, runs: dict, by_algo: dict, summaries: dict, pairings: list, domains, boot: dict) -> list[str]:
    """table.md: the table, the tasks covered, what the intervals are, notes, the paired differences."""
    from deepspec.eval.comparison import legend_lines, note_lines
    from deepspec.eval.report import comparison_table, coverage_line, task_order

    covered = task_order(by_algo)
    meta_absent = (t for r in runs.values() for res in r.results for t in res.get("meta", {}).get("absent_tasks", []))
    absent = [t for t in dict.fromkeys(meta_absent) if t not in covered]
    lines = [comparison_table(by_algo, domains=domains, summaries=summaries), "", coverage_line(covered, absent)]
    lines += legend_lines(seeds=max(s.seeds for s in summaries.values()), **boot)
    return lines + note_lines(summaries, pairings)


@cli_main
def main(argv=None) -> int:
    from deepspec.eval.comparison import mean_tasks, paired, summarize
    from deepspec.eval.metrics import macro_average
    from deepspec.eval.plots import plot_conditional_by_algorithm, plot_tau_by_task
    from deepspec.eval.tasks import task_domain
    from deepspec.fsio import atomic_write

    args = parse_args(argv)
    out = Path(args.output_dir)
    written = [
        out / f for f in ("results.json", "table.md", "tau_by_task.png", "conditional_acceptance_by_algorithm.png")
    ]
    # Each run's own results.json / table.md are inputs: the comparison never lands on them.
    inputs = [f for dirs in args.folders.values() for f in dirs] + ([args.ceiling] if args.ceiling else [])
    check_outputs_apart(inputs=inputs, outputs=written, what="--output-dir")
    runs = {name: read_run(name, dirs) for name, dirs in args.folders.items()}
    by_algo = {name: mean_tasks(r.results) for name, r in runs.items()}
    domains = {t: task_domain(t) for res in by_algo.values() for t in res}
    macro = {name: macro_average(res, domains=domains) for name, res in by_algo.items()}
    boot = dict(draws=args.bootstrap_draws, seed=args.bootstrap_seed)
    summaries = {name: summarize(r, domains=domains, **boot) for name, r in runs.items()}
    names = list(runs)
    pairings = [paired(runs[names[0]], runs[o], domains=domains, macro=macro, **boot) for o in names[1:]]
    lines = table_lines(runs=runs, by_algo=by_algo, summaries=summaries, pairings=pairings, domains=domains, boot=boot)
    ceiling = None
    if args.ceiling:
        ceiling, line = ceiling_check(args.ceiling)
        lines.append(line)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "algorithms": {  # meta: the first seed's
            n: {
                "tasks": by_algo[n],
                "macro": macro[n],
                "meta": runs[n].results[0].get("meta", {}),
                "folders": runs[n].folders,
            }
            | summaries[n].as_json()
            for n in names
        },
        "differences": {f"{q.a} vs {q.b}": q.as_json() for q in pairings},
        "bootstrap": boot,
        "ceiling": ceiling,
    }
    atomic_write(out / "results.json", json.dumps(to_jsonable(payload), indent=2) + "\n")
    atomic_write(out / "table.md", "\n".join(lines) + "\n")
    intervals = {n: {**s.task_ci, "macro-avg": s.macro_ci.get("all")} for n, s in summaries.items()}
    plot_tau_by_task(by_algo, path=out / "tau_by_task.png", title=args.title, intervals=intervals)
    cond = plot_conditional_by_algorithm(by_algo, path=out / "conditional_acceptance_by_algorithm.png")
    print("\n".join(lines))
    print(
        f"[compare] wrote {out}/results.json, table.md, tau_by_task.png"
        + (", conditional_acceptance_by_algorithm.png" if cond else " (no position was verified: no acceptance plot)")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
