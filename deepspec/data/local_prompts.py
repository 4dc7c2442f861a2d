"""Training prompts for the embedded default, from a local source: Python stdlib code.

The tiny target holds out about one stdlib file in twenty from its own
training; we take the prompts from those held-out files, so the target answers
code it has not memorised. They are disjoint from every evaluation prompt by
construction (function headers vs. benchmark questions), and
:func:`count_overlap` checks it against the evaluation folder anyway.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

from deepspec.cli import add_num_samples, add_output_file
from deepspec.data.conversations import DataError, write_jsonl
from deepspec.errors import check_outputs_apart, cli_main
from deepspec.tiny_target import code_chat_pairs, load_corpus


def local_training_conversations(*, num: int, seed: int = 0) -> list[dict]:
    """``num`` single-turn conversations (user: a def/class header; assistant: its body)."""
    _, held_out = load_corpus()
    pairs = [(rel, user, answer) for rel, text in held_out for user, answer in code_chat_pairs(text=text)]
    random.Random(seed).shuffle(pairs)
    if num > len(pairs):
        raise DataError(
            f"asked for {num} prompts but the held-out stdlib files give only {len(pairs)}; "
            f"lower --num-samples to {len(pairs)} or less",
            reason="no_conversations",
        )
    return [
        {
            "id": f"stdlib-{i}",
            "source": rel,
            "conversations": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
        }
        for i, (rel, user, answer) in enumerate(pairs[:num])
    ]


def count_overlap(conversations: list[dict], eval_dir: str | os.PathLike | None) -> int:
    """How many training user turns equal a first user turn of any evaluation file."""
    if not eval_dir or not Path(eval_dir).is_dir():
        return 0
    eval_turns = set()
    for path in Path(eval_dir).glob("*.jsonl"):
        lines = path.read_text(encoding="utf-8", errors="replace").split("\n")  # not splitlines: U+2028 in strings
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                turns = json.loads(line).get("turns") or [""]
                eval_turns.add(str(turns[0]).strip())
            except (ValueError, AttributeError, TypeError, IndexError):
                raise DataError(
                    'not an eval row {"id", "turns": [...]}; fix the file or point --eval-data-dir elsewhere',
                    reason="malformed_json",
                    where=f"{path}:{lineno}",
                ) from None
    return sum(c["conversations"][0]["content"].strip() in eval_turns for c in conversations)


def _seed(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


@cli_main
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Write training prompts for the tiny target from held-out stdlib code.")
    add_output_file(p, required=True, help="the JSONL file of conversations to write")
    add_num_samples(p, aliases=("--num",), default=256, help="number of conversations (default: 256)")
    p.add_argument("--seed", type=_seed, default=0, help="which conversations are drawn (default: 0)")
    p.add_argument(
        "--eval-data-dir",
        default=os.environ.get("DEEPSPEC_EVAL_DATA_DIR"),
        help="checked for overlap with the evaluation prompts (default: $DEEPSPEC_EVAL_DATA_DIR)",
    )
    args = p.parse_args(argv)
    out = Path(args.output_file_path)
    check_outputs_apart(
        inputs=[args.eval_data_dir] if args.eval_data_dir and Path(args.eval_data_dir).exists() else [],
        outputs=[out],
        what="output",
    )
    if out.is_dir():
        raise DataError(f"{out} is a folder; --output-file-path must name a .jsonl file", reason="missing_file")
    rows = local_training_conversations(num=args.num_samples, seed=args.seed)
    overlap = count_overlap(rows, args.eval_data_dir)
    if overlap:
        raise DataError(
            f"{overlap} training prompts equal evaluation prompts in {args.eval_data_dir}; refusing to "
            "write them (try another --seed)",
            reason="duplicate_id",
        )
    write_jsonl(args.output_file_path, rows)
    print(
        f"wrote {len(rows)} training conversations to {args.output_file_path} "
        f"(overlap with evaluation prompts: {overlap})"
    )


if __name__ == "__main__":
    raise SystemExit(main())
