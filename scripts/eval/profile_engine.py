#!/usr/bin/env python
"""Measure the target's verification speed SPS(B) — steps/second at B batch tokens — for the
hardware-aware prefix scheduler (deepspec/decoding/scheduler.py, DSpark Algorithm 1).

What one measured step is: a verification forward of B query tokens against cached context.
The B tokens are laid out as ceil(B / row_tokens) rows (default row_tokens = γ+1 = 8, a full
drafted block plus the pending token), the tokens spread evenly over the rows; each row attends
to its own context of --context-len tokens held in a transformers DynamicCache. Only that
forward (logits for every query token included) is timed; the cache is cropped back after each
call, and the median over --repeats calls is kept. Why this layout: a verification batch is
made of per-request blocks of at most γ+1 tokens, so B tokens need at least ceil(B/8) rows —
this keeps the cost a function of B alone, as the scheduler's model SPS(B) assumes. It is the
cheapest attention layout for B tokens (fewest contexts read); --row-tokens 1 gives the most
expensive one (one context per token) if you want the other bound. When B does not divide
evenly, rows are padded to equal length and the padded token count is recorded as
"computed_tokens".

Example (from the repo root):
    python scripts/eval/profile_engine.py --device cuda --context-len 2048 --output-file-path cost_table.json
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import statistics
import sys
import time


DEFAULT_BATCH_TOKENS = [*range(1, 17), 20, 24, 28, 32, 40, 48, 56, 64]
DTYPES = {
    "fp32": "float32",
    "float32": "float32",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
}


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"batch token counts must be integers >= 1, got {text!r}")
    return sorted(set(values))


def parse_args(argv=None) -> argparse.Namespace:
    from deepspec.cli import add_output_file, add_target, nonnegative_int, positive_int
    from deepspec.tiny_target import default_tiny_target_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target(
        parser,
        aliases=("--target_name_or_path", "--target-name-or-path"),
        default=None,
        help=f"target model (hub id or local folder); default: $DEEPSPEC_TINY_TARGET or {default_tiny_target_dir()}",
    )
    parser.add_argument(
        "--batch-tokens",
        type=_int_list,
        default=DEFAULT_BATCH_TOKENS,
        help="comma-separated batch token counts B to measure (default: 1..16 then steps "
        "to 64); cover the largest Σ(ℓ_r+1) you will serve — the scheduler extrapolates "
        "linearly beyond the last point",
    )
    parser.add_argument(
        "--context-len",
        type=positive_int,
        default=512,
        help="tokens of cached context per row, a representative prompt+answer length (default: 512)",
    )
    parser.add_argument(
        "--row-tokens",
        type=positive_int,
        default=8,
        help="query tokens per row = γ+1 (default: 8); see the layout note above",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda when available, else cpu)")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=sorted(DTYPES),
        help="weights/activations dtype (default: bf16 on cuda, fp32 on cpu)",
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=10, help="timed calls per B; the median is kept (default: 10)"
    )
    parser.add_argument(
        "--warmup", type=nonnegative_int, default=2, help="untimed calls per B before timing (default: 2)"
    )
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument(
        "--seed", type=nonnegative_int, default=0, help="seed for the random context/query token ids (default: 0)"
    )
    add_output_file(
        parser,
        aliases=("--output",),
        type=pathlib.Path,
        default=pathlib.Path("cost_table.json"),
        help="where to write the cost table JSON (default: ./cost_table.json)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def _layout(batch_tokens: int, row_tokens: int) -> tuple[int, int]:
    """(rows, tokens per row) for B tokens: the fewest rows of <= row_tokens, evenly filled."""
    rows = math.ceil(batch_tokens / row_tokens)
    return rows, math.ceil(batch_tokens / rows)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _context_cache(model, *, rows: int, context_len: int, vocab: int, generator, device):
    """Prefill ``rows`` random contexts and return their DynamicCache."""
    import torch

    ids = torch.randint(vocab, (rows, context_len), generator=generator).to(device)
    cache = model(input_ids=ids, use_cache=True).past_key_values
    if hasattr(cache, "activate_past_recording"):  # sliding-window layers must keep states to be croppable
        cache.activate_past_recording()
    return cache


def measure(
    model,
    *,
    batch_tokens: list[int],
    context_len: int,
    row_tokens: int,
    repeats: int,
    warmup: int,
    seed: int,
    progress: bool,
) -> list[dict]:
    """Median seconds per verification forward for each B (see the module docstring for the layout)."""
    import torch
    from tqdm import tqdm

    device = next(model.parameters()).device
    vocab = int(model.config.get_text_config().vocab_size)
    generator = torch.Generator().manual_seed(seed)
    results, caches = [], {}
    with torch.inference_mode():
        for B in tqdm(batch_tokens, desc="profiling", unit="B", disable=not progress):
            rows, length = _layout(B, row_tokens)
            if rows not in caches:  # one prefilled context set per row count, reused for every B
                caches.clear()
                caches[rows] = _context_cache(
                    model, rows=rows, context_len=context_len, vocab=vocab, generator=generator, device=device
                )
            cache = caches[rows]
            query = torch.randint(vocab, (rows, length), generator=generator).to(device)
            times = []
            for i in range(warmup + repeats):
                _sync(device)
                start = time.perf_counter()
                model(input_ids=query, past_key_values=cache, use_cache=True)
                _sync(device)
                elapsed = time.perf_counter() - start
                cache.crop(-length)  # back to the bare context for the next call
                if i >= warmup:
                    times.append(elapsed)
            assert cache.get_seq_length() == context_len, "cache crop failed; timings would grow with each call"
            step = statistics.median(times)
            results.append(
                {
                    "batch_tokens": B,
                    "rows": rows,
                    "computed_tokens": rows * length,
                    "step_seconds": step,
                    "steps_per_second": 1.0 / step,
                }
            )
    return results


from deepspec.errors import DeepSpecError, check_outputs_apart, cli_main  # noqa: E402


def resolve_device(name: str | None):
    """``--device`` as a torch device (default: cuda when one is visible); a bad name or a missing GPU is one line."""
    import torch

    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise DeepSpecError(f"--device {name!r}: expected cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeepSpecError(f"--device {name}: no CUDA device is visible here; pass --device cpu")
    return device


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from deepspec.decoding.scheduler import CostTable
    from deepspec.preflight import check_model
    from deepspec.targets import load_target
    from deepspec.tiny_target import default_tiny_target_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype_name = DTYPES[args.dtype] if args.dtype else ("bfloat16" if device.type == "cuda" else "float32")
    target_path = args.target or str(default_tiny_target_dir())
    check_model(target_path, what="target", flag="--target")  # a missing folder, a cache or a draft: said now
    local = [os.path.expanduser(target_path)] if os.path.exists(os.path.expanduser(target_path)) else []
    check_outputs_apart(inputs=local, outputs=[args.output_file_path], what="--output-file-path")
    if args.output_file_path.is_dir():
        raise DeepSpecError(
            f"--output-file-path {args.output_file_path} is a folder; name the cost table file, "
            f"e.g. {args.output_file_path}/cost_table.json"
        )

    target = load_target(target_path, dtype=getattr(torch, dtype_name), device=device, with_tokenizer=False)
    max_pos = getattr(target.config, "max_position_embeddings", None)
    longest = args.context_len + max(_layout(B, args.row_tokens)[1] for B in args.batch_tokens)
    if max_pos is not None and longest > max_pos:
        raise DeepSpecError(
            f"--context-len {args.context_len} plus the query tokens ({longest}) exceeds the target's "
            f"max_position_embeddings={max_pos}; lower --context-len"
        )

    points = measure(
        target.model,
        batch_tokens=args.batch_tokens,
        context_len=args.context_len,
        row_tokens=args.row_tokens,
        repeats=args.repeats,
        warmup=args.warmup,
        seed=args.seed,
        progress=not args.no_progress,
    )
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    )
    table = CostTable(
        batch_tokens=[p["batch_tokens"] for p in points],
        steps_per_second=[p["steps_per_second"] for p in points],
        device=device_name,
        context_len=args.context_len,
        dtype=dtype_name,
        target=target_path,
        extra={
            "row_tokens": args.row_tokens,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "computed_tokens": [p["computed_tokens"] for p in points],
            "step_seconds": [p["step_seconds"] for p in points],
        },
    )
    args.output_file_path.parent.mkdir(parents=True, exist_ok=True)
    table.to_json(args.output_file_path)

    print(
        f"target {target_path} on {device_name}, {dtype_name}, context {args.context_len}, "
        f"{args.row_tokens} tokens/row, median of {args.repeats}"
    )
    print(f"{'B':>5} {'rows':>5} {'computed':>9} {'ms/step':>10} {'steps/s':>10} {'tokens/s':>11}")
    for p in points:
        print(
            f"{p['batch_tokens']:>5} {p['rows']:>5} {p['computed_tokens']:>9} {1e3 * p['step_seconds']:>10.3f} "
            f"{p['steps_per_second']:>10.2f} {p['batch_tokens'] * p['steps_per_second']:>11.1f}"
        )
    sps = table.steps_per_second
    if any(b > a * 1.05 for a, b in zip(sps, sps[1:])):
        print("note: steps/s rises with B somewhere by > 5% (timing noise?); more --repeats steadies it")
    print(f"cost table written to {args.output_file_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
