"""Eagle3 draft for google/gemma-4-12B-it: one autoregressive layer, training-time test over 7 steps, step decay 0.8.

Target layer ids: Gemma-4-12B, 48 layers: ids evenly spread from 1 to L-3 = 45 (step 11).
Paper settings come from deepspec/recipes.py (paper_run); override anything with --opts.
"""

from deepspec.recipes import derive_output_dirs, paper_run

project_name = "deepspec"
exp_name = "eagle3_ttt7_gemma4_12b"
seed = 42

# Low / middle / high features, a subset of the parallel drafters' ids so one target cache serves all three
# algorithms.
model, train, logging, data = paper_run(
    algorithm="eagle3",
    target="google/gemma-4-12B-it",
    target_layer_ids=[1, 23, 45],
    chat_template="gemma4",
)

finalize_cfg = derive_output_dirs
