"""Eagle3 draft for Qwen/Qwen3-14B: one autoregressive layer, training-time test over 7 steps, step decay 0.8.

Target layer ids: Qwen3-14B, 40 layers: ids evenly spread from 1 to L-3 = 37 (step 9).
Paper settings come from deepspec/recipes.py (paper_run); override anything with --opts.
"""

from deepspec.recipes import derive_output_dirs, paper_run

project_name = "deepspec"
exp_name = "eagle3_ttt7_qwen3_14b"
seed = 42

# Low / middle / high features, a subset of the parallel drafters' ids so one target cache serves all three
# algorithms.
model, train, logging, data = paper_run(
    algorithm="eagle3",
    target="Qwen/Qwen3-14B",
    target_layer_ids=[1, 19, 37],
    chat_template="qwen3",
)

finalize_cfg = derive_output_dirs
