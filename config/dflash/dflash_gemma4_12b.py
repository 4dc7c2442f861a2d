"""DFlash draft for google/gemma-4-12B-it: block 7, 5 draft layers, no Markov / confidence head, CE only.

Target layer ids: Gemma-4-12B, 48 layers: ids evenly spread from 1 to L-3 = 45 (step 11).
Paper settings come from deepspec/recipes.py; override anything with --opts.
"""

from deepspec.recipes import (
    GEMMA4_MASK_TOKEN_ID,
    derive_output_dirs,
    paper_data,
    paper_logging,
    paper_train,
    parallel_drafter_model,
)

project_name = "deepspec"
exp_name = "dflash_block7_gemma4_12b"
seed = 42

model = parallel_drafter_model(
    algorithm="dflash",
    target="google/gemma-4-12B-it",
    target_layer_ids=[1, 12, 23, 34, 45],
    mask_token_id=GEMMA4_MASK_TOKEN_ID,
)
train = paper_train()
logging = paper_logging()
data = paper_data(chat_template="gemma4")

finalize_cfg = derive_output_dirs
