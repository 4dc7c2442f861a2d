"""The command line of ``scripts/data/generate_train_data.py``: :func:`build_parser` and :func:`main`."""

from __future__ import annotations

import argparse
import dataclasses
import math
import signal
import sys
import threading
from typing import Sequence

from deepspec.data.regenerate.backends import BACKENDS, DEFAULT_RULE
from deepspec.data.regenerate.common import RegenerationSummary, SamplingSettings, error_path_for
from deepspec.data.regenerate.hf_backend import DTYPES, HFBackend
from deepspec.data.regenerate.openai_backend import OpenAIBackend
from deepspec.data.regenerate.options import RegenerateOptions, option_default
from deepspec.data.regenerate.runner import regenerate
from deepspec.data.regenerate.vllm_backend import VLLMBackend
from deepspec.errors import cli_main

_EPILOG = """\
examples:
  # hf backend (no vLLM needed), the tiny CPU target:
  python scripts/data/generate_train_data.py --backend hf --model ~/.cache/deepspec/tiny_target \\
      --input-file-path data/train.jsonl --output-file-path data/train_regen.jsonl --max-tokens 256

  # in-process vLLM (run with the vLLM environment: bash scripts/data/setup_vllm_env.sh):
  .venv-vllm/bin/python scripts/data/generate_train_data.py --backend vllm --model Qwen/Qwen3-4B \\
      --input-file-path data/train.jsonl --output-file-path data/train_regen.jsonl

  # against servers started by scripts/data/launch_vllm_server.sh:
  python scripts/data/generate_train_data.py --backend openai --server-address 127.0.0.1:8000 \\
      --server-address 127.0.0.1:8001 --input-file-path data/train.jsonl --output-file-path data/train_regen.jsonl

An interrupted run continues with the same command plus --resume. Failed conversations
are listed in <output stem>_error.jsonl and are tried again by the next --resume run.
Every row records the model that wrote it ("generated_by"); --resume with another
--model refuses instead of mixing two targets' answers.

API keys (openai backend): $OPENAI_API_KEY is sent only to the official API
(https://api.openai.com). A key for any other server must be given for it: --api-key-env VAR
(read from that variable, not shown in `ps`) or --api-key KEY. Servers started by
launch_vllm_server.sh listen on 127.0.0.1 and want no key unless started with -- --api-key KEY.
"""


# -- parse-time checks: a bad number stops here with argparse's one-line usage error (exit 2)
def _number(kind, text, what):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def _ranged(kind, what, ok):
    def parse(text):
        value = _number(kind, text, what)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in its message
    return parse


positive_int = _ranged(int, "an integer >= 1", lambda v: v >= 1)
nonnegative_int = _ranged(int, "an integer >= 0", lambda v: v >= 0)
top_k_int = _ranged(int, "an integer >= -1 (0 or -1 = off)", lambda v: v >= -1)
nonnegative_float = _ranged(float, "a finite number >= 0", lambda v: v >= 0)
positive_float = _ranged(float, "a finite number > 0", lambda v: v > 0)
unit_open_closed = _ranged(float, "a number in (0, 1]", lambda v: 0 < v <= 1)
unit_closed = _ranged(float, "a number in [0, 1]", lambda v: 0 <= v <= 1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="generate_train_data.py",
        description="Regenerate every assistant turn of a conversation JSONL file with the target model, so the "
        "draft learns from the target's own answers. User turns are kept; turn k is conditioned on the "
        "regenerated turns before it.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_io_args(p.add_argument_group("input and output"))
    _add_model_args(p.add_argument_group("model and backend"))
    _add_sampling_args(p.add_argument_group("sampling (unset = the target's own generation_config.json)"), parser=p)
    _add_vllm_args(p.add_argument_group("vllm backend"))
    _add_openai_args(p.add_argument_group("openai backend"))
    p.add_argument(
        "--no-progress", dest="progress", action="store_false", default=_default("progress"), help="no progress bar"
    )
    return p


# The options' fields the command line spells differently; every other field is the dest of its flag.
_DESTS = {"input_path": "input_file_path", "output_path": "output_file_path", "server_addresses": "server_address"}


def _default(name: str, *, of: type = RegenerateOptions):
    """Each default is written once, in the dataclass: the flags read it from there."""
    return option_default(name, of=of)


def _add_io_args(io) -> None:
    io.add_argument(
        "--input-file-path",
        required=True,
        help='conversation JSONL ({"id", "conversations"} lines, ShareGPT roles accepted), or a folder of them',
    )
    io.add_argument("--output-file-path", required=True, help="JSONL to write; failures go to <stem>_error.jsonl")
    io.add_argument(
        "--num-samples",
        type=positive_int,
        default=_default("num_samples"),
        help="only the first N valid conversations (default: all)",
    )
    again = io.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        default=_default("resume"),
        help="keep the rows already in the output and do only the "
        "missing ids (failed ones are retried); refuses when another model wrote them",
    )
    again.add_argument(
        "--overwrite",
        action="store_true",
        default=_default("overwrite"),
        help="start the output over if it already has rows",
    )


def _add_model_args(m) -> None:
    m.add_argument(
        "--backend",
        choices=list(BACKENDS),
        default=_default("backend"),
        help="; ".join(f"{name}: {backend.summary}" for name, backend in BACKENDS.items())
        + f" (default: {DEFAULT_RULE})",
    )
    m.add_argument(
        "--model",
        default=_default("model"),
        help="target model folder or hub name (openai backend: the served "
        "model name; default there: the first model the server lists)",
    )
    m.add_argument(
        "--batch-size",
        type=positive_int,
        default=_default("batch_size"),
        help="conversations generated together per call (hf: %d, vllm: %d)"
        % (HFBackend.default_batch_size, VLLMBackend.default_batch_size),
    )
    m.add_argument(
        "--dtype",
        default=_default("dtype"),
        choices=list(DTYPES),
        help="hf backend weights dtype: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16",
    )


def _add_sampling_args(s, *, parser: argparse.ArgumentParser) -> None:
    def default(name):
        return _default(name, of=SamplingSettings)

    s.add_argument("--temperature", type=nonnegative_float, default=default("temperature"), help="0 = greedy")
    s.add_argument("--top-p", type=unit_open_closed, default=default("top_p"), help="nucleus sampling mass, in (0, 1]")
    s.add_argument("--top-k", type=top_k_int, default=default("top_k"), help="0 or -1 = off")
    s.add_argument(
        "--min-p", type=unit_closed, default=default("min_p"), help="drop tokens below this fraction of the top one"
    )
    s.add_argument(
        "--max-tokens",
        type=positive_int,
        default=default("max_tokens"),
        help=f"new tokens per assistant turn (default: {default('max_tokens')})",
    )
    s.add_argument(
        "--seed",
        type=nonnegative_int,
        default=default("seed"),
        help="sampling seed (hf and vllm default to 0; openai sends it per request only when given)",
    )
    think = s.add_mutually_exclusive_group()
    think.add_argument(
        "--enable-thinking",
        dest="enable_thinking",
        action="store_true",
        help="chat template kwarg enable_thinking=True (Qwen3 think blocks)",
    )
    think.add_argument(
        "--disable-thinking", dest="enable_thinking", action="store_false", help="enable_thinking=False (the default)"
    )
    parser.set_defaults(enable_thinking=default("enable_thinking"))


def _add_vllm_args(v) -> None:
    v.add_argument(
        "--tensor-parallel-size", type=positive_int, default=_default("tensor_parallel_size"), help="GPUs per engine"
    )
    v.add_argument(
        "--data-parallel-size",
        type=positive_int,
        default=_default("data_parallel_size"),
        help="engines, one process each on its own GPU group (default: visible GPUs / tensor parallel size; 1 on CPU)",
    )
    v.add_argument(
        "--max-model-len",
        type=positive_int,
        default=_default("max_model_len"),
        help="engine context length (default: the model's)",
    )
    v.add_argument(
        "--gpu-memory-utilization",
        type=unit_open_closed,
        default=_default("gpu_memory_utilization"),
        help=f"share of each GPU's memory vLLM may take (default: {_default('gpu_memory_utilization')})",
    )
    v.add_argument(
        "--enforce-eager",
        dest="enforce_eager",
        action="store_true",
        default=_default("enforce_eager"),
        help="no CUDA graphs (always on for CPU)",
    )


def _add_openai_args(o) -> None:
    o.add_argument(
        "--server-address",
        action="append",
        default=list(_default("server_addresses")),  # append needs a list
        metavar="HOST:PORT",
        help="an OpenAI-compatible server; repeat for several (requests go round-robin)",
    )
    o.add_argument(
        "--concurrency",
        type=positive_int,
        default=_default("concurrency"),
        help="requests in flight across all servers (default: %d)" % OpenAIBackend.default_batch_size,
    )
    o.add_argument(
        "--request-timeout",
        type=positive_float,
        default=_default("request_timeout"),
        help=f"seconds per request (default: {_default('request_timeout'):g})",
    )
    o.add_argument(
        "--max-retries",
        type=nonnegative_int,
        default=_default("max_retries"),
        help="retries per request with exponential backoff",
    )
    key = o.add_mutually_exclusive_group()
    key.add_argument(
        "--api-key",
        default=_default("api_key"),
        metavar="KEY",
        help="bearer token sent to every --server-address (visible in `ps`; prefer --api-key-env). "
        "Without it no key is sent, except $OPENAI_API_KEY to https://api.openai.com",
    )
    key.add_argument(
        "--api-key-env",
        default=_default("api_key_env"),
        metavar="VAR",
        help="read the bearer token for every --server-address from environment variable VAR",
    )


def options_from_args(args: argparse.Namespace) -> RegenerateOptions:
    """The run the parsed command line asks for: every option field from the flag of the same name."""
    sampling = SamplingSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SamplingSettings)})
    values = {
        f.name: getattr(args, _DESTS.get(f.name, f.name))
        for f in dataclasses.fields(RegenerateOptions)
        if f.name != "sampling"
    }
    return RegenerateOptions(sampling=sampling, **values)


def _exit_on_sigterm(signum, _frame):
    # Turn `kill PID` into an exception, so files are closed and engine processes stopped on the way out.
    raise SystemExit(128 + signum)


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = options_from_args(args)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        summary = regenerate(options)
    except KeyboardInterrupt:
        print("\ninterrupted: finished conversations are in the output; continue with --resume", file=sys.stderr)
        return 130
    return _report(summary, input_text=args.input_file_path, output_text=args.output_file_path)


def _report(summary: RegenerationSummary, *, input_text: str, output_text: str) -> int:
    """Print what the run did (paths as the user spelled them); the exit status."""
    print(summary.text())
    if summary.failed:
        print(
            f"failures are listed in {error_path_for(output_text)} (a --resume run tries the failed "
            "conversations again)"
        )
    if summary.nothing_to_do:
        print(f"nothing to do: all {summary.skipped} rows already in {output_text}")
        return 0
    if summary.ok == 0 and summary.skipped == 0:
        print(
            f"no conversation was regenerated into {output_text}: {input_text} holds no valid "
            "conversation (see the failures above)",
            file=sys.stderr,
        )
        return 1
    print(f"output: {output_text}")
    if summary.broken_workers or (summary.failed and summary.ok == 0):
        return 1
    return 0
