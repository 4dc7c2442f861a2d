"""DFlash draft for Qwen/Qwen3.5-9B: block 7, 5 draft layers, no Markov / confidence head, CE only.

Target layer ids: Qwen3.5-9B, 32 layers (Gated DeltaNet, with full attention at 3, 7, ..., 31). Capture
after any layer, whatever its type: the spread rule (5 ids from 1 to L-3 = 29) gives [1, 8, 15, 22, 29]
(docs/targets.md, "Qwen3.5 targets", says why not full-attention layers only).
The draft is Qwen3-style dense full attention with the target's sizes; the target's partial rotary factor
is not carried over (Qwen3 layers rotate the whole head).
Paper settings come from deepspec/recipes.py (paper_run); override anything with --opts.
"""

from deepspec.recipes import QWEN3_5_MASK_TOKEN_ID, derive_output_dirs, paper_run

project_name = "deepspec"
exp_name = "dflash_block7_qwen3_5_9b"
seed = 42

model, train, logging, data = paper_run(
    algorithm="dflash",
    target="Qwen/Qwen3.5-9B",
    target_layer_ids=[1, 8, 15, 22, 29],
    chat_template="qwen3_5",
    mask_token_id=QWEN3_5_MASK_TOKEN_ID,
)

finalize_cfg = derive_output_dirs
