#!/usr/bin/env python
"""Estimate the disk size of a target cache before building it.

Size ~= samples x tokens x ((layers + 1) x hidden x 2 + 5) bytes: captured
layers plus the last hidden state in bf16, int32 ids and a uint8 loss mask.

Examples:
    python scripts/data/estimate_target_cache_size.py --num-samples 800000 --avg-tokens 2048 \\
        --num-layers 5 --hidden-size 2560
    python scripts/data/estimate_target_cache_size.py --train-data-path data/regen.jsonl \\
        --target-model /models/Qwen3-4B --target-layer-ids 1,9,17,25,33 --tokenizer /models/Qwen3-4B
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))  # deepspec may not be pip-installed

from deepspec.data.conversations import DataError, SkipReport, read_conversations  # noqa: E402
from deepspec.data.target_cache import estimate_cache_bytes, format_bytes  # noqa: E402


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def hidden_size_from_config(model: str) -> int:
    """hidden_size from a local model folder's config.json (text_config for multimodal models)."""
    cfg_path = Path(model) / "config.json"
    if not cfg_path.is_file():
        fail(f"{cfg_path} not found; --target-model must be a local model folder (or pass --hidden-size)")
    cfg = json.loads(cfg_path.read_text())
    for c in (cfg, cfg.get("text_config") or {}):
        if isinstance(c.get("hidden_size"), int):
            return c["hidden_size"]
    fail(f"{cfg_path} has no hidden_size; pass --hidden-size")


def measure(paths: list[str], tokenizer_path: str | None, max_length: int | None) -> tuple[int, float, str]:
    """(samples, mean tokens per sample, how tokens were counted) for the given JSONL files."""
    tok = None
    if tokenizer_path:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(tokenizer_path)
    report = SkipReport()
    n, tokens = 0, 0
    try:
        for conv in read_conversations(paths, report=report):
            if tok is None:
                # ~4 characters per token for English BPE; the role markers add a few tokens per turn.
                count = sum(len(m["content"]) for m in conv.messages) / 4 + 4 * len(conv.messages)
            elif tok.chat_template:
                ids = tok.apply_chat_template(conv.messages, tokenize=True)
                ids = ids["input_ids"] if hasattr(ids, "keys") else ids
                count = len(ids)
            else:
                count = sum(len(tok(m["content"])["input_ids"]) for m in conv.messages)
            n += 1
            tokens += min(count, max_length) if max_length else count
    except DataError as e:
        fail(str(e))
    if report.skipped:
        print(report.summary(), file=sys.stderr)
    if n == 0:
        fail("no valid conversations found in --train-data-path")
    how = f"tokenized with {tokenizer_path}" if tok else "chars/4 approximation; pass --tokenizer for exact counts"
    return n, tokens / n, how


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = ap.add_argument_group("data (either counts or a file to measure)")
    data.add_argument("--num-samples", type=int)
    data.add_argument("--avg-tokens", type=float, help="mean tokens per sample")
    data.add_argument("--train-data-path", nargs="+", help="JSONL file(s)/folder(s) to count and measure")
    data.add_argument("--tokenizer", help="tokenizer folder/name for exact token counts (else chars/4)")
    data.add_argument("--max-length", type=int, help="training max sequence length (longer samples truncated)")
    model = ap.add_argument_group("target (either sizes or a local model folder)")
    model.add_argument("--num-layers", type=int, help="number of captured target layers")
    model.add_argument("--hidden-size", type=int)
    model.add_argument("--target-model", help="local model folder with config.json")
    model.add_argument("--target-layer-ids", help="comma-separated captured layer ids, e.g. 1,9,17,25,33")
    ap.add_argument("--output-dir", help="where the cache will go: compare with its free space")
    args = ap.parse_args()

    if args.train_data_path:
        num_samples, avg_tokens, how = measure(args.train_data_path, args.tokenizer, args.max_length)
        n_measured = num_samples
        if args.num_samples:  # e.g. measure a sample file, scale to the full count
            num_samples = args.num_samples
            how += f"; measured on {n_measured:,} samples"
    elif args.num_samples and args.avg_tokens:
        num_samples, avg_tokens, how = args.num_samples, args.avg_tokens, "given"
        if args.max_length:
            avg_tokens = min(avg_tokens, args.max_length)
    else:
        fail("pass --num-samples and --avg-tokens, or --train-data-path to measure them")

    if args.target_layer_ids:
        try:
            layer_ids = [int(x) for x in args.target_layer_ids.replace(" ", "").split(",") if x]
        except ValueError:
            fail(f"--target-layer-ids must be comma-separated integers, got {args.target_layer_ids!r}")
        if args.num_layers and args.num_layers != len(layer_ids):
            fail(f"--num-layers {args.num_layers} disagrees with {len(layer_ids)} --target-layer-ids")
        num_layers = len(layer_ids)
    elif args.num_layers:
        num_layers = args.num_layers
    else:
        fail("pass --num-layers or --target-layer-ids")
    hidden = args.hidden_size or (hidden_size_from_config(args.target_model) if args.target_model else None)
    if not hidden:
        fail("pass --hidden-size or --target-model (a local folder with config.json)")
    if num_samples <= 0 or avg_tokens <= 0 or num_layers <= 0 or hidden <= 0:
        fail("all sizes must be positive")

    total = estimate_cache_bytes(num_samples=num_samples, avg_tokens=avg_tokens, num_layers=num_layers,
                                 hidden_size=hidden)
    per_token = (num_layers + 1) * hidden * 2 + 5
    rows = [
        ("samples", f"{num_samples:,}"),
        ("tokens / sample", f"{avg_tokens:,.1f} ({how})"),
        ("total tokens", f"{num_samples * avg_tokens:,.0f}"),
        ("captured layers", f"{num_layers} x hidden {hidden} (+ last hidden state)"),
        ("bytes / token", f"{per_token:,}"),
        ("estimated size", f"{format_bytes(total)} ({total:,} bytes)"),
    ]
    if args.output_dir:
        probe = Path(args.output_dir)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        verdict = "fits" if free > total * 1.05 else "DOES NOT FIT: free up space or use the online mode"
        rows.append(("free on output disk", f"{format_bytes(free)} -> {verdict}"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
