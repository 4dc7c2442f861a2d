"""The top level: :func:`regenerate` picks a backend and drives it over the input file."""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from pathlib import Path
from typing import Sequence

from deepspec.data.regenerate.common import (
    Log,
    RegenerationSummary,
    SamplingSettings,
    TurnResult,
    _Appender,
    _count_lines,
    _done_ids_and_repair,
    _iter_jobs,
    _Job,
    error_path_for,
)
from deepspec.data.regenerate.drivers import _run_batched, _run_concurrent
from deepspec.data.regenerate.hf_backend import HFBackend
from deepspec.data.regenerate.openai_backend import OpenAIBackend
from deepspec.data.regenerate.vllm_backend import VLLMBackend, _cuda_device_ids, _run_data_parallel

def default_backend() -> str:
    """``vllm`` when it can be imported here, else ``hf``."""
    return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"


def regenerate(*, input_path, output_path, backend: str, model: str | None,
               sampling: SamplingSettings | None = None, num_samples: int | None = None,
               resume: bool = False, overwrite: bool = False, batch_size: int | None = None,
               server_addresses: Sequence[str] = (), concurrency: int | None = None,
               request_timeout: float = 600.0, max_retries: int = 5, api_key: str | None = None,
               tensor_parallel_size: int = 1, data_parallel_size: int | None = None,
               max_model_len: int | None = None, gpu_memory_utilization: float = 0.9,
               enforce_eager: bool | None = None, dtype: str = "auto", log: Log = print,
               progress: bool = True) -> RegenerationSummary:
    """Regenerate every assistant turn of ``input_path`` into ``output_path``. See the package docstring."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    sampling = sampling or SamplingSettings()
    input_path, output_path = Path(input_path), Path(output_path)
    if not input_path.exists():
        raise FileNotFoundError(f"input file not found: {input_path} (make one with scripts/data/download_and_split.py)")
    if output_path.resolve() == input_path.resolve():
        raise ValueError("--output-file-path must differ from --input-file-path")
    if backend != "openai" and not model:
        raise ValueError(f"--model is required for the {backend} backend (a Hugging Face folder or hub name)")
    if (output_path.exists() and output_path.stat().st_size > 0 and not resume and not overwrite):
        raise FileExistsError(f"{output_path} already has rows; pass --resume to continue it or --overwrite to "
                              "start over")
    summary = RegenerationSummary()
    # The engine comes first: it can fail (bad model path, no server) before any file is touched.
    engine = None
    dp_plan = None
    if backend == "hf":
        engine = HFBackend(model=model, sampling=sampling, batch_size=batch_size or HFBackend.default_batch_size,
                           dtype=dtype, log=log)
    elif backend == "openai":
        engine = OpenAIBackend(servers=server_addresses, model=model, sampling=sampling, timeout=request_timeout,
                               max_retries=max_retries, api_key=api_key, log=log)
    elif backend == "vllm":
        devices = _cuda_device_ids()
        tp = max(1, tensor_parallel_size)
        dp = data_parallel_size or max(1, len(devices) // tp)
        engine_kwargs = dict(tensor_parallel_size=tp, max_model_len=max_model_len,
                             gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager)
        if dp <= 1:
            engine = VLLMBackend(model=model, sampling=sampling, log=log, **engine_kwargs)
        else:
            if devices and dp * tp > len(devices):
                raise ValueError(f"--data-parallel-size {dp} x --tensor-parallel-size {tp} needs {dp * tp} GPUs "
                                 f"but {len(devices)} are visible; lower one of them")
            dp_plan = dict(dp=dp, tp=tp, devices=devices, engine=engine_kwargs)
    else:
        raise ValueError(f"unknown backend {backend!r}; choose vllm, openai or hf")

    try:
        done_ids = _done_ids_and_repair(output_path, log) if resume else set()
        if resume and done_ids:
            log(f"[regenerate] resuming: {len(done_ids)} conversations already in {output_path}")
        out = _Appender(output_path, truncate=not resume)
        err_path = error_path_for(output_path)
        err = _Appender(err_path, truncate=True)  # failures of this run only: earlier failures are retried
    except BaseException:
        if engine is not None:
            engine.close()
        raise
    total = _count_lines(input_path)
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
        out.write(row)
        summary.ok += 1
        summary.finish_reasons.update(r or "unknown" for r in row.get("finish_reasons", []))
        bar.update(1)

    def on_done(job: _Job):
        on_row(job.row())

    def on_fail(job: _Job, result: TurnResult):
        on_bad(job.id, "", result.reason, f"assistant turn {job.turn}: {result.error}")

    jobs = _iter_jobs(input_path, num_samples=num_samples, done_ids=done_ids, on_bad=on_bad, on_skip=on_skip)
    try:
        if dp_plan is not None:
            settings = dict(model=model, sampling=dataclasses.asdict(sampling), engine=dp_plan["engine"],
                            input_path=str(input_path), num_samples=num_samples,
                            batch_size=batch_size or VLLMBackend.default_batch_size, done_ids=sorted(done_ids))
            summary.broken_workers = _run_data_parallel(
                jobs=jobs, dp=dp_plan["dp"], tp=dp_plan["tp"], devices=dp_plan["devices"], settings=settings,
                on_row=on_row,
                on_fail=lambda cid, turn, reason, msg: on_bad(cid, "", reason, f"assistant turn {turn}: {msg}"),
                log=log)
        elif isinstance(engine, OpenAIBackend):
            _run_concurrent(jobs, engine, concurrency=concurrency or OpenAIBackend.default_batch_size,
                            on_done=on_done, on_fail=on_fail)
        else:
            size = batch_size or engine.default_batch_size
            _run_batched(jobs, engine, batch_size=size, on_done=on_done, on_fail=on_fail)
    finally:
        if engine is not None:
            engine.close()
        bar.close()
        out.close()
        err.close()
        if summary.failed == 0 and err_path.exists() and err_path.stat().st_size == 0:
            err_path.unlink()  # no error file means no failures

    summary.seconds = time.perf_counter() - t0
    return summary
