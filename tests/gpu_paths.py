"""Shared by the tests of the GPU code paths on CPU (test_fsdp_on_cpu, test_compile_on_cpu): the tiny training
config they run, several trainings in turn inside one set of gloo workers, and dynamo's compile counters."""

from pathlib import Path

import torch

from deepspec.run_config import ConfigNode, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "dspark": "config/dspark/dspark_tiny.py",
    "dflash": "config/dflash/dflash_tiny.py",
    "eagle3": "config/eagle3/eagle3_tiny.py",
}
CACHE_LAYERS = [-1, 1]  # the layers tinyrun's cache holds; Eagle3 uses a subset of them


def train_config(setup: dict, algo: str, out: Path, *extra: str):
    """8 fp32 steps of a 1-layer draft, 4 samples a step, a checkpoint every 4 steps, every step logged."""
    opts = [
        f"model.target_model_name_or_path={setup['target']}",
        f"model.target_layer_ids={[1] if algo == 'eagle3' else CACHE_LAYERS}",
        "model.num_draft_layers=1",
        "model.ttt_length=3" if algo == "eagle3" else "model.num_anchors=8",
        "train.local_batch_size=2",
        "train.global_batch_size=4",
        "train.max_train_steps=8",
        "train.precision=fp32",
        "logging.logging_steps=1",
        "logging.checkpointing_steps=4",
        f"logging.checkpoint_dir={out}",
        f"logging.tensorboard_dir={out}/tb",
    ]
    return load_config(ROOT / CONFIGS[algo], opts=opts + list(extra))


def train_in_turn(info, *, runs: list[tuple[dict, int | None]], cache_dir: str) -> None:
    """Each ``(config dict, stop_after_step)`` trained to its end (or planned stop) by the same workers."""
    from deepspec.training.trainer import Trainer

    for cfg_dict, stop in runs:
        trainer = Trainer(
            cfg=ConfigNode(cfg_dict), cache_dir=cache_dir, info=info, stop_after_step=stop, progress=False
        )
        trainer.fit()


def compiled_graphs() -> tuple[int, int]:
    """(graphs dynamo compiled, frames it converted) so far in this process: both grow on every recompile."""
    counters = torch._dynamo.utils.counters
    return int(counters["stats"]["unique_graphs"]), int(counters["frames"]["ok"])
