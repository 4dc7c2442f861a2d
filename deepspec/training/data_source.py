"""Where the trainer's samples come from, checked before any work: the target cache, or the target run live.

One data contract, two producers: :class:`deepspec.training.data.CacheDataset` over a cache on disk, or
:func:`deepspec.training.online.build_online_source` (imported only for an online run).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from deepspec.cache.reader import TargetCache
from deepspec.errors import DeepSpecError
from deepspec.models import build_draft, draft_config_from_target
from deepspec.targets import family_of
from deepspec.training.data import CacheDataset, CacheLayerError, collate, layer_columns
from deepspec.training.distributed import DistInfo, has_process_group, resolve_sharding


class TrainingError(DeepSpecError, ValueError):
    """A config / data problem found before the first step; the message says what to change."""


def open_data_source(
    *, cfg, info: DistInfo, cache_dir: str | None, train_data_paths: Sequence[str] | None, target_config
) -> tuple[Dataset, Callable, str]:
    """The dataset, its collate function, and how messages name it (the cache folder, or the online files)."""
    if cache_dir is None:
        dataset, collate_fn = online_source(
            cfg=cfg, info=info, train_data_paths=list(train_data_paths or []), target_config=target_config
        )
        return dataset, collate_fn, f"the online data {list(train_data_paths or [])}"
    dataset = cache_dataset(cfg=cfg, cache_dir=cache_dir, target_config=target_config)
    return dataset, collate, f"the target cache {cache_dir}"


def online_source(*, cfg, info: DistInfo, train_data_paths: list[str], target_config) -> tuple[Dataset, Callable]:
    """The target run live; the draft's size (per rank under FSDP) goes into its memory check."""
    from deepspec.training.online import build_online_source, draft_state_bytes

    with torch.device("meta"):  # the draft's size, for the memory check before the target is loaded
        draft_bytes = draft_state_bytes(build_draft(draft_config_from_target(target_config, cfg.model)))
    if resolve_sharding(cfg.train.sharding_strategy, sharded_world=has_process_group()) != "no_shard":
        draft_bytes //= info.world_size  # FSDP splits the draft's weights and optimizer state too
    return build_online_source(cfg=cfg, train_data_paths=train_data_paths, info=info, draft_bytes=draft_bytes)


def cache_dataset(*, cfg, cache_dir: str, target_config) -> CacheDataset:
    """The cache at ``cache_dir``, checked against the config, with the columns of the config's layers."""
    m = cfg.model
    cache = TargetCache(cache_dir)
    # Only the target's config and its frozen embedding / LM head are needed, never the whole model.
    hidden_size = int(family_of(target_config).text_config(target_config).hidden_size)
    # Target by fingerprint (not folder name) and max length; layers are checked as a subset below.
    # Every sample is then checked against its crc32 the first time the loader reads it.
    cache.check_compatible(
        target_model=m.target_model_name_or_path, hidden_size=hidden_size, max_length=cfg.data.max_length
    )
    try:
        columns = layer_columns(
            cache_layer_ids=cache.layer_ids, wanted_layer_ids=m.target_layer_ids, hidden_size=hidden_size
        )
    except CacheLayerError as exc:
        raise TrainingError(str(exc)) from None
    return CacheDataset(cache, columns=columns)


def check_dataset_size(*, dataset: Dataset, source: str, global_batch_size: int) -> None:
    """Refuse data with no usable sample, or fewer samples than one global batch."""
    if len(dataset) == 0:
        raise TrainingError(
            f"{source} has no usable training sample (empty, or every line skipped: see the summary above); "
            "check the file(s), e.g. that they hold conversation JSON lines, or regenerate them"
        )
    if len(dataset) < global_batch_size:
        raise TrainingError(
            f"{source} has {len(dataset)} samples, fewer than one global batch "
            f"(train.global_batch_size={global_batch_size}); lower train.global_batch_size to at most "
            f"{len(dataset)} (a multiple of world size x train.local_batch_size) or use more data"
        )
