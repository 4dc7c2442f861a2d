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

from deepspec.data.conversations import SkipReport, list_input_files, read_conversations  # noqa: E402
from deepspec.errors import DeepSpecError, cli_main  # noqa: E402

# deepspec.data.target_cache (numpy + torch) is imported once the inputs are known good: a bad
# command answers at once.


class EstimateError(DeepSpecError, ValueError):
    """The estimate cannot be made from these options; the message says which to give."""


def _number(kind: type, *, minimum: float, inclusive: bool = True):
    """argparse type: a number of ``kind`` >= (or >) ``minimum``, refused at parse time."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")) or (
                value < minimum if inclusive else value <= minimum):
            raise argparse.ArgumentTypeError(f"must be {'>=' if inclusive else '>'} {minimum:g}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _layer_ids(text: str) -> list[int]:
    try:
        ids = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,9,17, got {text!r}") from None
    if not ids:
        raise argparse.ArgumentTypeError("give at least one layer id, e.g. 1,9,17,25,33")
    return ids


def hidden_size_from_config(model: str) -> int:
    """hidden_size from a local model folder's config.json (text_config for multimodal models)."""
    cfg_path = Path(model) / "config.json"
    if not cfg_path.is_file():
        raise EstimateError(f"{cfg_path} not found; --target-model must be a local model folder (or pass "
                            "--hidden-size)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise EstimateError(f"{cfg_path} is not valid JSON ({exc}); pass --hidden-size instead") from None
    for c in (cfg, cfg.get("text_config") or {}) if isinstance(cfg, dict) else ():
        if isinstance(c.get("hidden_size"), int) and c["hidden_size"] > 0:
            return c["hidden_size"]
    raise EstimateError(f"{cfg_path} has no positive hidden_size; pass --hidden-size")


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise EstimateError(f"cannot load --tokenizer {path!r}: {exc}. Pass a tokenizer folder (usually the target "
                            "model folder), or leave --tokenizer out for a chars/4 estimate") from None


def measure(paths: list[str], tokenizer_path: str | None, max_length: int | None) -> tuple[int, float, str]:
    """(samples, mean tokens per sample, how tokens were counted) for the given JSONL files."""
    report = SkipReport()
    files = list_input_files(paths)  # a missing file is said before the tokenizer loads
    conversations = read_conversations(files, report=report)
    tok = _load_tokenizer(tokenizer_path) if tokenizer_path else None
    n, tokens = 0, 0
    for conv in conversations:
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
    if report.skipped:
        print(report.summary(), file=sys.stderr)
    if n == 0:
        raise EstimateError("no valid conversations found in --train-data-path (see the summary above); pass a "
                            "conversation JSONL file, or --num-samples and --avg-tokens")
    how = f"tokenized with {tokenizer_path}" if tok else "chars/4 approximation; pass --tokenizer for exact counts"
    return n, tokens / n, how


@cli_main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = ap.add_argument_group("data (either counts or a file to measure)")
    data.add_argument("--num-samples", type=_number(int, minimum=1))
    data.add_argument("--avg-tokens", type=_number(float, minimum=0, inclusive=False), help="mean tokens per sample")
    data.add_argument("--train-data-path", nargs="+", help="JSONL file(s)/folder(s) to count and measure")
    data.add_argument("--tokenizer", help="tokenizer folder/name for exact token counts (else chars/4)")
    data.add_argument("--max-length", type=_number(int, minimum=1),
                      help="training max sequence length (longer samples truncated)")
    model = ap.add_argument_group("target (either sizes or a local model folder)")
    model.add_argument("--num-layers", type=_number(int, minimum=1), help="number of captured target layers")
    model.add_argument("--hidden-size", type=_number(int, minimum=1))
    model.add_argument("--target-model", help="local model folder with config.json")
    model.add_argument("--target-layer-ids", type=_layer_ids,
                       help="comma-separated captured layer ids, e.g. 1,9,17,25,33")
    ap.add_argument("--output-dir", help="where the cache will go: compare with its free space")
    args = ap.parse_args(argv)

    # Options that need no data first, so a wrong one is said before a long measurement.
    if args.target_layer_ids:
        if args.num_layers and args.num_layers != len(args.target_layer_ids):
            raise EstimateError(f"--num-layers {args.num_layers} disagrees with {len(args.target_layer_ids)} "
                                "--target-layer-ids; give one of them")
        num_layers = len(args.target_layer_ids)
    elif args.num_layers:
        num_layers = args.num_layers
    else:
        raise EstimateError("pass --num-layers or --target-layer-ids")
    hidden = args.hidden_size or (hidden_size_from_config(args.target_model) if args.target_model else None)
    if not hidden:
        raise EstimateError("pass --hidden-size or --target-model (a local folder with config.json)")
    if args.output_dir and Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        raise EstimateError(f"--output-dir {args.output_dir} is a file; give the folder the cache will go to")

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
        raise EstimateError("pass --num-samples and --avg-tokens, or --train-data-path to measure them")

    from deepspec.data.target_cache import estimate_cache_bytes, format_bytes

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
