"""Why do the quickstart's drafts rank as they do? Figures from one quickstart output folder.

    python bench/why_order.py --run-dir runs/quickstart [--num-samples 256]

For each trained draft (checkpoints/<name>, evaluated in eval/<name>):
- τ (macro over tasks) and, pooled over every round, the acceptance per draft position: unconditional
  (slot k accepted, as engines count it) and conditional (slot k accepted given slots 1..k-1 were);
- the training budget: optimizer steps x sequences per step (equal for all drafts) and, counted on the
  run's own target cache with the models' own rules, the supervised predictions per sequence: the
  parallel drafters supervise up to ``num_anchors`` anchors x ``block_size`` slots (``sample_anchors``
  and ``block_targets``), Eagle3 every answer position at each of its ``ttt_length`` steps
  (``next_token_mask``, shifted per step);
- the draft's depth and size against the target's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepspec.cache.reader import TargetCache  # noqa: E402
from deepspec.models.dspark import block_targets, sample_anchors  # noqa: E402
from deepspec.models.eagle3 import next_token_mask  # noqa: E402


def acceptance(counters: dict) -> tuple[list[float], list[float]]:
    """(unconditional, conditional) acceptance per position from eval.py's spec_decode counters."""
    drafts = counters["num_drafts"]
    accepted = counters["num_accepted_tokens_per_pos"]
    unconditional = [a / drafts for a in accepted]
    reached = [drafts] + accepted[:-1]
    conditional = [a / r if r else float("nan") for a, r in zip(accepted, reached)]
    return unconditional, conditional


def supervised_per_sequence(cache: TargetCache, config: dict, *, samples: int, seed: int) -> float:
    """Mean supervised predictions per training sequence under the draft's own labelling rule."""
    g = torch.Generator().manual_seed(seed)
    total, n = 0, min(samples, len(cache))
    for i in torch.randperm(len(cache), generator=g)[:n].tolist():
        s = cache[i]
        ids, mask = s["input_ids"][None], s["loss_mask"][None].bool()
        if "ttt_length" in config:  # Eagle3: step s supervises index t iff next_token_mask[t+s]
            sup = next_token_mask(mask)[0]
            total += sum(int(sup[step:].sum()) for step in range(config["ttt_length"]))
            continue
        anchors, valid = sample_anchors(
            mask, num_anchors=config["num_anchors"], block_size=config["block_size"], generator=g
        )
        targets = block_targets(
            input_ids=ids,
            loss_mask=mask,
            anchors=anchors,
            anchor_valid=valid,
            block_size=config["block_size"],
            mask_token_id=config.get("mask_token_id", 0),
            sample_from_anchor=config.get("sample_from_anchor", True),
        )
        total += int(targets.slot_mask.sum())
    return total / n


def draft_rows(run: Path, *, samples: int) -> list[dict]:
    cache = TargetCache(run / "cache")
    rows = []
    for ckpt in sorted(p for p in (run / "checkpoints").iterdir() if (p / "step_latest" / "config.json").is_file()):
        results = run / "eval" / ckpt.name / "results.json"
        if not results.is_file():
            continue
        config = json.loads((ckpt / "step_latest" / "config.json").read_text())
        train_cfg = json.loads((ckpt / "step_latest" / "train_config.json").read_text())
        evaluated = json.loads(results.read_text())
        unconditional, conditional = acceptance(evaluated["spec_decode"])
        rows.append(
            {
                "draft": ckpt.name,
                "tau": evaluated["macro"]["all"],
                "tau_ci": evaluated.get("macro_ci", {}).get("all"),
                "unconditional": unconditional,
                "conditional": conditional,
                "steps": train_cfg["train"]["max_train_steps"],
                "sequences_per_step": train_cfg["train"]["global_batch_size"],
                "supervised_per_sequence": supervised_per_sequence(cache, config, samples=samples, seed=0),
                "draft_layers": config["num_hidden_layers"],
                "target_layers": config.get("num_target_layers"),
                "num_anchors": config.get("num_anchors"),
                "block_or_ttt": config.get("block_size") or config.get("ttt_length"),
            }
        )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--run-dir", required=True, type=Path, help="a quickstart output folder (cache/, checkpoints/, eval/)"
    )
    p.add_argument("--num-samples", type=int, default=256, help="cache sequences to count supervision on (default 256)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    for need in ("cache", "checkpoints", "eval"):
        if not (args.run_dir / need).is_dir():
            p.error(f"{args.run_dir} has no {need}/: give a finished quickstart output folder (--run-dir)")
    rows = draft_rows(args.run_dir, samples=args.num_samples)
    pct = lambda xs: " ".join(f"{x:5.1%}" for x in xs)  # noqa: E731
    for r in rows:
        ci = r["tau_ci"]
        print(
            f"{r['draft']:>14}: τ {r['tau']:.3f}"
            + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
            + f"; {r['draft_layers']} draft layers on a {r['target_layers']}-layer target; anchors {r['num_anchors']},"
            f" block/ttt {r['block_or_ttt']}"
        )
        print(f"{'':>16}accepted per position        {pct(r['unconditional'])}")
        print(f"{'':>16}conditional on the previous  {pct(r['conditional'])}")
        print(
            f"{'':>16}budget: {r['steps']} steps x {r['sequences_per_step']} sequences; "
            f"{r['supervised_per_sequence']:.0f} supervised predictions per sequence"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
