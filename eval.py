"""Stage 3: evaluate a draft by real speculative decoding over the benchmark prompts.

    python eval.py --draft_name_or_path runs/quickstart/checkpoints/dspark --tasks gsm8k:20,mt-bench:10

Prints the accepted-length table (τ incl. the bonus token with its 95% interval from a bootstrap over
prompts, verify rate, accept_rate@k, the draft's cost per round) and writes results.json (with per-prompt
counts), table.md, rounds.jsonl (every decoding round: the input of scripts/eval/calibrate.py,
threshold_sweep.py and simulate_serving.py), conditional-acceptance and reliability PNGs to
--output-dir. Decoding is lossless: the output follows the target's own distribution.

How it decodes on this machine, each choice with its reason in results.json's meta (dtype_reason,
threads_reason; docs/evaluation.md, "Speed on CPU", has the numbers behind both rules):
  --dtype auto  bf16 on a GPU; on a CPU fp32, unless the CPU has native bf16 and a short probe decode in
                both dtypes at this run's shapes finds bf16 at least 1.5x faster (a 99M-parameter model:
                3.2x; the quickstart's tiny models: about 1.1x, so fp32). An explicit --dtype is not probed.
  threads       on CPU, torch's threads are the cores other jobs leave free (/proc/loadavg), re-checked as
                decoding goes: on 2 shared cores 2 threads decoded 5-10x slower than 1. OMP_NUM_THREADS
                overrides.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from deepspec.errors import cli_main


def parse_args(argv=None):
    from deepspec.eval.intervals import add_bootstrap_args
    from deepspec.eval.tasks import KNOWN_TASKS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from deepspec.cli import add_flag, add_max_new_tokens
    from deepspec.tiny_target import default_tiny_target_dir

    tiny = str(default_tiny_target_dir())
    add_flag(
        p,
        "--target_name_or_path",
        aliases=("--target-name-or-path",),
        dest="target",
        default=tiny,
        help="target model: hub id or local folder (default: the tiny local target, %(default)s)",
    )
    add_flag(
        p,
        "--draft_name_or_path",
        aliases=("--draft-name-or-path",),
        dest="draft",
        help="draft: a step_N folder, a training checkpoint dir (its latest step) or a hub id; the "
        "algorithm comes from its config.json architectures",
    )
    p.add_argument(
        "--self-draft",
        type=int,
        default=0,
        metavar="GAMMA",
        help="ceiling check: the target drafts GAMMA tokens for itself (every draft accepted, "
        "τ = GAMMA+1); no --draft_name_or_path needed",
    )
    p.add_argument(
        "--tasks",
        default=None,
        help="name[:n],... (default: all nine with the paper's counts: "
        + ", ".join(f"{k} {v[0]}" for k, v in KNOWN_TASKS.items())
        + "); any <name>.jsonl in --eval-data-dir is a task",
    )
    p.add_argument(
        "--eval-data-dir",
        default=None,
        help="folder of <task>.jsonl prompt files (default: $DEEPSPEC_EVAL_DATA_DIR, else eval_datasets/)",
    )
    add_max_new_tokens(p, type=int, default=2048, help="token budget of each answer (default: 2048)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (exactly the target's greedy output)")
    p.add_argument(
        "--num-speculative-tokens",
        type=int,
        default=None,
        metavar="K",
        help="draft K tokens per round, as engines' num_speculative_tokens does (default: what the draft was "
        "trained for, block_size / ttt_length; more is refused). DSpark / DFlash run a block of K slots, "
        "Eagle3 a chain of K steps; decoding stays lossless",
    )
    p.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.0,
        metavar="T",
        help="DeepSpec's rule: cut the draft block at the first slot whose own confidence "
        "sigmoid(c_k) < T (calibrated; 0 = off, always the full block); in [0, 1]",
    )
    p.add_argument(
        "--survival-threshold",
        type=float,
        default=None,
        metavar="T",
        help="cumulative rule (--scheduler cumulative-threshold): verify only the leading slots whose "
        "prefix survival Π_{i<=k} sigmoid(c_i) >= T; in [0, 1]; not with --confidence-threshold",
    )
    p.add_argument(
        "--scheduler",
        choices=("fixed", "threshold", "cumulative-threshold", "prefix"),
        default=None,
        help="proposal lengths per round: fixed γ, threshold (per-slot, --confidence-threshold), "
        "cumulative-threshold (--survival-threshold), or the hardware-aware prefix scheduler "
        "(Algorithm 1; needs --engine-profile). Default: threshold when --confidence-threshold "
        "> 0, cumulative-threshold when --survival-threshold is given, else fixed",
    )
    p.add_argument(
        "--engine-profile",
        default=None,
        help="cost table JSON from scripts/eval/profile_engine.py (for --scheduler prefix)",
    )
    p.add_argument(
        "--async-scheduler",
        action="store_true",
        help="prefix scheduler: budget from confidences two steps old (paper §5.2)",
    )
    p.add_argument(
        "--no-calibration", action="store_true", help="ignore calibration.json next to the draft (raw confidence head)"
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    add_bootstrap_args(p)
    p.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="requests decoded together (default 1: exactly comparable per-request numbers). It changes speed, "
        "not acceptance: rows share each target pass, so tokens/s rises with it (issue 31, quickstart Eagle3 on 2 "
        "cores: 107.5 at 1, 417 at 8; compare engines at equal concurrency). τ stays the same (at --temperature "
        "0 exactly, up to batched kernels' rounding: the same 24 prompts gave identical outputs and rounds at 1 "
        "and 8 in fp32; above 0 each request gets other random draws)",
    )
    p.add_argument("--output-dir", default=None, help="default: runs/eval/<draft name>")
    p.add_argument(
        "--device",
        default=None,
        help="cpu, cuda (one worker per visible GPU, prompts sharded) or cuda:N (default: cuda if available, else cpu)",
    )
    p.add_argument(
        "--dtype",
        choices=("auto", "bf16", "fp32", "fp16"),
        default="auto",
        help="model dtype (default auto: bf16 on GPU; on CPU fp32, unless the CPU has native bf16 and a probe "
        "decode in both dtypes at this run's batch, γ and a 256-token KV cache finds bf16 >= 1.5x faster; "
        "an explicit dtype is not probed). results.json's meta.dtype_reason says which and why",
    )
    p.add_argument(
        "--save-outputs",
        action="store_true",
        help="also write outputs.jsonl (task, prompt index, generated token ids and text)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if not args.draft and not args.self_draft:
        p.error("--draft_name_or_path is required (or --self-draft GAMMA for the ceiling check)")
    if args.max_new_tokens < 1 or args.batch_size < 1:
        p.error("--max-new-tokens and --batch-size must be >= 1")
    if args.num_speculative_tokens is not None and args.num_speculative_tokens < 1:
        p.error(f"--num-speculative-tokens must be >= 1, got {args.num_speculative_tokens}")
    if args.self_draft < 0:
        p.error(
            f"--self-draft must be >= 1 (γ, the tokens the target drafts for itself) or 0 (off), got {args.self_draft}"
        )
    if args.device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        p.error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if args.device and args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            p.error(f"--device {args.device} but no GPU is visible; use --device cpu or check CUDA_VISIBLE_DEVICES")
    if args.temperature < 0:
        p.error("--temperature must be >= 0")
    from deepspec.eval.runner import EvalSetupError, policy_choice

    try:
        policy_choice(
            args.scheduler, confidence_threshold=args.confidence_threshold, survival_threshold=args.survival_threshold
        )
    except EvalSetupError as exc:
        p.error(str(exc))
    if args.scheduler == "prefix" and not args.engine_profile:
        p.error("--scheduler prefix needs --engine-profile (make one with scripts/eval/profile_engine.py)")
    return args


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from deepspec.eval.runner import EvalOptions, run_eval
    from deepspec.eval.tasks import absent_tasks_line, default_eval_data_dir, parse_tasks
    from deepspec.preflight import check_run_inputs

    name = f"self{args.self_draft}" if args.self_draft else Path(args.draft.rstrip("/")).name

    tasks, absent = parse_tasks(args.tasks, eval_data_dir=args.eval_data_dir)
    output_dir = Path(args.output_dir or Path("runs/eval") / name)
    check_run_inputs(  # before any model loads
        target=(args.target, "--target_name_or_path"),
        draft=(args.draft, "--draft_name_or_path") if args.draft else None,
        outputs={"--output-dir": output_dir},
    )
    if absent:
        data_dir = args.eval_data_dir or default_eval_data_dir()
        print(f"[eval] {absent_tasks_line(absent, data_dir=data_dir)}", file=sys.stderr)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    opts = EvalOptions(
        target=args.target,
        draft=args.draft,
        tasks=tasks,
        absent_tasks=absent,
        output_dir=output_dir,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        confidence_threshold=args.confidence_threshold,
        survival_threshold=args.survival_threshold,
        seed=args.seed,
        batch_size=args.batch_size,
        device=device,
        dtype=args.dtype,
        scheduler=args.scheduler,
        engine_profile=args.engine_profile,
        async_scheduler=args.async_scheduler,
        use_calibration=not args.no_calibration,
        self_draft_gamma=args.self_draft,
        num_speculative_tokens=args.num_speculative_tokens,
        bootstrap_draws=args.bootstrap_draws,
        bootstrap_seed=args.bootstrap_seed,
        save_outputs=args.save_outputs,
        progress=not args.no_progress,
    )
    run_eval(opts)
    print(f"[eval] wrote {opts.output_dir}/results.json, table.md, rounds.jsonl and plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
