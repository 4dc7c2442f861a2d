"""The ``vllm`` backend: an in-process ``vllm.LLM`` engine, optionally one per GPU group
in spawned data-parallel worker processes."""

from __future__ import annotations

import os
import signal
from typing import Iterator, Sequence

from deepspec.data.regenerate.common import (
    BackendUnavailable,
    ConversationJob,
    Log,
    Messages,
    SamplingSettings,
    TurnResult,
    iter_jobs,
)
from deepspec.data.regenerate.drivers import run_batched


def cuda_device_ids() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (empty on CPU)."""
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable torch/CUDA means CPU
        count = 0
    if count == 0:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [d.strip() for d in visible.split(",") if d.strip()][:count]
    return [str(i) for i in range(count)]


def _prepare_vllm_env(on_gpu: bool) -> None:
    if not on_gpu:
        # vLLM's CPU backend otherwise reserves a large share of RAM for the KV cache.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


class VLLMBackend:
    """An in-process ``vllm.LLM`` engine; ``llm.chat`` applies the target's chat template."""

    name = "vllm"
    default_batch_size = 512

    def __init__(
        self,
        *,
        model: str,
        sampling: SamplingSettings,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.9,
        enforce_eager: bool | None = None,
        log: Log = print,
    ):
        on_gpu = bool(cuda_device_ids())
        _prepare_vllm_env(on_gpu)
        try:
            from vllm import LLM, SamplingParams
        except ImportError as e:
            raise BackendUnavailable(
                f"cannot import vllm ({e}). Install it with `bash scripts/data/setup_vllm_env.sh` and run this "
                "script with .venv-vllm/bin/python, or use --backend hf (no vLLM) / --backend openai (a server)"
            ) from e

        self.sampling = sampling
        kwargs = dict(
            model=model,
            tensor_parallel_size=tensor_parallel_size,
            seed=sampling.seed if sampling.seed is not None else 0,
            # CUDA graphs pay off on GPU; on CPU there are none and eager is what works.
            enforce_eager=(not on_gpu) if enforce_eager is None else enforce_eager,
        )
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        if on_gpu:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        try:
            self.llm = LLM(**kwargs)
        except (OSError, ValueError) as e:  # a missing folder, a config vLLM cannot serve
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise BackendUnavailable(f"vLLM cannot load {model}: {first}") from None
        # Start from the target's generation_config.json (what vLLM itself would use), then apply overrides.
        defaults = self.llm.get_default_sampling_params()
        params = {k: getattr(defaults, k) for k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")}
        params.update(sampling.overrides())
        self.params = SamplingParams(**params, max_tokens=sampling.max_tokens)
        log(
            f"[regenerate] vllm backend: {model} ({'GPU' if on_gpu else 'CPU'}, tp {tensor_parallel_size}, "
            f"enforce_eager {kwargs['enforce_eager']}), sampling "
            + ", ".join(f"{k} {v}" for k, v in params.items())
            + f", max_tokens {sampling.max_tokens}"
        )

    def generate(self, batch: Sequence[Messages]) -> list[TurnResult]:
        outputs = self.llm.chat(
            list(batch), self.params, use_tqdm=False, chat_template_kwargs=self.sampling.chat_template_kwargs
        )
        results = []
        for out in outputs:
            if not out.outputs:
                results.append(TurnResult(error="vLLM returned no completion for this request"))
                continue
            comp = out.outputs[0]
            results.append(TurnResult(text=comp.text, finish_reason=comp.finish_reason))
        return results

    def close(self) -> None:
        """Stop the engine-core processes now rather than at interpreter exit."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        engine = getattr(llm, "llm_engine", None)
        # vLLM 0.32 keeps the shutdown on the engine-core client; newer versions may expose it higher up.
        for owner in (engine, getattr(engine, "engine_core", None)):
            shutdown = getattr(owner, "shutdown", None)
            if callable(shutdown):
                try:
                    shutdown()
                except Exception:  # noqa: BLE001 - best effort while closing
                    pass
                break
        self.llm = None


# ----------------------------------------------------------------------------- data parallel


def _vllm_worker(rank: int, world: int, devices: str, settings: dict, queue) -> None:
    """One data-parallel engine (a spawned process): generates its shard, reports rows on ``queue``."""
    try:
        # Lead a process group of our own, so the parent can stop vLLM's engine processes with us.
        os.setpgrp()
        if devices:
            os.environ["CUDA_VISIBLE_DEVICES"] = devices
        sampling = SamplingSettings(**settings["sampling"])
        backend = VLLMBackend(
            model=settings["model"], sampling=sampling, log=lambda m: print(f"[dp{rank}] {m}"), **settings["engine"]
        )
        jobs = iter_jobs(
            settings["input_files"],
            num_samples=settings["num_samples"],
            done_ids=set(settings["done_ids"]),
            shard=(rank, world),
        )
        run_batched(
            jobs,
            backend,
            batch_size=settings["batch_size"],
            on_done=lambda j: queue.put(("done", j.row())),
            on_fail=lambda j, r: queue.put(("fail", j.id, j.turn, r.reason, r.error)),
        )
        # A spawned child runs no atexit hooks, so vLLM's engine processes must be stopped
        # explicitly, or this process waits for them forever when it exits.
        backend.close()
        queue.put(("exit", rank, None))
    except BaseException as e:  # noqa: BLE001 - the parent must hear why
        queue.put(("exit", rank, f"{type(e).__name__}: {e}"))
        raise


def _signal_group(proc, sig) -> None:
    """Signal a data-parallel worker and the engine processes in its process group."""
    if proc.pid is None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_data_parallel(
    *, jobs: Iterator[ConversationJob], dp: int, tp: int, devices: list[str], settings: dict, on_row, on_fail, log: Log
) -> list[str]:
    """Spawn ``dp`` engine processes on disjoint GPU groups; this process writes every row.

    Returns a description of each worker that did not finish (its unfinished
    conversations are simply absent from the output; ``--resume`` picks them up).
    """
    import multiprocessing as mp
    import queue as queue_mod

    ctx = mp.get_context("spawn")  # CUDA cannot be forked into children
    q = ctx.Queue()
    procs = []
    for rank in range(dp):
        group = ",".join(devices[rank * tp : (rank + 1) * tp]) if devices else ""
        p = ctx.Process(target=_vllm_worker, args=(rank, dp, group, settings, q), name=f"regen-dp{rank}", daemon=False)
        p.start()
        procs.append(p)
        log(f"[regenerate] data-parallel worker {rank} on GPU(s) {group or 'CPU'} (pid {p.pid})")
    # Our own pass over the input records bad lines and skipped ids; the workers generate.
    for _ in jobs:
        pass
    exited: dict[int, str | None] = {}
    try:
        while len(exited) < dp:
            try:
                msg = q.get(timeout=5)
            except queue_mod.Empty:
                for rank, p in enumerate(procs):
                    if rank not in exited and not p.is_alive():
                        exited[rank] = f"exited with code {p.exitcode} without a word"
                continue
            kind = msg[0]
            if kind == "done":
                on_row(msg[1])
            elif kind == "fail":
                on_fail(*msg[1:])
            elif kind == "exit":
                exited[msg[1]] = msg[2]
    finally:
        # A worker that did not finish cleanly (interrupted, crashed, raised) may leave engine
        # processes behind in its group: stop them now rather than let them outlive this run.
        unclean = [p for rank, p in enumerate(procs) if rank not in exited or exited[rank]]
        for p in unclean:
            _signal_group(p, signal.SIGTERM)
        for p in procs:
            p.join(timeout=10 if p in unclean else 60)
        for p in unclean + [p for p in procs if p.is_alive()]:
            _signal_group(p, signal.SIGKILL)
            p.join(timeout=10)
    broken = [f"worker {rank}: {why}" for rank, why in sorted(exited.items()) if why]
    for line in broken:
        log(f"[regenerate] ERROR: data-parallel {line}; rerun with --resume to finish its conversations")
    return broken
