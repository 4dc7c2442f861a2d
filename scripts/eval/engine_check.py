#!/usr/bin/env python
"""Decode a draft with a real engine (vLLM) and with eval.py on the same prompts; print both side by side.

    python scripts/eval/engine_check.py --target runs/q/tiny_target --draft runs/q/checkpoints/eagle3 \\
        --num-speculative-tokens 7,3 --output-dir runs/q/engine_check
    python scripts/eval/engine_check.py --target Qwen/Qwen3-8B --draft ckpt/step_latest --doctor-only

First the τ doctor checks the usual causes of "the engine's τ is lower than offline eval" (frozen embedding /
LM head, mask token, layer ids, chat template and thinking mode of the training data, the engine's
sampling defaults, num_speculative_tokens, the anchor layout) and prints pass / warn with the fix;
--doctor-only stops there. Then it exports the draft to the folder vLLM serves it from (Eagle3: the
speculators format, method eagle3; DSpark / DFlash: DeepSpec's folder, method dspark, which needs vLLM's V2
GPU runner), runs the prompts through vLLM in its own environment (.venv-vllm: LLM.chat with the target's
chat template, thinking off, eval.py's stop token ids, top-k / top-p off, per-request spec-decode
metrics), runs eval.py on them, and prints per K: τ per task, acceptance per position, the share of
requests whose verify steps are identical, whether outputs equal the target's greedy output, tokens/s with
--batch-size requests in flight on both sides, and where the two first part. Everything goes to
<output-dir>/engine_check.json (eval.py's reports to <output-dir>/deepspec_k<K>/).

At temperature 0 in fp32 the two should agree exactly. Exit code 0 when every K agrees exactly or within
--tolerance, 1 when one differs, 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deepspec.cli import add_draft, add_max_new_tokens, add_output_dir, add_target
from deepspec.errors import cli_main

DEFAULT_TASKS = "gsm8k:8,humaneval:8,mt-bench:8"


def k_list(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K or K,K,... (integers >= 1), got {text!r}") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"expected K or K,K,... (integers >= 1), got {text!r}")
    return ks


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target(p, required=True, help="the target model (hub id or local folder) the draft was trained for")
    add_draft(
        p,
        required=True,
        help="the draft: a step folder, a checkpoint folder (its latest step) or a speculators-format folder",
    )
    p.add_argument(
        "--tasks", default=DEFAULT_TASKS, help=f"name[:n],... as eval.py takes them (default {DEFAULT_TASKS})"
    )
    p.add_argument(
        "--eval-data-dir", default=None, help="folder of <task>.jsonl prompt files (default: eval.py's, eval_datasets/)"
    )
    add_max_new_tokens(p, default=64, help="tokens generated per prompt on both engines (default 64)")
    p.add_argument(
        "--num-speculative-tokens",
        type=k_list,
        default=None,
        metavar="K[,K...]",
        help="drafted tokens per round, one comparison each (default: what the draft was trained for; at most that)",
    )
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature, both engines (default 0)")
    p.add_argument(
        "--dtype", choices=("fp32", "bf16"), default="fp32", help="both engines' dtype (default fp32: exact agreement)"
    )
    p.add_argument(
        "--batch-size", type=int, default=1, help="requests in flight on both engines (vLLM's max_num_seqs; default 1)"
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="largest |τ difference| per task and pooled that still agrees when rounds differ (default 0.01)",
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    add_output_dir(p, default=None, help="folder to write (default runs/engine_check/<draft name>)")
    p.add_argument(
        "--vllm-python",
        default=None,
        help="vLLM's interpreter (default $DEEPSPEC_VLLM_PYTHON, else $DEEPSPEC_VLLM_VENV/bin/python, else "
        ".venv-vllm/bin/python; bash scripts/data/setup_vllm_env.sh installs it)",
    )
    p.add_argument("--doctor-only", action="store_true", help="run the τ doctor's checks and stop (writes nothing)")
    p.add_argument(
        "--method",
        choices=("eagle3", "dspark", "dflash"),
        default=None,
        help="doctor: the vLLM speculative method you serve the draft with, checked against its block layout "
        "(default: the one the engine check serves it with)",
    )
    p.add_argument(
        "--target-cache-dir",
        default=None,
        help="doctor: the target cache the draft was trained on (default: its train_config.json's)",
    )
    p.add_argument(
        "--train-data-path",
        nargs="+",
        default=[],
        help="doctor: the regenerated training data, read for think blocks (default: the cache's source files)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


@cli_main
def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.temperature < 0 or args.tolerance < 0:
        p.error("--temperature and --tolerance must be >= 0")
    from deepspec.eval.engine_check import DIFFERS, EngineCheckOptions, run_engine_check
    from deepspec.eval.tasks import parse_tasks
    from deepspec.preflight import check_run_inputs

    tasks, _ = parse_tasks(args.tasks, eval_data_dir=args.eval_data_dir)
    output_dir = Path(args.output_dir or Path("runs/engine_check") / Path(args.draft.rstrip("/")).name)
    check_run_inputs(
        target=(args.target, "--target"), draft=(args.draft, "--draft"), outputs={"--output-dir": output_dir}
    )
    report = run_engine_check(
        EngineCheckOptions(
            target=args.target,
            draft=args.draft,
            tasks=tasks,
            output_dir=output_dir,
            num_speculative_tokens=args.num_speculative_tokens or [],
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            dtype=args.dtype,
            batch_size=args.batch_size,
            tolerance=args.tolerance,
            seed=args.seed,
            vllm_python=args.vllm_python,
            doctor_only=args.doctor_only,
            method=args.method,
            target_cache_dir=args.target_cache_dir,
            train_data_paths=args.train_data_path,
            progress=not args.no_progress,
        )
    )
    return 1 if any(run["agreement"] == DIFFERS for run in report.get("runs", [])) else 0


if __name__ == "__main__":
    sys.exit(main())
