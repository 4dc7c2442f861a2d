"""Plots and a table for the quickstart's --ablations runs (paper Figures 3 and 4, in miniature).

    python scripts/eval/plot_ablations.py --output-dir runs/quickstart

Reads <out>/eval/<run>/results.json for the runs the quickstart names: dspark_L1, dspark_L2 and
dspark (5 draft layers) for depth; markov_b{4,8,12,16}, rnn_b{...}, dflash_b{...} (plus the main
dspark / dflash runs at block 7) for block size. Writes <out>/ablations.md, depth.png and
block_size.png (macro τ over the evaluated tasks). Missing runs are skipped with a note.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


DEPTH_RUNS = {1: "dspark_L1", 2: "dspark_L2", 5: "dspark"}
BLOCKS = (4, 7, 8, 12, 16)
HEADS = {"Markov (DSpark)": "markov_b{}", "RNN head": "rnn_b{}", "DFlash (no head)": "dflash_b{}"}
FIGURES = ("depth.png", "block_size.png")  # the figures' file names, in --output-dir
MAIN_AT_7 = {"Markov (DSpark)": "dspark", "DFlash (no head)": "dflash"}  # the main runs are the block-7 points


def macro_tau(out: Path, run: str, missing: list[str], covered: dict[str, list[str]]) -> float | None:
    """The run's macro τ over its tasks; ``covered`` gathers the tasks (and the absent ones) of every run."""
    from deepspec.eval.metrics import macro_average
    from deepspec.eval.report import read_results

    if not (out / "eval" / run / "results.json").is_file():
        missing.append(run)
        return None
    results = read_results(out / "eval" / run)  # a malformed file: one line naming the file and the field
    for key, names in (("tasks", list(results["tasks"])), ("absent", results.get("meta", {}).get("absent_tasks", []))):
        bucket = covered.setdefault(key, [])
        bucket += [n for n in names if n not in bucket]
    return macro_average(results["tasks"]).get("all")


def ablation_figure(series: dict[str, list[tuple[int, float]]], *, xlabel: str, title: str):
    """Macro τ against ``xlabel``: one line per series that has points (x, τ)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    for name, points in series.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("macro accepted length τ")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig


def ablation_series(out: Path, missing: list[str], covered: dict[str, list[str]]):
    """``(depth, blocks)``: the (draft layers, macro τ) points, and per head the (block size, macro τ) points, of
    the runs that were evaluated (the others go to ``missing``)."""
    depth = [(n, t) for n, run in DEPTH_RUNS.items() if (t := macro_tau(out, run, missing, covered)) is not None]
    blocks: dict[str, list[tuple[int, float]]] = {}
    for label, pattern in HEADS.items():
        runs = {b: (MAIN_AT_7.get(label) if b == 7 else pattern.format(b)) for b in BLOCKS}
        blocks[label] = [
            (b, t)
            for b, run in runs.items()
            if run is not None and (t := macro_tau(out, run, missing, covered)) is not None
        ]
    return depth, blocks


def figures(depth: list[tuple[int, float]], blocks: dict[str, list[tuple[int, float]]]) -> dict[str, object]:
    """The two figures by file name: τ vs draft depth (paper Fig. 3) and τ vs block size per head (Fig. 4)."""
    depth_title, block_title = "τ vs draft depth (Fig. 3 analog)", "τ vs block size (Fig. 4 analog)"
    return dict(
        zip(
            FIGURES,
            (
                ablation_figure({"DSpark": depth}, xlabel="draft layers", title=depth_title),
                ablation_figure(blocks, xlabel="block size γ", title=block_title),
            ),
        )
    )


from deepspec.errors import DeepSpecError, check_outputs_apart, cli_main  # noqa: E402


@cli_main
def main(argv=None) -> int:
    from deepspec.cli import add_output_dir
    from deepspec.eval.report import coverage_line
    from deepspec.fsio import atomic_write

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_output_dir(p, aliases=("--out",), required=True, help="the quickstart output folder (its plots go there too)")
    args = p.parse_args(argv)
    out = Path(args.output_dir)
    if not out.is_dir():
        raise DeepSpecError(f"--output-dir {out} is not a folder; pass the quickstart output folder (runs/quickstart)")
    written = [out / name for name in ("ablations.md", *FIGURES)]
    check_outputs_apart(inputs=[out / "eval"], outputs=written, what="--output-dir")
    missing: list[str] = []
    covered: dict[str, list[str]] = {}

    depth, blocks = ablation_series(out, missing, covered)
    if not depth and not any(blocks.values()):
        raise DeepSpecError(
            f"no ablation run under {out / 'eval'} has a results.json (looked for {', '.join(sorted(set(missing)))}); "
            "run bash scripts/quickstart.sh --ablations --output-dir "
            f"{out} first, or pass the folder it wrote"
        )
    lines = ["| draft layers | τ |", "|---:|---:|"] + [f"| {n} | {t:.3f} |" for n, t in depth]
    lines += ["", "| block size | " + " | ".join(HEADS) + " |", "|---:|" + "---:|" * len(HEADS)]
    for b in BLOCKS:
        cells = [next((f"{t:.3f}" for x, t in blocks[h] if x == b), "-") for h in HEADS]
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    lines += ["", coverage_line(covered.get("tasks", []), covered.get("absent", []))]
    if missing:
        lines += ["", f"missing runs (not evaluated): {', '.join(sorted(set(missing)))}"]
    atomic_write(out / "ablations.md", "\n".join(lines) + "\n")
    for name, fig in figures(depth, blocks).items():
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
    print("\n".join(lines))
    print(f"[ablations] wrote {out}/ablations.md, depth.png, block_size.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
