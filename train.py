#!/usr/bin/env python
"""Train a draft model (DSpark / DFlash / Eagle3) on a target cache.

    python train.py --config config/dspark/dspark_tiny.py --target-cache-dir /data/cache
    python train.py --config config/dspark/dspark_qwen3_4b.py --opts train.lr=3e-4 train.max_train_steps=1000

Re-running the same command resumes from ``<logging.checkpoint_dir>/step_latest``: same data
order, and on CPU the same loss curve as an uninterrupted run. One worker per visible GPU with
``--device cuda`` (default when a GPU is visible), else ``--nproc`` CPU workers (gloo). Several
nodes: set ``NNODES`` (node count), ``NODE_RANK`` (this node), ``MASTER_ADDR``, ``MASTER_PORT`` on each; or
start it with ``torchrun`` (its ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` are honoured, one worker per process).
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable, Sequence

import torch

from deepspec.cli import positive_int
from deepspec.run_config import ConfigError, ConfigNode, add_opts_argument, load_config
from deepspec.errors import cli_main
from deepspec.launch import DistInfo, launch, plan_launch
from deepspec.preflight import check_run_inputs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="config file, e.g. config/dspark/dspark_tiny.py")
    add_opts_argument(p)
    p.add_argument(
        "--target-cache-dir", default=None, help="target cache folder (default: data.target_cache_path of the config)"
    )
    p.add_argument(
        "--online",
        action="store_true",
        help="online mode: run the target live over --train-data-path files (data.online_target=True)",
    )
    p.add_argument(
        "--train-data-path",
        action="append",
        default=None,
        metavar="FILE",
        help="regenerated JSONL file for online mode (repeatable; default: data.train_data_paths)",
    )
    p.add_argument(
        "--nproc",
        type=positive_int,
        default=None,
        help="workers on this node (default: every visible GPU with --device cuda, else 1)",
    )
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="default: cuda when a GPU is visible, else cpu"
    )
    p.add_argument(
        "--stop-after-steps",
        type=positive_int,
        default=None,
        metavar="N",
        help="save and stop after optimizer step N (as if interrupted); re-run to continue",
    )
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar (metrics.jsonl is still written)")
    return p


def resolve_data_source(
    cfg, *, cache_dir: str | None = None, online: bool = False, train_data_paths: Sequence[str] | None = None
) -> dict:
    """The one place that decides where training data comes from: a target cache, or the target live.

    Returns ``{"online": False, "cache_dir": DIR}`` or ``{"online": True, "train_data_paths": [...]}``.
    Online mode needs JSONL files and no cache; giving both is an error, never a silent choice.
    """
    online = bool(online or cfg.data.get("online_target", False))
    paths = [str(p) for p in (train_data_paths or cfg.data.get("train_data_paths") or [])]
    cache = cache_dir or cfg.data.get("target_cache_path")
    if not online:
        if train_data_paths:
            raise ConfigError(
                "--train-data-path is for online mode; add --online (or data.online_target=True), "
                "or train on a cache with --target-cache-dir"
            )
        return {"online": False, "cache_dir": resolve_cache_dir(cfg, cache_dir)}
    if cache:
        raise ConfigError(
            f"online mode (data.online_target=True / --online) does not read a target cache, but "
            f"{'--target-cache-dir' if cache_dir else 'data.target_cache_path'}={cache} is set; "
            "drop one of the two: the cache for offline training, or online mode"
        )
    if not paths:
        raise ConfigError(
            "online mode needs conversations: pass --train-data-path FILE (repeatable) or set "
            "data.train_data_paths=[...] (regenerated JSONL files)"
        )
    return {"online": True, "train_data_paths": paths}


def resolve_cache_dir(cfg, cache_dir: str | None) -> str:
    path = cache_dir or cfg.data.get("target_cache_path")
    if not path:
        raise ConfigError(
            "no target cache: pass --target-cache-dir DIR or set data.target_cache_path "
            "(build one with scripts/data/prepare_data.sh)"
        )
    return str(path)


def check_outputs_apart_from_inputs(cfg, source: dict) -> None:
    """The checkpoint and tensorboard folders neither are, hold nor lie in what training reads (the cache, the
    data files, a local target), nor lie in an owned folder of another kind (a target, a cache, an eval run)."""
    import os

    from deepspec.errors import check_outputs_apart

    read = [source.get("cache_dir"), cfg.model.target_model_name_or_path, *(source.get("train_data_paths") or [])]
    inputs = [p for p in read if p and os.path.exists(os.path.expanduser(str(p)))]
    for key in ("checkpoint_dir", "tensorboard_dir"):
        folder = cfg.logging.get(key)
        if folder:
            check_outputs_apart(
                inputs=inputs, output_dirs=[folder], what=f"logging.{key}", may_write_into=("checkpoint root",)
            )


def _worker(
    info: DistInfo,
    *,
    cfg_dict: dict,
    cache_dir: str | None,
    train_data_paths: list[str] | None,
    stop_after_step: int | None,
    progress: bool,
    on_step_end: Callable[[int], None] | None = None,
) -> dict:
    from deepspec.training.trainer import Trainer

    cfg = ConfigNode(cfg_dict)
    trainer = Trainer(
        cfg=cfg,
        cache_dir=cache_dir,
        info=info,
        train_data_paths=train_data_paths,
        on_step_end=on_step_end,
        stop_after_step=stop_after_step,
        progress=progress,
    )
    return trainer.fit()


def run_training(
    cfg,
    *,
    cache_dir: str | None = None,
    device: str | None = None,
    nproc: int | None = None,
    stop_after_step: int | None = None,
    progress: bool = True,
    on_step_end: Callable[[int], None] | None = None,
    online: bool = False,
    train_data_paths: Sequence[str] | None = None,
) -> dict | None:
    """Train (or resume) ``cfg``; returns the last logged metrics record of rank 0 for in-process runs."""
    from deepspec.training.trainer import check_trainer_name

    check_trainer_name(cfg)  # a train.trainer_cls that disagrees: fail before spawning anything
    source = resolve_data_source(cfg, cache_dir=cache_dir, online=online, train_data_paths=train_data_paths)
    check_outputs_apart_from_inputs(cfg, source)
    check_run_inputs(  # the target the workers load and the folders they write, before any of them starts
        target=(cfg.model.target_model_name_or_path, "model.target_model_name_or_path"),
        outputs={"checkpoint folder": cfg.logging.checkpoint_dir, "tensorboard folder": cfg.logging.tensorboard_dir},
    )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    plan = plan_launch(device_type=device, nproc=nproc)
    fn = functools.partial(
        _worker,
        cfg_dict=cfg.to_dict(),
        cache_dir=source.get("cache_dir"),
        train_data_paths=source.get("train_data_paths"),
        stop_after_step=stop_after_step,
        progress=progress,
        on_step_end=on_step_end,
    )
    return launch(fn, plan)


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_config(args.config, opts=args.opts)
    run_training(
        cfg,
        cache_dir=args.target_cache_dir,
        device=args.device,
        nproc=args.nproc,
        stop_after_step=args.stop_after_steps,
        progress=not args.no_progress,
        online=args.online,
        train_data_paths=args.train_data_path,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
