"""DSpark draft for Qwen/Qwen3-8B:
block 7, 5 draft layers, vanilla Markov head (rank 256), confidence head, 0.1 CE + 0.9 L1.

Target layer ids: Qwen3-8B, 36 layers: same depth as 4B, so the same spread ids.
Paper settings come from deepspec/recipes.py (paper_run); override anything with --opts.
"""

from deepspec.recipes import QWEN3_MASK_TOKEN_ID, derive_output_dirs, paper_run

project_name = "deepspec"
exp_name = "dspark_block7_qwen3_8b"
seed = 42

model, train, logging, data = paper_run(
    algorithm="dspark",
    target="Qwen/Qwen3-8B",
    target_layer_ids=[1, 9, 17, 25, 33],
    chat_template="qwen3",
    mask_token_id=QWEN3_MASK_TOKEN_ID,
)

finalize_cfg = derive_output_dirs
