"""Compare several eval.py runs side by side: the paper's Table 1 layout, in miniature.

    python scripts/eval/compare.py --runs dspark=runs/q/eval/dspark dflash=runs/q/eval/dflash \
        --ceiling runs/q/eval/self7 --output-dir runs/q

Reads each run's results.json and writes <output-dir>/results.json (every run's per-task metrics and
macro τ per domain), table.md (one row per algorithm: τ over all / math / code / chat tasks, then per
task, a line naming the tasks covered; relative gains of the first run over the others), tau_by_task.png and
conditional_acceptance_by_algorithm.png. --ceiling names a run of the target drafting for itself
(eval.py --self-draft GAMMA): its τ must be GAMMA+1, and the table says whether it is.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from deepspec.cli import add_output_dir  # noqa: E402
from deepspec.errors import DeepSpecError, check_outputs_apart, cli_main  # noqa: E402


@cli_main
def main(argv=None) -> int:
    from deepspec.eval.metrics import macro_average
    from deepspec.eval.plots import plot_conditional_by_algorithm, plot_tau_by_task
    from deepspec.eval.report import comparison_table, coverage_line, read_results, task_order
    from deepspec.eval.tasks import task_domain
    from deepspec.fsio import atomic_write

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, metavar="NAME=DIR", help="eval.py output folders, named")
    p.add_argument("--ceiling", default=None, metavar="DIR", help="an eval.py --self-draft run (τ must be γ+1)")
    add_output_dir(p, required=True, help="folder for table.md and the comparison plot")
    p.add_argument("--title", default="Accepted length τ", help="the plot's title (default: %(default)s)")
    args = p.parse_args(argv)

    runs, folders = {}, {}
    for item in args.runs:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            p.error(f"--runs entry {item!r}: write NAME=DIR, e.g. dspark=runs/quickstart/eval/dspark")
        if name in folders:
            p.error(f"--runs names {name!r} twice ({folders[name]} and {folder}); give each run its own name")
        folders[name] = folder
    out = Path(args.output_dir)
    written = [
        out / f for f in ("results.json", "table.md", "tau_by_task.png", "conditional_acceptance_by_algorithm.png")
    ]
    # Each run's own results.json / table.md are inputs: the comparison never lands on them.
    inputs = list(folders.values()) + ([args.ceiling] if args.ceiling else [])
    check_outputs_apart(inputs=inputs, outputs=written, what="--output-dir")
    runs = {name: read_results(folder) for name, folder in folders.items()}
    by_algo = {name: r["tasks"] for name, r in runs.items()}
    domains = {t: task_domain(t) for res in by_algo.values() for t in res}
    macro = {name: macro_average(res, domains=domains) for name, res in by_algo.items()}

    covered = task_order(by_algo)
    absent = list(dict.fromkeys(t for r in runs.values() for t in r.get("meta", {}).get("absent_tasks", [])))
    absent = [t for t in absent if t not in covered]
    lines = [comparison_table(by_algo, domains=domains), "", coverage_line(covered, absent)]
    names = list(by_algo)
    first = names[0]
    for other in names[1:]:
        gains = [
            f"{d} {100 * (macro[first][d] / macro[other][d] - 1):+.1f}%"
            for d in macro[first]
            if d in macro[other] and macro[other][d]
        ]
        lines.append(f"{first} vs {other}: " + ", ".join(gains))
    ceiling = None
    if args.ceiling:
        c = read_results(args.ceiling)
        gamma = c.get("meta", {}).get("gamma")
        if isinstance(gamma, bool) or not isinstance(gamma, int):
            raise DeepSpecError(
                f"{args.ceiling}/results.json: meta.gamma must be an integer (an eval.py --self-draft run)"
            )
        tau = macro_average(c["tasks"]).get("all")
        ceiling = {"gamma": gamma, "acceptance_length": tau, "ok": tau is not None and abs(tau - (gamma + 1)) < 1e-6}
        lines.append(
            f"ceiling check: the target drafting for itself gives τ = {tau:.3f} with γ = {gamma} "
            f"({'= γ+1, as it must' if ceiling['ok'] else 'NOT γ+1: investigate'})"
        )
    meta = {name: r.get("meta", {}) for name, r in runs.items()}
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "algorithms": {n: {"tasks": by_algo[n], "macro": macro[n], "meta": meta[n]} for n in names},
        "ceiling": ceiling,
    }
    atomic_write(out / "results.json", json.dumps(payload, indent=2) + "\n")
    atomic_write(out / "table.md", "\n".join(lines) + "\n")
    plot_tau_by_task(by_algo, path=out / "tau_by_task.png", title=args.title)
    cond = plot_conditional_by_algorithm(by_algo, path=out / "conditional_acceptance_by_algorithm.png")
    print("\n".join(lines))
    print(
        f"[compare] wrote {out}/results.json, table.md, tau_by_task.png"
        + (", conditional_acceptance_by_algorithm.png" if cond else " (no position was verified: no acceptance plot)")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
