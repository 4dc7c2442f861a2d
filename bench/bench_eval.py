"""Decoding speed on the tiny target: speculative (batch 1 and 8) vs. target-only autoregressive.

    python bench/bench_eval.py [--draft runs/quickstart/checkpoints/dspark] [--prompts 8] [--max-new-tokens 64]

Prints generated tokens/s, τ and ms per round for each setting, greedy on gsm8k/humaneval/mt-bench
prompts from $DEEPSPEC_EVAL_DATA_DIR. The target-only baseline uses the same cache code with γ = 0,
so the ratio is the speculative speed-up on this machine. Without --draft a randomly initialised
DSpark of the tiny config is used (τ near 1: that measures pure overhead).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from deepspec.cli import add_draft, add_max_new_tokens, add_target
    from deepspec.tiny_target import default_tiny_target_dir

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target(p, default=str(default_tiny_target_dir()), help="target folder or hub id (default: %(default)s)")
    add_draft(p, default=None, help="draft folder or checkpoint dir (default: random tiny DSpark)")
    p.add_argument("--prompts", type=int, default=8, help="prompts to decode (default: 8)")
    add_max_new_tokens(p, default=64, help="token budget per prompt (default: 64)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()

    import torch

    from deepspec.decoding.engine import speculative_generate, target_generate
    from deepspec.algorithms import build_proposer
    from deepspec.decoding.target_runner import TargetRunner
    from deepspec.eval.runner import encode_prompt, resolve_draft_dir, stop_token_ids
    from deepspec.eval.tasks import load_prompts, parse_tasks
    from deepspec.models import build_draft, draft_config_from_target, load_draft
    from deepspec.targets import load_target

    if args.threads:
        torch.set_num_threads(args.threads)
    target = load_target(args.target, dtype=torch.float32, device="cpu")
    if args.draft:
        draft = load_draft(resolve_draft_dir(args.draft))
    else:
        from deepspec.run_config import load_config

        cfg = load_config(str(ROOT / "config/dspark/dspark_tiny.py"))
        torch.manual_seed(0)
        draft = build_draft(draft_config_from_target(target.model.config, cfg.model))
    draft.load_target_weights(target)
    draft = draft.float().eval()
    tasks, _ = parse_tasks("gsm8k,humaneval,mt-bench")
    texts = [t for task in tasks for t in load_prompts(task)[: -(-args.prompts // len(tasks))]][: args.prompts]
    prompts = [encode_prompt(target.tokenizer, t) for t in texts]
    stops = stop_token_ids(target.tokenizer, target.model)
    runner = TargetRunner(target, layer_ids=draft.config.target_layer_ids)
    common = dict(runner=runner, max_new_tokens=args.max_new_tokens, temperature=0.0, stop_token_ids=stops)

    def timed(fn, batch):
        t0, gens = time.perf_counter(), []
        for i in range(0, len(prompts), batch):
            gens += fn(prompts[i : i + batch])
        seconds = time.perf_counter() - t0
        tokens = sum(len(g.tokens) for g in gens)
        rounds = sum(len(g.rounds) for g in gens)
        tau = sum(r["accepted"] + 1 for g in gens for r in g.rounds) / max(rounds, 1)
        return tokens / seconds, tau, 1000 * seconds / max(rounds, 1), gens

    timed(lambda ps: target_generate(prompts=ps[:1], **{**common, "max_new_tokens": 4}), 1)  # warm-up
    rows = []
    for batch in (1, 8):
        tps, _, ms, ref = timed(lambda ps: target_generate(prompts=ps, **common), batch)
        rows.append((f"target only, batch {batch}", tps, 1.0, ms))
        tps, tau, ms, spec = timed(
            lambda ps: speculative_generate(proposer=build_proposer(draft), prompts=ps, **common), batch
        )
        assert [g.tokens for g in spec] == [g.tokens for g in ref], "speculative greedy output differs from target"
        rows.append((f"{draft.config.algorithm}, batch {batch}", tps, tau, ms))
    print(
        f"tiny target on CPU ({torch.get_num_threads()} threads), {len(prompts)} prompts, "
        f"{args.max_new_tokens} new tokens, greedy; draft: {args.draft or 'random tiny DSpark'}"
    )
    print(f"{'setting':28s} {'tokens/s':>9s} {'tau':>6s} {'ms/round':>9s}")
    for name, tps, tau, ms in rows:
        print(f"{name:28s} {tps:9.1f} {tau:6.2f} {ms:9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
