#!/usr/bin/env python
"""Fit STS temperatures for a DSpark draft's confidence head and report its calibration.

Input: rounds.jsonl files written by eval.py with --confidence-threshold 0 (every round verifies the whole
block, so each round labels every slot k: "slots 1..k all accepted"). The rounds are split by
prompt into a fit part and a held-out part; sequential temperature scaling (one temperature per
slot, fitted left to right on the ECE of the prefix survival a_k) is fitted on the fit part and
judged on the held-out part. The temperatures go to <draft>/calibration.json, which eval.py and
scripts/eval/threshold_sweep.py pick up.

Outputs (in --output-dir, default: the folder of the first rounds file):
    calibration_report.json               held-out ECE / AUROC / Brier before and after, per task too
    reliability_overall.png               reliability diagrams before | after
    reliability_<task>.png                the same per task

Examples:
    python scripts/eval/calibrate.py --rounds outputs/eval/dspark/rounds.jsonl \\
        --draft checkpoints/dspark/exp/step_latest
    python scripts/eval/calibrate.py --rounds run1/rounds.jsonl run2/rounds.jsonl --dry-run
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


from deepspec.cli import add_draft, nonnegative_int, positive_int, probability  # noqa: E402
from deepspec.decoding.confidence import (  # noqa: E402
    CALIBRATION_FILE,
    CalibrationError,
    apply_temperatures,
    prefix_survival,
)
from deepspec.decoding.rounds import read_rounds  # noqa: E402
from deepspec.eval.calibration import (  # noqa: E402
    calibration_arrays,
    confidence_report,
    fit_sts,
    save_calibration,
    split_rounds,
    survival_labels,
)
from deepspec.eval.plots import plot_reliability_before_after  # noqa: E402
from deepspec.eval.report import to_jsonable  # noqa: E402
from deepspec.errors import check_outputs_apart, cli_main  # noqa: E402
from deepspec.fsio import atomic_write  # noqa: E402


def held_out_fraction(text: str) -> float:
    """A share in [0, 1): 1 would leave nothing to fit on."""
    value = probability(text)
    if value >= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r} (nothing would be left to fit)")
    return value


def num_bins(text: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2, got {text!r}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--rounds",
        nargs="+",
        required=True,
        metavar="PATH",
        help="rounds.jsonl file(s) from eval.py runs with --confidence-threshold 0 (same draft, same gamma)",
    )
    add_draft(
        p,
        aliases=("--draft_name_or_path", "--draft-name-or-path"),
        metavar="DIR",
        help="draft checkpoint folder; calibration.json is written there (required unless --dry-run)",
    )
    p.add_argument("--dry-run", action="store_true", help="fit and report, but do not write calibration.json")
    p.add_argument(
        "--held-out-fraction",
        type=held_out_fraction,
        default=0.5,
        help="share of prompts kept out of the fit to judge it, in [0, 1) (0 = judge on the fit rounds; default 0.5)",
    )
    p.add_argument(
        "--seed", type=nonnegative_int, default=0, help="seed of the prompt-level fit/held-out split (default 0)"
    )
    p.add_argument("--num-bins", type=num_bins, default=10, help="equal-width ECE bins on [0, 1], >= 2 (default 10)")
    p.add_argument(
        "--output-dir",
        metavar="DIR",
        help="where the report JSON and PNGs go (default: folder of the first rounds file)",
    )
    args = p.parse_args(argv)
    if not args.dry_run and not args.draft:
        p.error("--draft is required (or pass --dry-run to only report)")
    return args


def _safe(task: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", task)  # task names become file names


def fmt(x: float | None, pct: bool) -> str:
    if x is None or x != x:  # NaN: AUROC with one class only
        return "  n/a"
    return f"{x:5.1%}" if pct else f"{x:.3f}"


def print_table(before: dict, after: dict) -> None:
    print(f"{'k':>2} {'surv':>6} {'mean a_k':>15} {'ECE':>15} {'AUROC':>13} {'Brier':>13}")
    for k in range(len(before["ece"])):
        print(
            f"{k + 1:>2} {before['empirical_survival'][k]:6.1%} "
            f"{before['mean_predicted'][k]:6.1%} → {after['mean_predicted'][k]:6.1%} "
            f"{fmt(before['ece'][k], True):>6} → {fmt(after['ece'][k], True):>6} "
            f"{fmt(before['auroc'][k], False):>5} → {fmt(after['auroc'][k], False):>5} "
            f"{fmt(before['brier'][k], False):>5} → {fmt(after['brier'][k], False):>5}"
        )


def mean(xs) -> float:
    return sum(xs) / len(xs)


def judge(rounds: list[dict], temps: list[float], *, num_bins: int, png: Path, title: str) -> dict:
    """Before/after reports on ``rounds`` and a before|after reliability PNG."""
    logits, accepted, _ = calibration_arrays(rounds)
    before = confidence_report(logits, accepted, num_bins=num_bins)
    after = confidence_report(logits, accepted, temperatures=temps, num_bins=num_bins)
    labels = survival_labels(accepted, logits.shape[1])
    plot_reliability_before_after(
        prefix_survival(apply_temperatures(logits, [1.0] * len(temps))),
        prefix_survival(apply_temperatures(logits, temps)),
        labels,
        path=png,
        title=title,
        num_bins=num_bins,
    )
    return {"before": before, "after": after, "plot": str(png)}


def draft_folder(given: str) -> str:
    """The step folder calibration.json goes into: the one eval.py reads for the same path (a checkpoint
    root means its newest complete step); a folder that holds no draft (a target, say) is refused."""
    from deepspec.draft_specs import saved_architecture
    from deepspec.eval.runner import resolve_draft_dir

    if not Path(given).is_dir():
        raise CalibrationError(
            f"{'not a folder' if Path(given).exists() else 'no such folder'}: {given} (--draft must be the draft "
            f"checkpoint folder that {CALIBRATION_FILE} is written into)"
        )
    folder = Path(resolve_draft_dir(given))
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{folder}/config.json cannot be read ({exc}); pass a draft step folder") from None
    if not isinstance(config, dict) or saved_architecture(config) is None:
        raise CalibrationError(
            f"{folder} is not a draft folder (its config.json names no draft architecture; a target?); "
            f"pass the draft's step folder or checkpoint folder, where eval.py looks for {CALIBRATION_FILE}"
        )
    if folder != Path(given):
        print(f"draft: {given} -> {folder} (the step eval.py reads for that path)")
    return str(folder)


def check_outputs(args, *, tasks: list[str]) -> Path:
    """The report folder (returned) and calibration.json, checked before anything is written. The report lands
    beside the rounds (an eval run) or in a folder of its own; calibration.json goes into the draft's step folder
    (checked to hold a draft by :func:`draft_folder`), never anywhere else."""
    out_dir = Path(args.output_dir) if args.output_dir else Path(args.rounds[0]).resolve().parent
    outputs = [out_dir / "calibration_report.json", out_dir / "reliability_overall.png"]
    outputs += [out_dir / f"reliability_{_safe(task)}.png" for task in tasks]
    check_outputs_apart(inputs=args.rounds, outputs=outputs, what="--output-dir", may_write_into=("eval run",))
    if not args.dry_run:
        path = Path(args.draft) / CALIBRATION_FILE
        kinds = ("model folder", "checkpoint root")
        check_outputs_apart(inputs=args.rounds, outputs=[path], what=CALIBRATION_FILE, may_write_into=kinds)
        if path.is_dir():
            raise CalibrationError(f"{path} is a folder, where the calibration file goes; move it away")
    if out_dir.exists() and not out_dir.is_dir():
        raise CalibrationError(f"--output-dir {out_dir} is a file; pass a folder for the report and plots")
    return out_dir


@cli_main
def main(argv=None) -> None:
    args = parse_args(argv)
    if args.draft:
        args.draft = draft_folder(args.draft)
    # Everything is read and checked before anything is written: a bad record leaves every file as it was.
    rounds = read_rounds(args.rounds)
    calibration_arrays(rounds)  # fail early, on all rounds, if none is usable
    fit, held = split_rounds(rounds, held_out_fraction=args.held_out_fraction, seed=args.seed)
    if args.held_out_fraction == 0:
        print("note: --held-out-fraction 0, so the numbers below are on the fit rounds (optimistic)")
        held = fit
    for name, part in (("fit", fit), ("held-out", held)):
        try:
            calibration_arrays(part)
        except CalibrationError:
            raise CalibrationError(
                f"the {name} split has no usable rounds; record more prompts or change --held-out-fraction"
            ) from None
    tasks = sorted({r["task"] for r in held})
    out_dir = check_outputs(args, tasks=tasks)
    logits, accepted, _ = calibration_arrays(fit)
    temps = fit_sts(logits, accepted, num_bins=args.num_bins)
    out_dir.mkdir(parents=True, exist_ok=True)
    overall = judge(
        held, temps, num_bins=args.num_bins, png=out_dir / "reliability_overall.png", title="all tasks (held-out)"
    )
    per_task = {}
    for task in tasks:
        task_rounds = [r for r in held if r["task"] == task]
        if not any(r["conf_logits"] is not None and r["proposal_len"] == r["gamma"] for r in task_rounds):
            continue
        per_task[task] = judge(
            task_rounds,
            temps,
            num_bins=args.num_bins,
            png=out_dir / f"reliability_{_safe(task)}.png",
            title=f"{task} (held-out)",
        )

    before, after = overall["before"], overall["after"]
    n_fit = len(calibration_arrays(fit)[1])
    print(
        f"rounds: {len(rounds)} read, {n_fit} fit, {before['num_rounds']} held-out (full blocks with "
        f"confidence logits), gamma {len(temps)}"
    )
    print("temperatures: " + ", ".join(f"{t:.3g}" for t in temps))
    print_table(before, after)
    for task, rep in per_task.items():
        print(
            f"  {task}: mean ECE {mean(rep['before']['ece']):.1%} -> {mean(rep['after']['ece']):.1%} "
            f"({rep['before']['num_rounds']} rounds)"
        )
    summary = {
        "held_out_fraction": args.held_out_fraction,
        "seed": args.seed,
        "num_bins": args.num_bins,
        "rounds_files": [str(p) for p in args.rounds],
        "num_fit_rounds": n_fit,
        "num_held_out_rounds": before["num_rounds"],
    }
    report = {"method": "sts", "temperatures": temps, **summary, "overall": overall, "per_task": per_task}
    report_path = out_dir / "calibration_report.json"
    atomic_write(report_path, json.dumps(to_jsonable(report), indent=2) + "\n")
    print(f"report: {report_path}")
    if args.dry_run:
        print("dry run: calibration.json not written")
    else:
        path = save_calibration(
            args.draft,
            temperatures=temps,
            report_before=before,
            report_after=after,
            extra={**summary, "evaluated_on": "held-out" if args.held_out_fraction else "fit"},
        )
        print(f"wrote {path}")
    print(f"mean ECE {mean(before['ece']):.2%} -> {mean(after['ece']):.2%}")


if __name__ == "__main__":
    sys.exit(main())
