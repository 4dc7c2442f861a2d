"""DSpark draft for meta-llama/Llama-3.1-8B-Instruct:
block 7, 5 draft layers, vanilla Markov head (rank 256), confidence head, 0.1 CE + 0.9 L1.

Target layer ids: Llama-3.1-8B, 32 layers: the spread rule (5 ids from 1 to L-3 = 29) gives [1, 8, 15, 22, 29].
Llama has no q/k norms; the draft layers are Qwen3-style (Qwen3DSparkModel) with Llama's sizes and rope.
Paper settings come from deepspec/recipes.py (paper_run); override anything with --opts.
"""

from deepspec.recipes import LLAMA3_MASK_TOKEN_ID, derive_output_dirs, paper_run

project_name = "deepspec"
exp_name = "dspark_block7_llama3_8b"
seed = 42

model, train, logging, data = paper_run(
    algorithm="dspark",
    target="meta-llama/Llama-3.1-8B-Instruct",
    target_layer_ids=[1, 8, 15, 22, 29],
    chat_template="llama3",
    mask_token_id=LLAMA3_MASK_TOKEN_ID,
)

finalize_cfg = derive_output_dirs
