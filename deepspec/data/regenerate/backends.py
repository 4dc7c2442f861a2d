"""The backend table: :data:`BACKENDS` maps each ``--backend`` name to the one object that knows it.

Every entry answers four questions for :func:`deepspec.data.regenerate.regenerate`:

* ``check(options)``: is the run possible with this backend? Raises before anything is read, loaded
  or written;
* ``identity(options, engine=None)``: which model writes the rows (``None`` while only the opened
  engine can say, as for a server);
* ``open(options, log=...)``: start the engine, client or model; what it returns has ``close()``;
* ``drive(engine, work=..., sink=..., options=..., log=...)``: generate every conversation of
  ``work`` and hand each result to ``sink``.

This module is the only place that tells the backends apart; the command line offers its names.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from deepspec.data.regenerate.common import Log, RegenerationError
from deepspec.data.regenerate.drivers import run_batched, run_concurrent
from deepspec.data.regenerate.hf_backend import HFBackend
from deepspec.data.regenerate.identity import ModelIdentity, model_identity
from deepspec.data.regenerate.openai_backend import OpenAIBackend, check_servers
from deepspec.data.regenerate.options import RegenerateOptions
from deepspec.data.regenerate.sink import Sink, Work
from deepspec.data.regenerate.vllm_backend import VLLMBackend, cuda_device_ids, run_data_parallel

DEFAULT_RULE = "vllm when importable, else hf"


def default_backend() -> str:
    """The backend of a run that names none: ``vllm`` when it can be imported here, else ``hf``."""
    return VLLMBackend.name if importlib.util.find_spec("vllm") is not None else HFBackend.name


class Backend:
    """One way to produce the answers; see the module docstring for the four methods."""

    name: str
    summary: str  # what it is, for --help

    def check(self, options: RegenerateOptions) -> None:
        raise NotImplementedError

    def identity(self, options: RegenerateOptions, *, engine=None) -> ModelIdentity | None:
        raise NotImplementedError

    def open(self, options: RegenerateOptions, *, log: Log):
        raise NotImplementedError

    def drive(self, engine, *, work: Work, sink: Sink, options: RegenerateOptions, log: Log) -> None:
        raise NotImplementedError


class _LocalModel(Backend):
    """A backend that loads the target itself, from a folder or a hub name (hf, vllm)."""

    def check(self, options: RegenerateOptions) -> None:
        if options.server_addresses or options.api_key or options.api_key_env:
            raise RegenerationError(
                "--server-address, --api-key and --api-key-env belong to --backend openai; "
                f"add --backend openai or leave them out (backend now: {options.backend or 'default'})"
            )
        if not options.model:
            raise RegenerationError(
                f"--model is required for the {self.name} backend (a Hugging Face folder or hub name)"
            )
        model_dir = Path(options.model).expanduser()
        if model_dir.is_dir() and not (model_dir / "config.json").is_file():
            raise RegenerationError(
                f"{options.model} has no config.json, so it is not a Hugging Face model folder; pass the "
                "folder that holds config.json, the weights and the tokenizer"
            )

    def identity(self, options: RegenerateOptions, *, engine=None) -> ModelIdentity:
        return model_identity(options.model)  # known before loading: a refusal costs no model load


class _HF(_LocalModel):
    name = HFBackend.name
    summary = "transformers generate"

    def open(self, options: RegenerateOptions, *, log: Log) -> HFBackend:
        return HFBackend(
            model=options.model,
            sampling=options.sampling,
            batch_size=options.batch_size or HFBackend.default_batch_size,
            dtype=options.dtype,
            log=log,
        )

    def drive(self, engine, *, work: Work, sink: Sink, options: RegenerateOptions, log: Log) -> None:
        size = options.batch_size or engine.default_batch_size
        run_batched(work.jobs, engine, batch_size=size, on_done=sink.done, on_fail=sink.fail)


@dataclass(frozen=True, kw_only=True)
class _DataParallel:
    """vLLM engines in worker processes, one per GPU group: started by ``drive``, so nothing to close here."""

    dp: int
    tp: int
    devices: list[str]
    engine: dict  # VLLMBackend's engine arguments

    def close(self) -> None:
        pass


class _VLLM(_LocalModel):
    name = VLLMBackend.name
    summary = "in-process engine"

    def check(self, options: RegenerateOptions) -> None:
        super().check(options)
        self._layout(options)

    @staticmethod
    def _layout(options: RegenerateOptions) -> tuple[list[str], int, int]:
        """The visible GPUs, the tensor and the data parallel size; refuses more engines than the GPUs hold."""
        devices = cuda_device_ids()
        tp = max(1, options.tensor_parallel_size)
        dp = options.data_parallel_size or max(1, len(devices) // tp)
        if dp > 1 and devices and dp * tp > len(devices):
            raise RegenerationError(
                f"--data-parallel-size {dp} x --tensor-parallel-size {tp} needs {dp * tp} "
                f"GPUs but {len(devices)} are visible; lower one of them"
            )
        return devices, tp, dp

    def open(self, options: RegenerateOptions, *, log: Log) -> VLLMBackend | _DataParallel:
        devices, tp, dp = self._layout(options)
        engine = dict(
            tensor_parallel_size=tp,
            max_model_len=options.max_model_len,
            gpu_memory_utilization=options.gpu_memory_utilization,
            enforce_eager=options.enforce_eager,
        )
        if dp > 1:
            return _DataParallel(dp=dp, tp=tp, devices=devices, engine=engine)
        return VLLMBackend(model=options.model, sampling=options.sampling, log=log, **engine)

    def drive(self, engine, *, work: Work, sink: Sink, options: RegenerateOptions, log: Log) -> None:
        size = options.batch_size or VLLMBackend.default_batch_size
        if not isinstance(engine, _DataParallel):
            run_batched(work.jobs, engine, batch_size=size, on_done=sink.done, on_fail=sink.fail)
            return
        settings = dict(  # what each worker process needs to build its engine and find its shard
            model=options.model,
            sampling=dataclasses.asdict(options.sampling),
            engine=engine.engine,
            input_files=[str(f) for f in work.input_files],
            num_samples=work.num_samples,
            batch_size=size,
            done_ids=sorted(work.done_ids),
        )
        sink.summary.broken_workers = run_data_parallel(
            jobs=work.jobs,
            dp=engine.dp,
            tp=engine.tp,
            devices=engine.devices,
            settings=settings,
            on_row=sink.row,
            on_fail=sink.failed_turn,
            log=log,
        )


def api_key(options: RegenerateOptions) -> str | None:
    """The bearer token the user gave for the servers: ``--api-key``, or the variable ``--api-key-env`` names."""
    if options.api_key_env is None:
        return options.api_key
    value = os.environ.get(options.api_key_env)
    if not value:
        raise RegenerationError(
            f"--api-key-env {options.api_key_env}: that environment variable is not set or empty; "
            "export it, or leave --api-key-env out for servers that want no key"
        )
    return value


class _OpenAI(Backend):
    name = OpenAIBackend.name
    summary = "HTTP servers"

    def check(self, options: RegenerateOptions) -> None:
        api_key(options)
        check_servers(options.server_addresses)

    def identity(self, options: RegenerateOptions, *, engine=None) -> ModelIdentity | None:
        return None if engine is None else model_identity(engine.model)  # the model the server names

    def open(self, options: RegenerateOptions, *, log: Log) -> OpenAIBackend:
        return OpenAIBackend(
            servers=options.server_addresses,
            model=options.model,
            sampling=options.sampling,
            timeout=options.request_timeout,
            max_retries=options.max_retries,
            api_key=api_key(options),
            log=log,
        )

    def drive(self, engine, *, work: Work, sink: Sink, options: RegenerateOptions, log: Log) -> None:
        concurrency = options.concurrency or engine.default_batch_size
        run_concurrent(work.jobs, engine, concurrency=concurrency, on_done=sink.done, on_fail=sink.fail)


BACKENDS: MappingProxyType[str, Backend] = MappingProxyType({b.name: b for b in (_VLLM(), _OpenAI(), _HF())})


def backend_for(options: RegenerateOptions) -> Backend:
    """The table's entry for ``options.backend`` (the default backend when it names none)."""
    name = options.backend or default_backend()
    if name not in BACKENDS:
        *most, last = BACKENDS
        raise RegenerationError(f"unknown backend {name!r}; choose {', '.join(most)} or {last}")
    return BACKENDS[name]
