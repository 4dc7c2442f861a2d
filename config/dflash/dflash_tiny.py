"""DFlash on the tiny local target (CPU, minutes): the paper recipe, shrunk.

The target is the folder built by scripts/data/build_tiny_target.py (env
DEEPSPEC_TINY_TARGET, else ~/.cache/deepspec/tiny_target). Its 4 decoder layers
allow ids -1..2; we capture layers 0, 1 and 2.
"""

from deepspec.recipes import default_tiny_target_dir, derive_output_dirs, paper_run, tiny_overrides

project_name = "deepspec_tiny"
exp_name = "dflash_block7_tiny"
seed = 42

# mask token <|mask|> in the tiny tokenizer; the tiny tokenizer is Qwen-style
model, train, logging, data = paper_run(
    algorithm="dflash",
    target=default_tiny_target_dir(),
    target_layer_ids=[0, 1, 2],
    chat_template="qwen3",
    mask_token_id=3,
)
tiny_overrides(model, train, logging, data)

finalize_cfg = derive_output_dirs
