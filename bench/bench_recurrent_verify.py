"""Verify-step cost with a recurrent target: Qwen3.5 (Gated DeltaNet + full attention) vs pure attention.

    python bench/bench_recurrent_verify.py [--hidden 1024] [--layers 8] [--gamma 7] [--batch 1 3] [--rounds 12]

Both targets are random, fp32, on the CPU, with the same hidden size, depth, attention heads, MLP and
vocabulary: a Qwen3 target (every layer full attention) and a Qwen3.5 target (full attention every 4th
layer, as Qwen3.5-9B). After a prefill of --prompt-len tokens, each round feeds γ + 1 slots through
``TargetRunner.forward`` and commits a random accepted length per row (the same lengths for every target),
which is one verify step of ``deepspec.decoding.engine``. Printed per batch size: ms per verify step for

* ``attention``: the Qwen3 target (masks and crops its KV cache);
* ``hybrid, rollback``: the Qwen3.5 target as decoding runs it (state snapshot per slot, commit one);
* ``hybrid, no rollback``: the Qwen3.5 target through its own chunked kernel, keeping no snapshots (not
  lossless: a rejected token stays in the state; it only shows what the snapshots cost);

and the ratio rollback / attention. One run, median over rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time


def build_targets(*, hidden: int, layers: int, vocab: int, seed: int):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3_5ForCausalLM, Qwen3_5TextConfig

    heads = max(2, hidden // 128)
    shared = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 4),
        head_dim=128,
        tie_word_embeddings=False,
    )
    linear = dict(
        full_attention_interval=4,
        linear_num_key_heads=max(1, heads // 2),
        linear_num_value_heads=heads,
        linear_key_head_dim=128,
        linear_value_head_dim=128,
    )
    torch.manual_seed(seed)
    attention = Qwen3ForCausalLM(Qwen3Config(**shared)).eval()
    torch.manual_seed(seed)
    hybrid = Qwen3_5ForCausalLM(Qwen3_5TextConfig(**shared, **linear)).eval()
    return attention, hybrid


def time_verify_steps(runner, *, batch: int, prompt_len: int, gamma: int, accepted, vocab: int, rollback: bool):
    """Median seconds of one verify step (forward over γ + 1 slots, then commit) over the rounds."""
    import torch

    from deepspec.decoding.slots import SlotTable

    gen = torch.Generator().manual_seed(0)
    slots = SlotTable(batch=batch, device=torch.device("cpu"))
    runner.reset()
    if not rollback:  # the layer's own chunked forward; commit keeps whatever state the pass left
        runner.recurrent.recording = contextlib.nullcontext
        runner.recurrent.commit = lambda num_valid: None
    tokens = torch.randint(3, vocab, (batch, prompt_len), generator=gen)
    pos = torch.arange(prompt_len)[None].expand(batch, -1)
    runner.forward(slots=slots, tokens=tokens, positions=pos, new_valid=torch.ones_like(tokens, dtype=torch.bool))
    slots.append(valid=torch.ones_like(tokens, dtype=torch.bool), pos=pos)
    n = gamma + 1
    times = []
    for acc in accepted:  # acc: [batch] accepted drafts per row, in [0, γ]
        feed = torch.randint(3, vocab, (batch, n), generator=gen)
        feed_pos = slots.next_position()[:, None] + torch.arange(n)
        start = time.perf_counter()
        runner.forward(slots=slots, tokens=feed, positions=feed_pos)
        runner.commit(acc + 1)
        times.append(time.perf_counter() - start)
        slots.append(valid=torch.arange(n)[None] <= acc[:, None], pos=feed_pos)
        cut = slots.trailing_invalid()
        slots.crop(cut)
        runner.crop(cut)
    return statistics.median(times[1:])  # the first round warms up the stepwise path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=1024, help="hidden size of the random hybrid target (default: 1024)")
    p.add_argument("--layers", type=int, default=8, help="its decoder layers (default: 8)")
    p.add_argument("--vocab", type=int, default=32000, help="its vocabulary (default: 32000)")
    p.add_argument("--gamma", type=int, default=7, help="drafts per round (the feed is γ + 1 slots)")
    p.add_argument("--prompt-len", type=int, default=256, help="prompt tokens per row (default: 256)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 3], help="batch sizes to time (default: 1 3)")
    p.add_argument("--rounds", type=int, default=12, help="verify rounds timed per batch size (default: 12)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()

    import torch

    from deepspec.decoding.target_runner import TargetRunner
    from deepspec.targets import Target

    if args.threads:
        torch.set_num_threads(args.threads)
    attention, hybrid = build_targets(hidden=args.hidden, layers=args.layers, vocab=args.vocab, seed=0)
    types = hybrid.config.layer_types
    print(
        f"[bench_recurrent_verify] hidden {args.hidden}, {args.layers} layers "
        f"({types.count('linear_attention')} Gated DeltaNet + {types.count('full_attention')} full attention in "
        f"the hybrid), vocab {args.vocab}, γ = {args.gamma}, prompt {args.prompt_len}, fp32, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    for name, model in (("attention", attention), ("hybrid", hybrid)):
        print(f"  {name} target: {sum(q.numel() for q in model.parameters()) / 1e6:.1f}M parameters")
    layer_ids = sorted({0, args.layers // 2, args.layers - 2})
    print(f"  {'batch':>5}  {'attention':>10}  {'hybrid, rollback':>17}  {'hybrid, no rollback':>20}  ratio")
    for batch in args.batch:
        gen = torch.Generator().manual_seed(batch)
        accepted = [torch.randint(0, args.gamma + 1, (batch,), generator=gen) for _ in range(args.rounds)]
        ms = {}
        for key, model, rollback in (
            ("attention", attention, True),
            ("rollback", hybrid, True),
            ("no_rollback", hybrid, False),
        ):
            runner = TargetRunner(Target(model), layer_ids=layer_ids)
            kwargs = dict(batch=batch, prompt_len=args.prompt_len, gamma=args.gamma, vocab=args.vocab)
            ms[key] = 1e3 * time_verify_steps(runner, accepted=accepted, rollback=rollback, **kwargs)
        ratio = ms["rollback"] / ms["attention"]
        print(
            f"  {batch:>5}  {ms['attention']:>8.1f}ms  {ms['rollback']:>15.1f}ms  {ms['no_rollback']:>18.1f}ms"
            f"  {ratio:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
