"""DFlash draft for Qwen/Qwen3-14B: block 7, 5 draft layers, no Markov / confidence head, CE only.

Target layer ids: Qwen3-14B, 40 layers: ids evenly spread from 1 to L-3 = 37 (step 9).
Paper settings come from deepspec/recipes.py (paper_run); override anything with --opts.
"""

from deepspec.recipes import QWEN3_MASK_TOKEN_ID, derive_output_dirs, paper_run

project_name = "deepspec"
exp_name = "dflash_block7_qwen3_14b"
seed = 42

model, train, logging, data = paper_run(
    algorithm="dflash",
    target="Qwen/Qwen3-14B",
    target_layer_ids=[1, 10, 19, 28, 37],
    chat_template="qwen3",
    mask_token_id=QWEN3_MASK_TOKEN_ID,
)

finalize_cfg = derive_output_dirs
