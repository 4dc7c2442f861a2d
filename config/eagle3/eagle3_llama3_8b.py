"""Eagle3 draft for meta-llama/Llama-3.1-8B-Instruct:
one autoregressive layer, training-time test over 7 steps, step decay 0.8.

Target layer ids: Llama-3.1-8B, 32 layers: the spread rule (5 ids from 1 to L-3 = 29) gives [1, 8, 15, 22, 29].
Llama has no q/k norms; the draft layers are Qwen3-style (Qwen3DSparkModel) with Llama's sizes and rope.
Paper settings come from deepspec/recipes.py (paper_run); override anything with --opts.
"""

from deepspec.recipes import derive_output_dirs, paper_run

project_name = "deepspec"
exp_name = "eagle3_ttt7_llama3_8b"
seed = 42

# Low / middle / high features, a subset of the parallel drafters' ids so one target cache serves all three
# algorithms.
model, train, logging, data = paper_run(
    algorithm="eagle3",
    target="meta-llama/Llama-3.1-8B-Instruct",
    target_layer_ids=[1, 15, 29],
    chat_template="llama3",
)

finalize_cfg = derive_output_dirs
