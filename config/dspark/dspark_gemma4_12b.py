"""DSpark draft for google/gemma-4-12B-it:
block 7, 5 draft layers, vanilla Markov head (rank 256), confidence head, 0.1 CE + 0.9 L1.

Target layer ids: Gemma-4-12B, 48 layers: ids evenly spread from 1 to L-3 = 45 (step 11).
Paper settings come from deepspec/recipes.py (paper_run); override anything with --opts.
"""

from deepspec.recipes import GEMMA4_MASK_TOKEN_ID, derive_output_dirs, paper_run

project_name = "deepspec"
exp_name = "dspark_block7_gemma4_12b"
seed = 42

model, train, logging, data = paper_run(
    algorithm="dspark",
    target="google/gemma-4-12B-it",
    target_layer_ids=[1, 12, 23, 34, 45],
    chat_template="gemma4",
    mask_token_id=GEMMA4_MASK_TOKEN_ID,
)

finalize_cfg = derive_output_dirs
