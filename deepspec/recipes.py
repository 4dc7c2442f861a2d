"""The paper's training recipes, in one place, for the config files to build on.

Every value here is a DSpark-paper setting (block 7, 5 draft layers, 512
anchors, Markov rank 256, loss weights, lr 6e-4, warmup 4%, global batch 512,
10 epochs, bf16, max length 4096). The config files under ``config/`` name the
target and what differs per algorithm; anything can still be overridden with
``--opts``.

Target layer ids: we spread five ids evenly from layer 1 to layer L-3
(``deepspec.layer_ids.spread_layer_ids``): early enough to see token identity, late enough to see
the target's next-token plan, and never the last layer (whose output is the
post-norm state we store separately). For Qwen3-4B (36 layers) this gives the
paper's [1, 9, 17, 25, 33].
"""

from __future__ import annotations

import os

from deepspec.algorithms import get_algorithm
from deepspec.targets import family_by_name

# The families' mask tokens, for the config files (the values live in deepspec.targets.FAMILIES).
QWEN3_MASK_TOKEN_ID = family_by_name("qwen3").mask_token_id
GEMMA4_MASK_TOKEN_ID = family_by_name("gemma4").mask_token_id
LLAMA3_MASK_TOKEN_ID = family_by_name("llama3").mask_token_id
QWEN3_MOE_MASK_TOKEN_ID = family_by_name("qwen3_moe").mask_token_id
QWEN3_5_MASK_TOKEN_ID = family_by_name("qwen3_5").mask_token_id
TARGET_NUM_LAYERS = {  # decoder depth of the shipped configs' targets (their config.json num_hidden_layers)
    "Qwen/Qwen3-4B": 36,
    "Qwen/Qwen3-8B": 36,
    "Qwen/Qwen3-14B": 40,
    "google/gemma-4-12B-it": 48,
    "meta-llama/Llama-3.1-8B-Instruct": 32,
    "Qwen/Qwen3-30B-A3B": 48,
    "Qwen/Qwen3.5-9B": 32,  # Gated DeltaNet layers with full attention at every 4th (3, 7, ..., 31)
}


def default_tiny_target_dir() -> str:
    """Where the locally built tiny target lives (env ``DEEPSPEC_TINY_TARGET`` wins; the rule is tiny_target's)."""
    from deepspec.tiny_target import default_tiny_target_dir as rule

    return str(rule())


def model_recipe(algorithm: str, *, target: str, target_layer_ids: list[int], mask_token_id: int | None = None) -> dict:
    """The paper's ``model`` section for ``algorithm`` (its registry entry's recipe, :mod:`deepspec.algorithms`).

    ``mask_token_id`` (block drafters) defaults to the target family's mask token when the draft is built.
    """
    return get_algorithm(algorithm).recipe(
        target=target, target_layer_ids=target_layer_ids, mask_token_id=mask_token_id
    )


def paper_run(
    *, algorithm: str, target: str, target_layer_ids: list[int], chat_template: str, mask_token_id: int | None = None
) -> tuple[dict, dict, dict, dict]:
    """A config file's ``model, train, logging, data`` sections: the paper recipe of ``algorithm`` for ``target``."""
    model = model_recipe(algorithm, target=target, target_layer_ids=target_layer_ids, mask_token_id=mask_token_id)
    return model, paper_train(), paper_logging(), paper_data(chat_template=chat_template)


def paper_train(*, trainer_cls: str | None = None) -> dict:
    """``trainer_cls`` is optional: the trainer follows from ``model.algorithm`` (a value given must agree)."""
    return dict(
        trainer_cls=trainer_cls,
        lr=6.0e-4,
        warmup_ratio=0.04,
        weight_decay=0.0,
        adam_betas=[0.9, 0.95],
        precision="bf16",
        local_batch_size=1,
        global_batch_size=512,
        num_train_epochs=10,
        max_train_steps=None,
        max_grad_norm=1.0,
        sharding_strategy="no_shard",  # DDP; full_shard / shard_grad_op = FSDP
        target_sharding=False,  # online mode: True splits the frozen target over the ranks (FSDP2)
        torch_compile=False,
    )


def paper_logging() -> dict:
    return dict(
        logging_steps=10,
        checkpointing_steps=3000,
        checkpoint_dir=None,  # derived by finalize_cfg
        tensorboard_dir=None,  # derived by finalize_cfg
    )


def paper_data(*, chat_template: str) -> dict:
    return dict(
        target_cache_path=None,
        online_target=False,  # True: run the target live over data.train_data_paths (no cache)
        train_data_paths=[],
        chat_template=chat_template,
        max_length=4096,
        min_loss_tokens=14,
        num_workers=4,
    )


def tiny_overrides(model: dict, train: dict, logging: dict, data: dict) -> None:
    """Shrink a paper recipe so it trains in minutes on 2 CPU cores (same relative shape)."""
    model["target_model_name_or_path"] = default_tiny_target_dir()
    if "num_anchors" in model:
        model["num_anchors"] = 32
        model["markov_rank"] = min(model["markov_rank"], 64)
    # precision auto: AVX2-only CPUs emulate bf16 at 7-16x the cost of fp32 (deepspec.precision).
    train.update(
        lr=2.0e-3, local_batch_size=4, global_batch_size=16, num_train_epochs=1, max_train_steps=200, precision="auto"
    )
    logging.update(logging_steps=10, checkpointing_steps=100)
    data.update(max_length=512, min_loss_tokens=4, num_workers=0)


def derive_output_dirs(cfg):
    """Default ``finalize_cfg``: checkpoints and tensorboard under ``~/<kind>/<project>/<exp>``."""
    for key, base in (("checkpoint_dir", "~/checkpoints"), ("tensorboard_dir", "~/tensorboard")):
        if not cfg["logging"].get(key):
            cfg["logging"][key] = os.path.join(os.path.expanduser(base), str(cfg["project_name"]), str(cfg["exp_name"]))
    return cfg
