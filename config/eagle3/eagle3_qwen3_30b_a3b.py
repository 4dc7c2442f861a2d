"""Eagle3 draft for Qwen/Qwen3-30B-A3B: one autoregressive layer, training-time test over 7 steps, step decay 0.8.

Target layer ids: Qwen3-30B-A3B, 48 MoE layers: the spread rule (5 ids from 1 to L-3 = 45) gives [1, 12, 23, 34, 45].
The draft is dense: Qwen3 layers with the target's dense intermediate_size (6144), not its experts.
Paper settings come from deepspec/recipes.py (paper_run); override anything with --opts.
"""

from deepspec.recipes import derive_output_dirs, paper_run

project_name = "deepspec"
exp_name = "eagle3_ttt7_qwen3_30b_a3b"
seed = 42

# Low / middle / high features, a subset of the parallel drafters' ids so one target cache serves all three
# algorithms.
model, train, logging, data = paper_run(
    algorithm="eagle3",
    target="Qwen/Qwen3-30B-A3B",
    target_layer_ids=[1, 23, 45],
    chat_template="qwen3",
)

finalize_cfg = derive_output_dirs
