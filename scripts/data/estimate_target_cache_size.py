#!/usr/bin/env python
"""Estimate the disk size of a target cache before building it.

Size ~= samples x tokens x ((layers + 1) x hidden x 2 + 5) bytes: captured
layers plus the last hidden state in bf16, int32 ids and a uint8 loss mask.

Also printed: the online alternative (train.py --online), which stores nothing and instead runs the
target forward-only on every training token: ~2 x non-embedding target parameters FLOPs per token,
i.e. 2 x params x global batch x tokens/sample per optimizer step, every epoch (attention's
sequence-length term and the norms are left out). Parameters are counted from --target's
config.json or given with --target-params.

Examples:
    python scripts/data/estimate_target_cache_size.py --num-samples 800000 --avg-tokens 2048 \\
        --num-layers 5 --hidden-size 2560
    python scripts/data/estimate_target_cache_size.py --train-data-path data/regen.jsonl \\
        --target /models/Qwen3-4B --target-layer-ids 1,9,17,25,33 --tokenizer /models/Qwen3-4B
    python scripts/data/estimate_target_cache_size.py --num-samples 800000 --avg-tokens 2048 \\
        --num-layers 5 --hidden-size 2560 --target-params 3.6e9 --global-batch-size 512 --epochs 10
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from deepspec.data.conversations import SkipReport, list_input_files, read_conversations  # noqa: E402
from deepspec.cli import add_num_samples, add_target, hide_aliases  # noqa: E402
from deepspec.hub import NoSuchFolderError, local_or_hub_id  # noqa: E402
from deepspec.errors import DeepSpecError, cli_main  # noqa: E402
from deepspec.layer_ids import check_layer_ids  # noqa: E402
from deepspec.fsio import free_disk  # noqa: E402

# deepspec.cache.format (numpy) is imported once the inputs are known good: a bad
# command answers at once.


class EstimateError(DeepSpecError, ValueError):
    """The estimate cannot be made from these options; the message says which to give."""


def _number(kind: type, *, minimum: float, inclusive: bool = True):
    """argparse type: a number of ``kind`` >= (or >) ``minimum``, refused at parse time."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if (
            value != value
            or value in (float("inf"), float("-inf"))
            or (value < minimum if inclusive else value <= minimum)
        ):
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


def _joined_layer_ids(argv: list[str]) -> list[str]:
    """``--target-layer-ids -1,9``: argparse takes a value starting with '-' for an option; join it to its flag."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] == "--target-layer-ids" and arg[:1] == "-" and arg[1:2].isdigit():
            out[-1] = f"--target-layer-ids={arg}"
        else:
            out.append(arg)
    return out


def _text_config(model: str, *, instead: str) -> dict:
    """config.json of a local model folder (its text_config for multimodal models); ``instead`` names the
    option that avoids reading it, for the error messages."""
    cfg_path = Path(model) / "config.json"
    if not cfg_path.is_file():
        raise EstimateError(f"{cfg_path} not found; --target must be a local model folder (or pass {instead})")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise EstimateError(f"{cfg_path} is not valid JSON ({exc}); pass {instead} instead") from None
    if not isinstance(cfg, dict):
        raise EstimateError(f"{cfg_path} is not a JSON object; pass {instead} instead")
    text = cfg.get("text_config")
    return text if isinstance(text, dict) and "hidden_size" in text and "hidden_size" not in cfg else cfg


def hidden_size_from_config(model: str) -> int:
    """hidden_size from a local model folder's config.json (text_config for multimodal models)."""
    c = _text_config(model, instead="--hidden-size")
    if isinstance(c.get("hidden_size"), int) and c["hidden_size"] > 0:
        return c["hidden_size"]
    raise EstimateError(f"{Path(model) / 'config.json'} has no positive hidden_size; pass --hidden-size")


def target_params_from_config(model: str) -> tuple[int, str]:
    """(non-embedding parameters, how they were counted) from a decoder-only config.json.

    Per layer: attention q/k/v/o projections (hidden x heads x head_dim for q and o, hidden x kv_heads x
    head_dim for k and v) plus the gated MLP (gate, up, down: 3 x hidden x intermediate). Norms and
    biases are left out (well under 1%); embeddings and the LM head are not run per token by the capture.
    """
    c = _text_config(model, instead="--target-params")
    cfg_path = Path(model) / "config.json"

    def get(key: str, default=None) -> int:
        value = c.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise EstimateError(
                f"{cfg_path} has no positive integer {key} (got {value!r}); pass --target-params "
                "(non-embedding parameter count) instead"
            )
        return value

    layers, hidden, inter = get("num_hidden_layers"), get("hidden_size"), get("intermediate_size")
    heads = get("num_attention_heads")
    kv_heads = get("num_key_value_heads", heads)
    head_dim = c.get("head_dim") or hidden // heads
    head_dim = get("head_dim", head_dim)
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    mlp = 3 * hidden * inter
    how = (
        f"{layers} layers x (attention {attention:,} + MLP {mlp:,}) from {cfg_path}: hidden {hidden}, "
        f"intermediate {inter}, heads {heads}/{kv_heads} kv, head_dim {head_dim}"
    )
    return layers * (attention + mlp), how


def format_flops(n: float) -> str:
    """2.5e15 -> '2.50 PFLOP' (decimal units)."""
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} FLOP"


# A local folder holds a tokenizer when it has one of these (AutoTokenizer reads any of them).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _load_tokenizer(path: str):
    try:
        resolved, local = local_or_hub_id(path, what="--tokenizer")  # a missing folder is said as such
    except NoSuchFolderError as exc:
        raise EstimateError(f"--tokenizer: {exc}") from None
    if local and not any((Path(resolved) / name).is_file() for name in TOKENIZER_FILES):
        raise EstimateError(
            f"--tokenizer {path} holds no tokenizer ({', '.join(TOKENIZER_FILES)}); pass the target model folder, "
            "or leave --tokenizer out for a chars/4 estimate"
        )
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise EstimateError(
            f"cannot load --tokenizer {path!r}: {exc}. Pass a tokenizer folder (usually the target "
            "model folder), or leave --tokenizer out for a chars/4 estimate"
        ) from None


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
    if not report.kept + report.skipped:
        raise EstimateError(
            f"--train-data-path {', '.join(map(str, files))} holds no conversation (empty, or blank lines only); "
            "pass the conversation JSONL file(s), or --num-samples and --avg-tokens"
        )
    if n and not tokens:
        raise EstimateError(f"--tokenizer {tokenizer_path} turned every conversation into 0 tokens; is it a tokenizer?")
    if n == 0:
        raise EstimateError(
            "no valid conversations found in --train-data-path (see the summary above); pass a "
            "conversation JSONL file, or --num-samples and --avg-tokens"
        )
    how = f"tokenized with {tokenizer_path}" if tok else "chars/4 approximation; pass --tokenizer for exact counts"
    return n, tokens / n, how


@cli_main
def main(argv=None) -> int:
    ap = hide_aliases(
        argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    )
    data = ap.add_argument_group("data (either counts or a file to measure)")
    add_num_samples(data, type=_number(int, minimum=1), help="conversations the cache will hold")
    data.add_argument("--avg-tokens", type=_number(float, minimum=0, inclusive=False), help="mean tokens per sample")
    data.add_argument("--train-data-path", nargs="+", help="JSONL file(s)/folder(s) to count and measure")
    data.add_argument("--tokenizer", help="tokenizer folder/name for exact token counts (else chars/4)")
    data.add_argument(
        "--max-length", type=_number(int, minimum=1), help="training max sequence length (longer samples truncated)"
    )
    model = ap.add_argument_group("target (either sizes or a local model folder)")
    model.add_argument("--num-layers", type=_number(int, minimum=1), help="number of captured target layers")
    model.add_argument("--hidden-size", type=_number(int, minimum=1), help="the target's hidden size")
    add_target(model, aliases=("--target-model",), help="the target: a local model folder with config.json")
    model.add_argument(
        "--target-layer-ids", type=_layer_ids, help="comma-separated captured layer ids, e.g. 1,9,17,25,33"
    )
    online = ap.add_argument_group("online alternative (train.py --online: target forward every step, no cache)")
    online.add_argument(
        "--target-params",
        type=_number(float, minimum=1),
        help="target non-embedding parameter count, e.g. 3.6e9 (default: counted from --target's config.json)",
    )
    online.add_argument(
        "--global-batch-size",
        type=_number(int, minimum=1),
        default=512,
        help="training samples per optimizer step (train.global_batch_size; default 512, the paper recipes)",
    )
    online.add_argument(
        "--epochs",
        type=_number(int, minimum=1),
        default=1,
        help="training epochs, for the total over the run (default 1; the paper recipes use 10)",
    )
    ap.add_argument("--output-dir", help="where the cache will go: compare with its free space")
    args = ap.parse_args(_joined_layer_ids(sys.argv[1:] if argv is None else list(argv)))

    # Options that need no data first, so a wrong one is said before a long measurement.
    if args.target_layer_ids:
        if args.num_layers and args.num_layers != len(args.target_layer_ids):
            raise EstimateError(
                f"--num-layers {args.num_layers} disagrees with {len(args.target_layer_ids)} "
                "--target-layer-ids; give one of them"
            )
        num_layers = len(args.target_layer_ids)
    elif args.num_layers:
        num_layers = args.num_layers
    else:
        raise EstimateError("pass --num-layers or --target-layer-ids")
    hidden = args.hidden_size or (hidden_size_from_config(args.target) if args.target else None)
    if args.target_layer_ids and args.target:
        depth = _text_config(args.target, instead="--num-layers").get("num_hidden_layers")
        if isinstance(depth, int) and depth > 0:
            check_layer_ids(args.target_layer_ids, num_layers=depth, error=EstimateError, key="--target-layer-ids")
    if not hidden:
        raise EstimateError("pass --hidden-size or --target (a local folder with config.json)")
    if args.target_params:
        target_params, params_how = int(args.target_params), "given"
    elif args.target:
        target_params, params_how = target_params_from_config(args.target)
    else:
        target_params, params_how = None, None
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

    from deepspec.cache.format import estimate_cache_bytes, format_bytes

    total = estimate_cache_bytes(
        num_samples=num_samples, avg_tokens=avg_tokens, num_layers=num_layers, hidden_size=hidden
    )
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
        _, free = free_disk(args.output_dir)
        verdict = "fits" if free > total * 1.05 else "DOES NOT FIT: free up space or use the online mode"
        rows.append(("free on output disk", f"{format_bytes(free)} -> {verdict}"))
    rows.append(("online: disk", "0 bytes (train.py --online runs the target live; no cache)"))
    tokens_per_step = args.global_batch_size * avg_tokens
    rows.append(
        (
            "online: tokens / step",
            f"{tokens_per_step:,.0f} (global batch {args.global_batch_size:,} x {avg_tokens:,.1f} tokens)",
        )
    )
    steps = num_samples // args.global_batch_size * args.epochs
    steps_note = f"{num_samples:,} samples // global batch {args.global_batch_size:,} x {args.epochs} epoch(s)"
    if steps == 0:
        steps_note += ": fewer samples than --global-batch-size, training would have no step"
    rows.append(("online: optimizer steps", f"{steps:,} ({steps_note})"))
    if target_params is None:
        rows.append(
            (
                "online: target forward",
                "pass --target (local folder with config.json) or --target-params for the FLOPs per step",
            )
        )
    else:
        per_step = round(2 * target_params * tokens_per_step)
        run_total = per_step * steps
        once = round(2 * target_params * num_samples * avg_tokens)
        rows += [
            ("target params", f"{target_params:,} non-embedding ({params_how})"),
            (
                "online: target fwd / step",
                f"{per_step:,} FLOPs ({format_flops(per_step)}; 2 x params x tokens/step, forward only)",
            ),
            ("online: target fwd / run", f"{run_total:,} FLOPs ({format_flops(run_total)}; {steps:,} steps)"),
            ("cache build forward", f"{once:,} FLOPs ({format_flops(once)}; paid once, every epoch reuses it)"),
        ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
