"""What one regeneration run is asked to do: :class:`RegenerateOptions`, built once (by the command line
or by a caller) and read by the checks, the backends and :func:`deepspec.data.regenerate.regenerate`.

Each default is written here and nowhere else: the command line reads them from these fields.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from deepspec.data.regenerate.common import SamplingSettings, error_path_for


@dataclass(frozen=True, kw_only=True)
class RegenerateOptions:
    """A regeneration run. ``None`` means "the backend's own default" unless a field says otherwise."""

    input_path: Path  # a conversation JSONL file, or a folder of them
    output_path: Path  # failures go to <stem>_error.jsonl next to it
    backend: str | None = None  # a key of backends.BACKENDS; None: vllm when importable, else hf
    model: str | None = None  # folder or hub name; openai: the served name (None: the first the server lists)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    num_samples: int | None = None  # only the first N valid conversations (None: all)
    resume: bool = False  # keep the rows already in the output and do only the missing ids
    overwrite: bool = False  # start the output over if it already has rows
    batch_size: int | None = None  # hf / vllm: conversations per generate call
    dtype: str = "auto"  # hf: weights dtype
    # vllm
    tensor_parallel_size: int = 1
    data_parallel_size: int | None = None  # None: visible GPUs / tensor parallel size (1 on CPU)
    max_model_len: int | None = None  # None: the model's
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool | None = None  # None: eager on CPU only
    # openai
    server_addresses: tuple[str, ...] = ()
    concurrency: int | None = None  # requests in flight across all servers
    request_timeout: float = 600.0  # seconds per request
    max_retries: int = 5
    api_key: str | None = None  # sent to every server
    api_key_env: str | None = None  # the environment variable that holds the key (read when the run starts)
    progress: bool = True  # a progress bar

    def __post_init__(self):
        # Paths and address lists come in many spellings; keep one, so options compare equal.
        object.__setattr__(self, "input_path", Path(os.fspath(self.input_path)))
        object.__setattr__(self, "output_path", Path(os.fspath(self.output_path)))
        object.__setattr__(self, "server_addresses", tuple(self.server_addresses))

    @property
    def error_path(self) -> Path:
        return error_path_for(self.output_path)


def option_default(name: str, *, of: type = RegenerateOptions):
    """The default of field ``name`` of the dataclass ``of`` (a field with a default value, not a factory)."""
    for f in dataclasses.fields(of):
        if f.name == name:
            if f.default is dataclasses.MISSING:
                raise KeyError(f"{of.__name__}.{name} has no plain default; give the argument a default of its own")
            return f.default
    raise KeyError(f"{of.__name__} has no field {name!r}; check the spelling against its definition")
