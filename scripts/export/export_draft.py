#!/usr/bin/env python
"""Export a trained draft folder for serving.

    python scripts/export/export_draft.py --draft ckpt/step_latest --format deepspec --output draft_vllm [--dtype bf16]

--format deepspec writes the DeepSpec layout that vLLM's `"method": "dspark"` loads
(Qwen3DSparkModel / Gemma4DSparkModel): a DSpark draft as it is, a DFlash draft with an all-zero
rank-1 Markov head (vLLM's DSpark classes always build one). Drafts vLLM cannot serve are refused
with the reason: gated/rnn Markov heads, Gemma 4 without k=v attention, Eagle3 (vLLM reads Eagle3 in
the speculators format, which this tool does not write yet).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))  # deepspec may not be pip-installed

from deepspec.errors import cli_main  # noqa: E402

DTYPES = {"keep": None, "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--draft", required=True, help="draft folder (a checkpoint step_N / step_latest, or a saved draft)")
    p.add_argument("--format", choices=("deepspec",), default="deepspec",
                   help="deepspec: the folder vLLM's method 'dspark' loads (speculators: not yet)")
    p.add_argument("--output", required=True, help="folder to write (must not exist or be empty, unless --overwrite)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="keep",
                   help="cast floating tensors (default keep: the saved dtypes; serving usually wants bf16)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output folder")
    return p


@cli_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from deepspec.export import to_vllm_folder

    dtype = getattr(torch, DTYPES[args.dtype]) if DTYPES[args.dtype] else None
    out = to_vllm_folder(draft_dir=args.draft, output_dir=args.output, overwrite=args.overwrite, dtype=dtype)
    print(f"wrote {out} (serve with --speculative-config '{{\"method\": \"dspark\", \"model\": \"{out}\"}}')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
