"""Eagle3 draft for Qwen/Qwen3-8B: one autoregressive layer, training-time test over 7 steps, step decay 0.8.

Target layer ids: Qwen3-8B, 36 layers: same depth as 4B, so the same spread ids.
Paper settings come from deepspec/recipes.py (paper_run); override anything with --opts.
"""

from deepspec.recipes import derive_output_dirs, paper_run

project_name = "deepspec"
exp_name = "eagle3_ttt7_qwen3_8b"
seed = 42

# Low / middle / high features, a subset of the parallel drafters' ids so one target cache serves all three
# algorithms.
model, train, logging, data = paper_run(
    algorithm="eagle3",
    target="Qwen/Qwen3-8B",
    target_layer_ids=[1, 17, 33],
    chat_template="qwen3",
)

finalize_cfg = derive_output_dirs
