#!/usr/bin/env python
"""Accepted vs rejected draft tokens per step as the confidence threshold grows (paper Figure 5).

Replays rounds recorded by eval.py with --confidence-threshold 0: at threshold t a round would have proposed
ℓ slots, accepted min(accepted, ℓ) of them and rejected the rest. --rule picks ℓ:
    per-slot    (default) the index of the first slot with c_k < t (eval.py --confidence-threshold,
                DeepSpec's rule)
    cumulative  the number of leading slots with prefix survival a_k = Π_{i≤k} c_i >= t
                (eval.py --survival-threshold)
The replay is exact per round (the target's verdict on slot k does not depend on later slots), so
no target is needed. c_k uses the STS temperatures from <draft>/calibration.json when
--draft has one (see scripts/eval/calibrate.py).

Per threshold: accepted and rejected draft tokens per step, acceptance rate (Σ accepted / Σ ℓ),
committed tokens per step (accepted + the target's own token) and mean proposal length ℓ.

Outputs (in --output-dir, default: the folder of the first rounds file):
    threshold_sweep.json, threshold_sweep.png (grouped bars: accepted vs rejected per threshold)

Examples:
    python scripts/eval/threshold_sweep.py --rounds outputs/eval/dspark/rounds.jsonl \\
        --draft checkpoints/dspark/exp/step_latest
    python scripts/eval/threshold_sweep.py --rounds rounds.jsonl --no-calibration --thresholds 0 0.3 0.5
    python scripts/eval/threshold_sweep.py --rounds rounds.jsonl --rule cumulative
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from deepspec.cli import add_draft, probability  # noqa: E402
from deepspec.decoding.confidence import CALIBRATION_FILE, RULES, CalibrationError, load_calibration  # noqa: E402
from deepspec.decoding.rounds import read_rounds  # noqa: E402
from deepspec.eval.calibration import calibration_arrays  # noqa: E402
from deepspec.eval.plots import plot_threshold_sweep  # noqa: E402
from deepspec.eval.report import to_jsonable  # noqa: E402
from deepspec.eval.threshold import DEFAULT_THRESHOLDS, sweep_thresholds  # noqa: E402
from deepspec.errors import check_outputs_apart, cli_main  # noqa: E402
from deepspec.fsio import atomic_write  # noqa: E402


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
        help="draft checkpoint folder; its calibration.json (if any) sets the STS temperatures",
    )
    p.add_argument(
        "--no-calibration",
        action="store_true",
        help="use the raw confidence head (temperature 1) even if calibration.json exists",
    )
    p.add_argument(
        "--rule",
        choices=RULES,
        default="per-slot",
        help="per-slot: cut at the first c_k < t (eval.py --confidence-threshold, DeepSpec's; default); "
        "cumulative: keep slots while a_k = Π c_i >= t (eval.py --survival-threshold)",
    )
    p.add_argument(
        "--thresholds",
        nargs="+",
        type=probability,
        default=list(DEFAULT_THRESHOLDS),
        metavar="T",
        help="thresholds to replay, each in [0, 1] (default 0.0 0.1 ... 0.9)",
    )
    p.add_argument(
        "--output-dir",
        metavar="DIR",
        help="where threshold_sweep.json / .png go (default: folder of the first rounds file)",
    )
    return p.parse_args(argv)


@cli_main
def main(argv=None) -> None:
    args = parse_args(argv)
    if args.draft and not args.no_calibration and not Path(args.draft).is_dir():
        raise CalibrationError(
            f"{'not a folder' if Path(args.draft).exists() else 'no such folder'}: {args.draft} (--draft must be "
            f"the draft checkpoint folder holding {CALIBRATION_FILE}; or pass --no-calibration)"
        )
    # Read and check everything before writing anything.
    rounds = read_rounds(args.rounds)
    logits, accepted, proposal_len = calibration_arrays(rounds, full_blocks_only=False)
    gamma = logits.shape[1]
    temps, source = None, "none (temperature 1)"
    if args.draft and not args.no_calibration:
        temps = load_calibration(args.draft, gamma=gamma)
        if temps is None:
            print(
                f"note: no {CALIBRATION_FILE} in {args.draft}; using the raw confidence head "
                "(run scripts/eval/calibrate.py first to calibrate)"
            )
        else:
            source = str(Path(args.draft) / CALIBRATION_FILE)
    out_dir = Path(args.output_dir) if args.output_dir else Path(args.rounds[0]).resolve().parent
    json_path, png_path = out_dir / "threshold_sweep.json", out_dir / "threshold_sweep.png"
    inputs = list(args.rounds) + ([args.draft] if args.draft and Path(args.draft).exists() else [])
    check_outputs_apart(inputs=inputs, outputs=[json_path, png_path], what="--output-dir", may_write_into=("eval run",))
    if out_dir.exists() and not out_dir.is_dir():
        raise CalibrationError(f"--output-dir {out_dir} is a file; pass a folder for threshold_sweep.json / .png")
    short = int((proposal_len < gamma).sum())
    if short > 0.2 * len(accepted):
        print(
            f"warning: {short} of {len(accepted)} rounds proposed fewer than gamma={gamma} slots; "
            "were they recorded with a threshold > 0? The replay assumes threshold-0 rounds."
        )
    results = sweep_thresholds(
        logits, accepted, thresholds=args.thresholds, rule=args.rule, temperatures=temps, proposal_len=proposal_len
    )
    per_task = {}
    for task in sorted({r["task"] for r in rounds}):
        task_rounds = [r for r in rounds if r["task"] == task and r["conf_logits"] is not None]
        if task_rounds:
            tl, ta, tp = calibration_arrays(task_rounds, full_blocks_only=False)
            per_task[task] = sweep_thresholds(
                tl, ta, thresholds=args.thresholds, rule=args.rule, temperatures=temps, proposal_len=tp
            )

    print(f"rounds: {len(accepted)} with confidence logits, gamma {gamma}, calibration: {source}, rule: {args.rule}")
    print(
        f"{'thresh':>6} {'accepted/step':>13} {'rejected/step':>13} {'accept rate':>11} "
        f"{'committed/step':>14} {'mean ℓ':>7}"
    )
    for r in results:
        rate = "n/a" if r["acceptance_rate"] != r["acceptance_rate"] else f"{r['acceptance_rate']:.1%}"
        print(
            f"{r['threshold']:6.2f} {r['avg_accepted']:13.3f} {r['avg_rejected']:13.3f} {rate:>11} "
            f"{r['avg_committed']:14.3f} {r['avg_proposal_len']:7.2f}"
        )
    report = {
        "rounds_files": [str(p) for p in args.rounds],
        "gamma": gamma,
        "rule": args.rule,
        "calibration": source,
        "temperatures": temps,
        "results": results,
        "per_task": per_task,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(json_path, json.dumps(to_jsonable(report), indent=2) + "\n")
    plot_threshold_sweep(
        results,
        path=png_path,
        title=f"{args.rule} threshold sweep (gamma {gamma}, {'STS' if temps else 'uncalibrated'})",
    )
    print(f"wrote {json_path} and {png_path}")


if __name__ == "__main__":
    sys.exit(main())
