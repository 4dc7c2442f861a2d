"""Build the target cache: tokenize conversations, run the target, write shards.

One worker per visible GPU (or ``nproc`` CPU workers); sample ``i`` belongs to
rank ``i % world``, so a resumed build with the same inputs finds the same
assignment. Each worker sorts its samples by length (less padding), runs one
target forward per batch capturing ``model.target_layer_ids`` and the post-norm
last hidden state, moves them to the CPU and hands them to the cache writer's
background thread. Rank 0 finalizes after every worker has closed.

Before any of that, :func:`check_build_request` refuses what cannot work (missing data, a cache folder
that holds or sits inside the data or the target, ``--overwrite`` of a folder that is not a cache) with
light imports only, so a bad command fails in a fraction of a second instead of after loading torch.
The identity of the build (target fingerprint, layers, max length, data files' sha256, settings) is
compared with whatever the folder already holds: a resume continues the same build, a complete cache
of the same build is "nothing to do", anything else is refused with what differs.
"""

from __future__ import annotations

import hashlib
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from deepspec.data.chat import tokenize_conversation
from deepspec.data.conversations import DataError, SkipReport, list_input_files, read_conversations
from deepspec.errors import DeepSpecError, check_outputs_apart
from deepspec.fsio import free_disk

# torch, tqdm and the cache modules (numpy, and torch for the writer and reader) are imported where used:
# a refused command then answers in a fraction of a second.


@dataclass
class TokenizedSample:
    source_index: int
    id: str
    input_ids: list[int]
    loss_mask: list[int]


@dataclass
class BuildPlan:
    samples: list[TokenizedSample]
    report: SkipReport
    truncated: int = 0
    source_files: list[str] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(len(s.input_ids) for s in self.samples)


def tokenize_training_data(
    paths: Sequence[str | os.PathLike],
    *,
    tokenizer,
    chat_template: str,
    max_length: int,
    min_loss_tokens: int,
    long_samples: str = "truncate",
    strict: bool = False,
) -> BuildPlan:
    """Read, validate and tokenize every conversation; bad or useless ones are counted, not fatal."""
    from tqdm import tqdm

    report = SkipReport()
    samples, truncated = [], 0
    conversations = read_conversations(list(paths), strict=strict, report=report)
    for conv in tqdm(conversations, desc="tokenize", unit="conv", leave=False):
        try:
            tok = tokenize_conversation(tokenizer, conv.messages, chat_template=chat_template, max_length=max_length)
            if tok.truncated:
                if long_samples == "skip" or strict:
                    raise DataError(
                        f"longer than data.max_length={max_length} tokens", reason="too_long", where=conv.id
                    )
                truncated += 1
            if tok.num_loss_tokens < min_loss_tokens:
                raise DataError(
                    f"only {tok.num_loss_tokens} supervised tokens (< --min-loss-tokens {min_loss_tokens})",
                    reason="few_loss_tokens",
                    where=conv.id,
                )
        except DataError as err:
            if strict:
                raise
            report.kept -= 1  # read fine, but unusable for training
            report.add(err)
            continue
        # Source ordinals number the kept samples densely: stable for the same inputs, so resume works.
        samples.append(TokenizedSample(len(samples), conv.id, tok.input_ids, tok.loss_mask))
    return BuildPlan(samples=samples, report=report, truncated=truncated, source_files=[str(p) for p in paths])


class CacheBuildError(DeepSpecError, ValueError):
    """The cache build cannot run as asked; the message says what to change."""


def report_plan(plan: BuildPlan, *, max_length: int, min_loss_knob: str, log: Callable[[str], None]) -> None:
    """Say what the reader kept and skipped (reasons, first problems as file:line), and refuse data with no usable
    sample, naming an empty input as such. The cache build and online training both report through here."""
    log(plan.report.summary())
    if plan.truncated:
        log(f"  {plan.truncated} conversations truncated to data.max_length={max_length} tokens")
    if plan.samples:
        return
    files = ", ".join(plan.source_files)
    if plan.report.kept + plan.report.skipped == 0:
        raise CacheBuildError(
            f"no training data: {files} holds no conversation (empty, or blank lines only); pass the regenerated "
            "JSONL file(s), one conversation per line"
        )
    raise CacheBuildError(
        f"no usable training sample in {files}: all {plan.report.skipped} conversations were skipped (reasons and "
        f"the first lines above, as file:line); fix the data, or lower {min_loss_knob} if they were too short"
    )


def check_disk_space(*, output_dir: Path, needed_bytes: int, ignore: bool) -> str:
    from deepspec.cache.format import format_bytes

    probe, free = free_disk(output_dir)
    message = f"estimated cache size {format_bytes(needed_bytes)}, free on {probe}: {format_bytes(free)}"
    if needed_bytes > free and not ignore:
        raise CacheBuildError(
            f"not enough disk space: {message}. Free space, pick another --output-dir, reduce the "
            "data, or pass --ignore-disk-space to try anyway."
        )
    return message


def _sha256(path: Path, chunk: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    buf = bytearray(chunk)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            digest.update(memoryview(buf)[:n])
    return digest.hexdigest()


def describe_source_files(paths: Sequence[str | os.PathLike]) -> list[dict]:
    """Every data file the build reads (folders expanded as the reader does): path, size, sha256."""
    return [
        {"path": str(p.resolve()), "size": p.stat().st_size, "sha256": _sha256(p)}
        for p in list_input_files(list(paths))
    ]


def data_identity(
    *,
    train_data_paths: Sequence[str | os.PathLike],
    max_length: int,
    chat_template: str,
    min_loss_tokens: int,
    long_samples: str = "truncate",
) -> dict:
    """What decides the sample list read from conversation files: the files (path, size, sha256) and the
    settings that tokenize and filter them. A cache records it in its manifest, a training run in its
    checkpoints (:func:`deepspec.cache.format.data_identity_of` reads it back); both compare with
    :func:`deepspec.cache.format.check_identity`."""
    return {
        "source_files": describe_source_files(train_data_paths),
        "max_length": int(max_length),
        "extra": {
            "max_length": max_length,
            "chat_template": chat_template,
            "min_loss_tokens": min_loss_tokens,
            "long_samples": long_samples,
        },
    }


def check_build_request(
    *,
    train_data_paths: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    target: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Refuse a build that cannot work or would harm the user's files; returns the data files to read.

    Cheap (no torch): the data files exist, the cache folder neither equals, holds nor sits inside the
    data or the target folder, and ``overwrite`` only ever replaces a folder of cache files.
    """
    from deepspec.cache.format import is_cache_file

    if not train_data_paths:
        raise CacheBuildError("no training data: pass --train-data-path FILE (or set data.train_data_paths)")
    files = list_input_files(list(train_data_paths))
    output_dir = Path(output_dir)
    inputs = list(train_data_paths) + files
    if target is not None and Path(target).expanduser().is_dir():
        inputs.append(Path(target).expanduser())  # a cache inside the model folder could be --overwrite'n away
    check_outputs_apart(inputs=inputs, output_dirs=[output_dir], what="cache output", may_write_into=("target cache",))
    if output_dir.exists() and not output_dir.is_dir():
        raise CacheBuildError(f"--output-dir {output_dir} is a file; the cache is a folder: choose a folder path")
    if overwrite and output_dir.is_dir():
        foreign = sorted(p.name for p in output_dir.iterdir() if not is_cache_file(p.name))
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise CacheBuildError(
                f"--overwrite would delete {output_dir}, but it holds files that are not part of a "
                f"target cache ({shown}); move them away or choose another --output-dir"
            )
    return files


def remove_cache_files(output_dir: Path) -> int:
    """--overwrite: delete the files of an old cache or partial build (nothing else is there: checked above)."""
    from deepspec.cache.format import MANIFEST_NAME, is_cache_file
    from deepspec.fsio import fsync_dir

    if not output_dir.is_dir():
        return 0
    # The manifest first: if we are killed midway, the folder is an incomplete build, never a half-old cache.
    (output_dir / MANIFEST_NAME).unlink(missing_ok=True)
    fsync_dir(output_dir)
    removed = 0
    for p in output_dir.iterdir():
        if is_cache_file(p.name):
            p.unlink()
            removed += 1
    fsync_dir(output_dir)
    return removed


@dataclass
class WorkerArgs:
    output_dir: str
    target: str
    layer_ids: list[int]
    hidden_size: int
    samples: list[TokenizedSample]
    batch_size: int
    max_shard_bytes: int
    device: str
    dtype: str
    source_files: list[dict]
    extra: dict
    target_fingerprint: str | None = None
    max_length: int | None = None
    fail_after_batches: int | None = None  # tests: simulate a crash mid-build


def run_worker(rank: int, world: int, args: WorkerArgs) -> int:
    """Capture and write this rank's samples; returns how many were written now."""
    import torch
    from tqdm import tqdm

    from deepspec.cache.format import committed_source_indices
    from deepspec.cache.writer import TargetCacheWriter
    from deepspec.data.capture import capture_states
    from deepspec.targets import load_target

    device = args.device
    if device == "cuda":
        device = f"cuda:{rank % torch.cuda.device_count()}"
        torch.cuda.set_device(device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    committed = committed_source_indices(args.output_dir)
    mine = [s for s in args.samples if s.source_index % world == rank and s.source_index not in committed]
    mine.sort(key=lambda s: len(s.input_ids), reverse=True)  # long first: memory errors show up early
    target = load_target(args.target, dtype=dtype, device=device, with_tokenizer=False)
    written = 0
    with TargetCacheWriter(
        args.output_dir,
        rank=rank,
        target_model=args.target,
        layer_ids=args.layer_ids,
        hidden_size=args.hidden_size,
        max_shard_bytes=args.max_shard_bytes,
        source_files=args.source_files,
        extra=args.extra,
        target_fingerprint=args.target_fingerprint,
        max_length=args.max_length,
    ) as writer:
        batches = [mine[i : i + args.batch_size] for i in range(0, len(mine), args.batch_size)]
        for step, batch in enumerate(
            tqdm(batches, desc=f"capture[rank {rank}]", unit="batch", disable=rank != 0 and world > 1)
        ):
            if args.fail_after_batches is not None and step >= args.fail_after_batches:
                raise RuntimeError("simulated crash (fail_after_batches)")
            captured = capture_states(target, [s.input_ids for s in batch], layer_ids=args.layer_ids, device=device)
            for s, (hidden, last) in zip(batch, captured):
                writer.add(
                    source_index=s.source_index,
                    input_ids=torch.tensor(s.input_ids, dtype=torch.int32),
                    loss_mask=torch.tensor(s.loss_mask, dtype=torch.uint8),
                    hidden_states=hidden,
                    last_hidden_state=last,
                )
                written += 1
    return written


def check_build_numbers(*, batch_size: int, max_shard_bytes: int, min_loss_tokens: int, nproc: int | None) -> None:
    """Refuse sizes and counts that cannot work (before any file is read)."""
    if batch_size < 1 or max_shard_bytes < 1 or min_loss_tokens < 0 or (nproc is not None and nproc < 1):
        raise CacheBuildError(
            f"batch_size ({batch_size}), max_shard_bytes ({max_shard_bytes}) and nproc ({nproc}) "
            f"must be >= 1 and min_loss_tokens ({min_loss_tokens}) >= 0"
        )


def build_identity(*, cfg, train_data_paths: Sequence[str], min_loss_tokens: int, long_samples: str) -> dict:
    """What this build is: the target (name, fingerprint), its checked layers and hidden size, the data and
    settings (:func:`data_identity`). Compared with what the output folder holds, and handed to the writers."""
    from deepspec.targets import family_of, load_target_config, validate_layer_ids
    from deepspec.target_files import target_fingerprint

    target_path = cfg.model.target_model_name_or_path
    hf_config = load_target_config(target_path)
    text_config = family_of(hf_config).text_config(hf_config)
    layer_ids = validate_layer_ids(cfg.model.target_layer_ids, num_layers=text_config.num_hidden_layers)
    data = data_identity(
        train_data_paths=train_data_paths,
        max_length=cfg.data.max_length,
        chat_template=cfg.data.chat_template,
        min_loss_tokens=min_loss_tokens,
        long_samples=long_samples,
    )
    return {
        "target_model": str(target_path),
        "target_fingerprint": target_fingerprint(target_path, download=True),
        "layer_ids": layer_ids,
        "hidden_size": int(text_config.hidden_size),
        **data,
    }


def prepare_output_dir(*, output_dir: Path, identity: dict, overwrite: bool, log: Callable[[str], None]) -> bool:
    """``overwrite``: delete the previous cache's files. Otherwise compare the folder with this build (another
    build is refused); True when it already holds this complete cache: nothing to do."""
    from deepspec.cache.format import check_build_folder

    if overwrite:
        removed = remove_cache_files(output_dir)
        if removed:
            log(f"--overwrite: removed {removed} files of the previous cache in {output_dir}")
        return False
    complete = check_build_folder(output_dir, identity) == "complete"
    if complete:
        log(
            f"{output_dir} is already a complete target cache of this target, layers, data and settings; nothing "
            "to do (pass --overwrite to rebuild it)"
        )
    return complete


def plan_samples(
    *,
    cfg,
    train_data_paths: Sequence[str],
    min_loss_tokens: int,
    long_samples: str,
    strict: bool,
    log: Callable[[str], None],
) -> BuildPlan:
    """Tokenize the data with the target's tokenizer; say what was kept and skipped, refuse data with no sample."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.model.target_model_name_or_path)
    plan = tokenize_training_data(
        train_data_paths,
        tokenizer=tokenizer,
        chat_template=cfg.data.chat_template,
        max_length=cfg.data.max_length,
        min_loss_tokens=min_loss_tokens,
        long_samples=long_samples,
        strict=strict,
    )
    report_plan(plan, max_length=cfg.data.max_length, min_loss_knob="--min-loss-tokens", log=log)
    return plan


def size_line(*, plan: BuildPlan, identity: dict, output_dir: Path, ignore_disk_space: bool) -> str:
    """Samples, tokens, estimated cache size and free disk; refuses a cache that does not fit."""
    from deepspec.cache.format import estimate_cache_bytes

    needed = estimate_cache_bytes(
        num_samples=len(plan.samples),
        avg_tokens=plan.num_tokens / len(plan.samples),
        num_layers=len(identity["layer_ids"]),
        hidden_size=identity["hidden_size"],
    )
    disk = check_disk_space(output_dir=output_dir, needed_bytes=needed, ignore=ignore_disk_space)
    return f"{len(plan.samples)} samples, {plan.num_tokens} tokens; {disk}"


def launch_capture(
    *,
    plan: BuildPlan,
    identity: dict,
    output_dir: Path,
    batch_size: int,
    max_shard_bytes: int,
    device: str | None,
    nproc: int | None,
    fail_after_batches: int | None,
) -> None:
    """Run :func:`run_worker` on ``nproc`` workers (default: one per GPU, or one on the CPU) and wait for them."""
    import torch

    from deepspec.launch import LaunchPlan, launch
    from deepspec.precision import target_precision

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world = nproc or (torch.cuda.device_count() if device == "cuda" else 1)
    args = WorkerArgs(
        output_dir=str(output_dir),
        target=identity["target_model"],
        layer_ids=identity["layer_ids"],
        hidden_size=identity["hidden_size"],
        samples=plan.samples,
        batch_size=batch_size,
        max_shard_bytes=max_shard_bytes,
        device=device,
        dtype=target_precision(device),
        source_files=identity["source_files"],
        extra=identity["extra"],
        target_fingerprint=identity["target_fingerprint"],
        max_length=identity["max_length"],
        fail_after_batches=fail_after_batches,
    )
    # Workers write disjoint parts and share no collectives: no process group. run_worker places its
    # own device from the rank (an explicit --nproc may exceed the GPUs: ranks then share them).
    workers = LaunchPlan(nproc=world, node_rank=0, num_nodes=1, master_addr=None, master_port=None, device_type="cpu")
    launch(functools.partial(_launched_worker, args=args), workers, process_group=False)


def build_target_cache(
    *,
    cfg,
    train_data_paths: Sequence[str],
    output_dir: str | os.PathLike,
    min_loss_tokens: int,
    max_shard_bytes: int,
    batch_size: int,
    nproc: int | None = None,
    device: str | None = None,
    strict: bool = False,
    long_samples: str = "truncate",
    ignore_disk_space: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    fail_after_batches: int | None = None,
) -> dict:
    """The whole stage; returns the manifest. Re-running an interrupted build resumes it.

    ``overwrite`` deletes a previous cache (or partial build) in ``output_dir`` first; without it, a folder
    holding a build of another target, layer set, max length, data or settings is refused.
    """
    output_dir = Path(output_dir)
    target_path = cfg.model.target_model_name_or_path
    check_build_numbers(
        batch_size=batch_size, max_shard_bytes=max_shard_bytes, min_loss_tokens=min_loss_tokens, nproc=nproc
    )
    check_build_request(
        train_data_paths=train_data_paths, output_dir=output_dir, target=target_path, overwrite=overwrite
    )
    from deepspec.cache.reader import TargetCache
    from deepspec.cache.writer import finalize_target_cache

    identity = build_identity(
        cfg=cfg, train_data_paths=train_data_paths, min_loss_tokens=min_loss_tokens, long_samples=long_samples
    )
    if prepare_output_dir(output_dir=output_dir, identity=identity, overwrite=overwrite, log=log):
        return TargetCache(output_dir).manifest
    plan = plan_samples(
        cfg=cfg,
        train_data_paths=train_data_paths,
        min_loss_tokens=min_loss_tokens,
        long_samples=long_samples,
        strict=strict,
        log=log,
    )
    log(size_line(plan=plan, identity=identity, output_dir=output_dir, ignore_disk_space=ignore_disk_space))
    launch_capture(
        plan=plan,
        identity=identity,
        output_dir=output_dir,
        batch_size=batch_size,
        max_shard_bytes=max_shard_bytes,
        device=device,
        nproc=nproc,
        fail_after_batches=fail_after_batches,
    )
    manifest = finalize_target_cache(
        output_dir, expected_num_samples=len(plan.samples), source_files=identity["source_files"]
    )
    log(f"target cache complete: {output_dir} ({manifest.get('num_samples', len(plan.samples))} samples)")
    return manifest


def _launched_worker(info, *, args: WorkerArgs) -> None:
    run_worker(info.rank, info.world_size, args)
