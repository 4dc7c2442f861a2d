"""Training data: the target cache as a dataset, a deterministic resumable step sampler, right-padding collate.

Order. Epoch e is one permutation of the cache drawn from ``seed + e``; the tail that does not
fill a whole global batch is dropped. Optimizer step s of epoch e consumes permutation entries
``[s*GB, (s+1)*GB)`` (GB = global batch); within it, micro-batch m of rank r takes the slice
``[(m*world + r)*local, ... + local)``. The position is therefore just ``(epoch, step_in_epoch)``:
resuming needs no iterator state, and the order does not depend on DataLoader workers.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from deepspec.cache.format import data_identity_of
from deepspec.cache.reader import TargetCache
from deepspec.errors import DeepSpecError


class CacheLayerError(DeepSpecError, ValueError):
    """The cache cannot feed this config; the message says which numbers to change."""


def layer_columns(
    *, cache_layer_ids: Sequence[int], wanted_layer_ids: Sequence[int], hidden_size: int
) -> torch.Tensor | None:
    """Column indices of ``wanted`` layers inside the cache's [T, n*H] hidden states (None = all, in order).

    One cache serves every algorithm, so a config may capture a subset of the cache's layers.
    """
    cache_ids, wanted = [int(i) for i in cache_layer_ids], [int(i) for i in wanted_layer_ids]
    missing = [i for i in wanted if i not in cache_ids]
    if missing:
        raise CacheLayerError(
            f"model.target_layer_ids={wanted} needs layers {missing}, but the target cache holds only "
            f"layers {cache_ids}; set model.target_layer_ids to a subset of {cache_ids} or rebuild the "
            "cache with those layers"
        )
    if wanted == cache_ids:
        return None
    cols = [torch.arange(cache_ids.index(i) * hidden_size, (cache_ids.index(i) + 1) * hidden_size) for i in wanted]
    return torch.cat(cols)


class CacheDataset(Dataset):
    """``TargetCache`` samples with the hidden-state columns of the config's layers only."""

    def __init__(self, cache: TargetCache, *, columns: torch.Tensor | None):
        self.cache = cache
        self.columns = columns

    @property
    def identity(self) -> dict:
        """The data files and settings the cache was built from (kept with checkpoints, checked on resume)."""
        return data_identity_of(self.cache.manifest)

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int) -> dict:
        s = self.cache[i]
        hid = s["hidden_states"] if self.columns is None else s["hidden_states"].index_select(1, self.columns)
        return {
            "input_ids": s["input_ids"],
            "loss_mask": s["loss_mask"],
            "hidden_states": hid,
            "last_hidden_state": s["last_hidden_state"],
        }


def collate(samples: list[dict]) -> dict:
    """Right-pad to the batch's longest sample (padding: token 0, loss mask off, zero states).

    ``attention_mask`` [B, T] marks the real tokens (Eagle3 needs each row's last valid token).
    """
    T = max(int(s["input_ids"].shape[0]) for s in samples)
    B = len(samples)
    ex = samples[0]
    hid, last = ex["hidden_states"], ex["last_hidden_state"]  # on the CPU from a cache, maybe a GPU online
    out = {
        "input_ids": torch.zeros(B, T, dtype=torch.long),
        "loss_mask": torch.zeros(B, T, dtype=torch.bool),
        "hidden_states": torch.zeros(B, T, hid.shape[-1], dtype=hid.dtype, device=hid.device),
        "last_hidden_state": torch.zeros(B, T, last.shape[-1], dtype=last.dtype, device=last.device),
    }
    for b, s in enumerate(samples):
        n = int(s["input_ids"].shape[0])
        for key in out:
            out[key][b, :n] = s[key]
    out["attention_mask"] = (
        torch.arange(T)[None, :] < torch.tensor([int(s["input_ids"].shape[0]) for s in samples])[:, None]
    )
    out["num_tokens"] = sum(int(s["input_ids"].shape[0]) for s in samples)
    return out


class StepSampler(Sampler[list[int]]):
    """Yields this rank's micro-batches (lists of indices) from ``(epoch, start_step)`` to the epoch's end."""

    def __init__(
        self, *, num_samples: int, seed: int, rank: int, world_size: int, local_batch_size: int, grad_accum: int
    ):
        self.num_samples, self.seed = num_samples, seed
        self.rank, self.world, self.local, self.accum = rank, world_size, local_batch_size, grad_accum
        self.global_batch = world_size * local_batch_size * grad_accum
        self.steps_per_epoch = num_samples // self.global_batch
        self.epoch, self.start_step = 0, 0

    def set_position(self, *, epoch: int, step_in_epoch: int) -> None:
        self.epoch, self.start_step = epoch, step_in_epoch

    def permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + epoch)  # own generator: global RNG use cannot shift it
        return torch.randperm(self.num_samples, generator=g)

    def __iter__(self) -> Iterator[list[int]]:
        perm = self.permutation(self.epoch)
        for step in range(self.start_step, self.steps_per_epoch):
            base = step * self.global_batch
            for m in range(self.accum):
                start = base + (m * self.world + self.rank) * self.local
                yield perm[start : start + self.local].tolist()

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accum


def _unwrap_worker_error(exc: DeepSpecError) -> DeepSpecError:
    """A project error raised in a DataLoader worker, as the worker raised it.

    torch re-raises worker errors as ``type(exc)("Caught ... Original Traceback ...: <message>")``; the
    entry point would print that traceback text. Keep the original message, which says what to do.
    """
    text = str(exc)
    if "Original Traceback" not in text:
        return exc
    cls = type(exc)
    for prefix in (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: "):
        at = text.rfind("\n" + prefix)
        if at >= 0:
            try:
                return cls(text[at + 1 + len(prefix) :].strip())
            except Exception:  # noqa: BLE001 - a class with another signature keeps torch's text
                return exc
    return exc


class _Loader(DataLoader):
    """DataLoader whose iterators raise worker-side project errors with their own message."""

    def __iter__(self):
        it = super().__iter__()
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except DeepSpecError as exc:
                clean = _unwrap_worker_error(exc)
                if clean is exc:
                    raise
                raise clean from None
            yield batch


def build_loader(
    dataset: Dataset, sampler: StepSampler, *, num_workers: int, pin_memory: bool, collate_fn=collate
) -> DataLoader:
    return _Loader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
