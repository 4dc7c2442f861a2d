#!/usr/bin/env python
"""Export a trained draft folder for serving, or convert a speculators-format draft back to ours.

    python scripts/export/export_draft.py --draft ckpt/step_latest --format deepspec \\
        --output-dir draft_vllm --dtype bf16
    python scripts/export/export_draft.py --draft ckpt/step_latest --format speculators --output-dir draft_spec
    python scripts/export/export_draft.py --draft their_speculators_draft --format deepspec --output-dir ours

--draft is a DeepSpec draft folder (a checkpoint step_N / step_latest) or a speculators-format folder
(ours or another tool's; one that omits embed_tokens / lm_head needs --target).

--format deepspec writes the DeepSpec layout that vLLM's `"method": "dspark"` loads
(Qwen3DSparkModel / Gemma4DSparkModel): a DSpark draft as it is, a DFlash draft with an all-zero
rank-1 Markov head (vLLM's DSpark classes always build one). Drafts vLLM cannot serve this way are
refused with the reason: gated/rnn Markov heads, Gemma 4 without k=v attention, Eagle3.

--format speculators writes the vllm-project/speculators layout (DSparkSpeculator / Eagle3Speculator):
tensors bit-equal, layer ids +1, DeepSpec-only fields under "deepspec" so the round trip back is exact.
It prints a note when vLLM cannot serve the result from that format. DFlash in DeepSpec's block layout
is refused: vLLM's dflash method reads slot 0 as the bonus token, so its CPU (V1) runner would decode
such a folder one slot off without a word; use --format deepspec for it, or train DFlash with
model.sample_from_anchor=False (the engines' layout), whose speculators export vLLM's dflash method serves.
"""

from __future__ import annotations

import argparse
import sys


from deepspec.cli import add_draft, add_output_dir, add_overwrite, add_target  # noqa: E402
from deepspec.errors import cli_main  # noqa: E402

DTYPES = {"keep": None, "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_draft(
        p,
        required=True,
        help="draft folder: a DeepSpec checkpoint step_N / step_latest, or a speculators-format folder",
    )
    p.add_argument(
        "--format",
        choices=("deepspec", "speculators"),
        default="deepspec",
        help="deepspec: the folder vLLM's method 'dspark' loads; speculators: the vllm-project/"
        "speculators layout (vLLM method 'eagle3' for Eagle3, 'dspark' for Qwen 3 DSpark, 'dflash' for DFlash "
        "in the engines' layout; refused for DFlash in DeepSpec's layout, which 'dflash' would decode one slot off)",
    )
    add_output_dir(
        p, aliases=("--output",), required=True, help="folder to write (must not exist or be empty, unless --overwrite)"
    )
    p.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default="keep",
        help="cast floating tensors (default keep: the saved dtypes; serving usually wants bf16)",
    )
    p.add_argument(
        "--verifier",
        default=None,
        help="--format speculators: the target's hub id or path recorded as verifier.name_or_path "
        "(what `vllm serve OUTPUT` loads as the target; default: the target in the checkpoint's "
        "train_config.json)",
    )
    add_target(
        p,
        default=None,
        help="target to read embed_tokens / lm_head from when a speculators-format --draft omits them",
    )
    add_overwrite(p, help="replace a non-empty --output-dir folder (only an earlier export)")
    return p


@cli_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from deepspec.hub import local_or_hub_id

    local_or_hub_id(args.draft, what="--draft folder")  # a dangling step_latest is named as such
    for flag, value in (("--verifier", args.verifier), ("--target", args.target)):
        if value:  # a path that is not there is said now, not recorded (--verifier) or blamed on the hub (--target)
            local_or_hub_id(value, what=f"{flag} model")
    import torch

    dtype = getattr(torch, DTYPES[args.dtype]) if DTYPES[args.dtype] else None
    if args.format == "deepspec":
        from deepspec.export import to_vllm_folder

        out = to_vllm_folder(
            draft_dir=args.draft,
            output_dir=args.output_dir,
            overwrite=args.overwrite,
            dtype=dtype,
            frozen_target=args.target,
        )
        print(f'wrote {out} (serve with --speculative-config \'{{"method": "dspark", "model": "{out}"}}\')')
        return 0
    import json

    from deepspec.export.speculators import from_speculators_config, to_speculators_folder
    from deepspec.export.vllm_layout import vllm_caveat

    out = to_speculators_folder(
        draft_dir=args.draft,
        output_dir=args.output_dir,
        overwrite=args.overwrite,
        dtype=dtype,
        verifier_name_or_path=args.verifier,
        frozen_target=args.target,
    )
    spec = json.loads((out / "config.json").read_text())
    caveat = vllm_caveat(from_speculators_config(spec))
    method = spec["speculators_model_type"]
    print(f"wrote {out} ({spec['architectures'][0]}, aux_hidden_state_layer_ids = target_layer_ids + 1)")
    if caveat:
        print(f"note: vLLM cannot serve this folder: {caveat}")
    else:
        print(f'serve with --speculative-config \'{{"method": "{method}", "model": "{out}"}}\'')
    if spec["speculators_config"]["verifier"]["name_or_path"] is None:
        print(
            "note: no verifier recorded (pass --verifier TARGET); `vllm serve OUTPUT` needs it, "
            "--speculative-config with an explicit target does not"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
