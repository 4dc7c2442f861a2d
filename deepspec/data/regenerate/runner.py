"""The top level: :func:`regenerate` picks a backend and drives it over the input file."""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from pathlib import Path
from typing import Sequence

from deepspec.data.conversations import DataError, list_input_files
from deepspec.data.regenerate.common import (
    ConversationJob,
    JsonlAppender,
    Log,
    OutputExistsError,
    OutputScan,
    RegenerationError,
    RegenerationSummary,
    SamplingSettings,
    TurnResult,
    check_error_file,
    clear_stale_errors,
    count_lines,
    error_path_for,
    iter_jobs,
    repair_tail,
    scan_output,
)
from deepspec.data.regenerate.identity import RECORD_KEY, check_resume_model, model_identity
from deepspec.hub import spelled_as_path
from deepspec.data.regenerate.drivers import run_batched, run_concurrent
from deepspec.data.regenerate.hf_backend import HFBackend
from deepspec.data.regenerate.openai_backend import OpenAIBackend
from deepspec.data.regenerate.vllm_backend import VLLMBackend, cuda_device_ids, run_data_parallel
from deepspec.errors import check_outputs_apart


def default_backend() -> str:
    """``vllm`` when it can be imported here, else ``hf``."""
    return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"


def regenerate(
    *,
    input_path,
    output_path,
    backend: str,
    model: str | None,
    sampling: SamplingSettings | None = None,
    num_samples: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    batch_size: int | None = None,
    server_addresses: Sequence[str] = (),
    concurrency: int | None = None,
    request_timeout: float = 600.0,
    max_retries: int = 5,
    api_key: str | None = None,
    tensor_parallel_size: int = 1,
    data_parallel_size: int | None = None,
    max_model_len: int | None = None,
    gpu_memory_utilization: float = 0.9,
    enforce_eager: bool | None = None,
    dtype: str = "auto",
    log: Log = print,
    progress: bool = True,
) -> RegenerationSummary:
    """Regenerate every assistant turn of ``input_path`` into ``output_path``. See the package docstring."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    sampling = sampling or SamplingSettings()
    input_path, output_path = Path(input_path), Path(output_path)
    err_path = error_path_for(output_path)
    if backend not in ("hf", "openai", "vllm"):
        raise RegenerationError(f"unknown backend {backend!r}; choose vllm, openai or hf")
    if resume and overwrite:
        raise RegenerationError(
            "--resume keeps the rows already in the output and --overwrite drops them; pass only one of them"
        )
    if not input_path.exists():
        raise DataError(
            f"input file not found: {input_path} (make one with scripts/data/download_and_split.py)",
            reason="missing_file",
        )
    if backend != "openai" and not model:
        raise RegenerationError(f"--model is required for the {backend} backend (a Hugging Face folder or hub name)")
    model_dir = Path(model).expanduser() if model else None
    if model and spelled_as_path(model) and not model_dir.exists():
        raise RegenerationError(f"no such model folder: {model} (check the path; a hub model is named ORG/NAME)")
    # Every path we write is checked against every path we read before anything is opened: an output
    # or error file that is an input, or sits in an input folder, would destroy it or be read back.
    inputs = [input_path] + ([model_dir] if model_dir is not None and model_dir.is_dir() else [])
    check_outputs_apart(inputs=inputs, outputs=[output_path], what="output")
    check_outputs_apart(inputs=inputs, outputs=[err_path], what="error file")
    if backend != "openai" and model_dir.is_dir() and not (model_dir / "config.json").is_file():
        raise RegenerationError(
            f"{model} has no config.json, so it is not a Hugging Face model folder; pass the "
            "folder that holds config.json, the weights and the tokenizer"
        )
    for path in (output_path, err_path):
        if path.is_dir():
            raise RegenerationError(f"{path} is a folder; --output-file-path must name a .jsonl file")
        parent = next((q for q in path.parents if q.exists()), None)
        if parent is not None and not parent.is_dir():
            raise RegenerationError(f"cannot write {path}: {parent} is a file, not a folder")
    # Listed once, now: a folder input never sees the files this run writes.
    input_files = list_input_files(input_path)
    if output_path.exists() and output_path.stat().st_size > 0 and not resume and not overwrite:
        raise OutputExistsError(
            f"{output_path} already has rows; pass --resume to continue it or --overwrite to start over"
        )
    check_error_file(err_path)
    scan = scan_output(output_path) if resume else OutputScan()
    identity = model_identity(model) if backend != "openai" else None
    if identity is not None and resume:
        # Before the engine loads: refusing takes a moment, not a model load.
        check_resume_model(
            existing=scan.models, legacy_rows=scan.legacy_rows, identity=identity, output_path=output_path, log=log
        )
    summary = RegenerationSummary()
    # The engine comes next: it can fail (bad model path, no server) before any file is touched.
    engine = None
    dp_plan = None
    if backend == "hf":
        engine = HFBackend(
            model=model, sampling=sampling, batch_size=batch_size or HFBackend.default_batch_size, dtype=dtype, log=log
        )
    elif backend == "openai":
        engine = OpenAIBackend(
            servers=server_addresses,
            model=model,
            sampling=sampling,
            timeout=request_timeout,
            max_retries=max_retries,
            api_key=api_key,
            log=log,
        )
    else:
        devices = cuda_device_ids()
        tp = max(1, tensor_parallel_size)
        dp = data_parallel_size or max(1, len(devices) // tp)
        engine_kwargs = dict(
            tensor_parallel_size=tp,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
        )
        if dp <= 1:
            engine = VLLMBackend(model=model, sampling=sampling, log=log, **engine_kwargs)
        else:
            if devices and dp * tp > len(devices):
                raise RegenerationError(
                    f"--data-parallel-size {dp} x --tensor-parallel-size {tp} needs {dp * tp} "
                    f"GPUs but {len(devices)} are visible; lower one of them"
                )
            dp_plan = dict(dp=dp, tp=tp, devices=devices, engine=engine_kwargs)

    try:
        if identity is None:  # openai: the model is the one the server names
            identity = model_identity(engine.model)
            if resume:
                check_resume_model(
                    existing=scan.models,
                    legacy_rows=scan.legacy_rows,
                    identity=identity,
                    output_path=output_path,
                    log=log,
                )
        done_ids = scan.ids
        if resume:
            repair_tail(output_path, scan, log)
            if done_ids:
                log(f"[regenerate] resuming: {len(done_ids)} conversations already in {output_path}")
        if overwrite and output_path.exists():
            output_path.write_bytes(b"")  # asked for: start over
        clear_stale_errors(err_path)
        out = JsonlAppender(output_path)
        err = JsonlAppender(err_path, truncate=True)  # failures of this run only: earlier failures are retried
    except BaseException:
        if engine is not None:
            engine.close()
        raise
    record = identity.record()
    total = count_lines(input_files)
    if num_samples is not None:
        total = min(total, num_samples)
    bar = tqdm(total=total, desc=f"regenerate ({backend})", unit="conv", disable=not progress, dynamic_ncols=True)

    def on_bad(conv_id, where, reason, message):
        row = {"id": conv_id, "reason": reason, "message": message}
        if where:
            row["where"] = where
        err.write(row)
        summary.failed += 1
        summary.failure_reasons[reason] += 1
        bar.update(1)

    def on_skip(_conv_id):
        summary.skipped += 1
        bar.update(1)

    def on_row(row: dict):
        row[RECORD_KEY] = record  # which model wrote it: --resume checks it
        out.write(row)
        summary.ok += 1
        summary.finish_reasons.update(r or "unknown" for r in row.get("finish_reasons", []))
        bar.update(1)

    def on_done(job: ConversationJob):
        on_row(job.row())

    def on_fail(job: ConversationJob, result: TurnResult):
        on_bad(job.id, "", result.reason, f"assistant turn {job.turn}: {result.error}")

    def counted(gen):
        for job in gen:
            summary.attempted += 1
            yield job

    jobs = counted(iter_jobs(input_files, num_samples=num_samples, done_ids=done_ids, on_bad=on_bad, on_skip=on_skip))
    try:
        if dp_plan is not None:
            settings = dict(
                model=model,
                sampling=dataclasses.asdict(sampling),
                engine=dp_plan["engine"],
                input_files=[str(f) for f in input_files],
                num_samples=num_samples,
                batch_size=batch_size or VLLMBackend.default_batch_size,
                done_ids=sorted(done_ids),
            )
            summary.broken_workers = run_data_parallel(
                jobs=jobs,
                dp=dp_plan["dp"],
                tp=dp_plan["tp"],
                devices=dp_plan["devices"],
                settings=settings,
                on_row=on_row,
                on_fail=lambda cid, turn, reason, msg: on_bad(cid, "", reason, f"assistant turn {turn}: {msg}"),
                log=log,
            )
        elif isinstance(engine, OpenAIBackend):
            run_concurrent(
                jobs,
                engine,
                concurrency=concurrency or OpenAIBackend.default_batch_size,
                on_done=on_done,
                on_fail=on_fail,
            )
        else:
            size = batch_size or engine.default_batch_size
            run_batched(jobs, engine, batch_size=size, on_done=on_done, on_fail=on_fail)
    finally:
        if engine is not None:
            engine.close()
        bar.close()
        out.close()
        err.close()

    summary.seconds = time.perf_counter() - t0
    return summary
