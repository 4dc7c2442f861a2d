"""DSpark draft for Qwen/Qwen3-30B-A3B:
block 7, 5 draft layers, vanilla Markov head (rank 256), confidence head, 0.1 CE + 0.9 L1.

Target layer ids: Qwen3-30B-A3B, 48 MoE layers: the spread rule (5 ids from 1 to L-3 = 45) gives [1, 12, 23, 34, 45].
The draft is dense: Qwen3 layers with the target's dense intermediate_size (6144), not its experts.
Paper settings come from deepspec/recipes.py (paper_run); override anything with --opts.
"""

from deepspec.recipes import QWEN3_MOE_MASK_TOKEN_ID, derive_output_dirs, paper_run

project_name = "deepspec"
exp_name = "dspark_block7_qwen3_30b_a3b"
seed = 42

model, train, logging, data = paper_run(
    algorithm="dspark",
    target="Qwen/Qwen3-30B-A3B",
    target_layer_ids=[1, 12, 23, 34, 45],
    chat_template="qwen3",
    mask_token_id=QWEN3_MOE_MASK_TOKEN_ID,
)

finalize_cfg = derive_output_dirs
