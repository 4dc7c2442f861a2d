"""Regenerate every assistant turn of a conversation file with the target model.

A draft model learns to imitate the target, so it should be trained on the
target's *own* answers, not on whatever model wrote the public data set. For
each conversation the user turns are kept and each assistant turn is replaced
by what the target answers given the conversation so far, where "so far" holds
the already regenerated earlier answers (turn k is conditioned on the target's
turns 1..k-1, exactly as at inference). A conversation that ends with a user
turn (a plain prompt file) gets an answer for that turn too.

Three backends produce the answers:

* ``vllm``   -- an in-process ``vllm.LLM`` engine (one per GPU group through
  ``data_parallel_size`` worker processes; a single engine on CPU);
* ``openai`` -- one or more OpenAI-compatible servers (for example the ones
  ``scripts/data/launch_vllm_server.sh`` starts), spoken to with the standard
  library only, so the main environment needs nothing extra;
* ``hf``     -- transformers ``generate``, batched with left padding, for
  machines without vLLM.

Output rows are appended to the output file (and flushed) as soon as a whole
conversation is done, so a crash loses at most the conversations in flight and
``resume=True`` continues where the file ends. Failures are appended to
``<output stem>_error.jsonl`` with the conversation id and a reason.

The command line lives in :func:`main` (``scripts/data/generate_train_data.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import itertools
import json
import os
import random
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from deepspec.data.conversations import Conversation, DataError, SkipReport, read_conversations

__all__ = [
    "SamplingSettings",
    "TurnResult",
    "RegenerationSummary",
    "HFBackend",
    "VLLMBackend",
    "OpenAIBackend",
    "error_path_for",
    "default_backend",
    "regenerate",
    "build_parser",
    "main",
]

Messages = list  # list of {"role", "content"} dicts
Log = Callable[[str], None]


# ----------------------------------------------------------------------------- settings and results

@dataclass
class SamplingSettings:
    """How the target samples. ``None`` means: the target's own default (generation_config.json)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    max_tokens: int = 2048
    seed: int | None = None
    enable_thinking: bool = False

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")

    @property
    def chat_template_kwargs(self) -> dict:
        return {"enable_thinking": self.enable_thinking}

    def overrides(self) -> dict:
        """The sampling fields the user set, with "disabled" spellings normalised away."""
        out = {}
        if self.temperature is not None:
            out["temperature"] = float(self.temperature)
        if self.top_p is not None:
            out["top_p"] = float(self.top_p)
        if self.top_k is not None:
            out["top_k"] = int(self.top_k) if self.top_k > 0 else 0  # 0 / -1 both mean "off"
        if self.min_p is not None:
            out["min_p"] = float(self.min_p)
        return out


@dataclass
class TurnResult:
    """One generated assistant turn, or the reason there is none."""

    text: str | None = None
    finish_reason: str | None = None
    error: str | None = None
    reason: str = "generation_failed"


@dataclass
class RegenerationSummary:
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    finish_reasons: Counter = field(default_factory=Counter)
    failure_reasons: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    broken_workers: list = field(default_factory=list)

    def text(self) -> str:
        lines = [f"regenerated {self.ok} conversations, failed {self.failed}, "
                 f"skipped {self.skipped} (already in the output) in {self.seconds:.1f}s"]
        if self.finish_reasons:
            lines.append("  assistant turns by finish reason: "
                         + ", ".join(f"{k} {v}" for k, v in self.finish_reasons.most_common()))
        if self.failure_reasons:
            lines.append("  failures: " + ", ".join(f"{k} {v}" for k, v in self.failure_reasons.most_common()))
        for line in self.broken_workers:
            lines.append(f"  INCOMPLETE: data-parallel {line}")
        return "\n".join(lines)


def error_path_for(output_path: str | os.PathLike) -> Path:
    """``out/regen.jsonl`` -> ``out/regen_error.jsonl``."""
    p = Path(output_path)
    return p.with_name(f"{p.stem}_error.jsonl")


# ----------------------------------------------------------------------------- one conversation in flight

class _Job:
    """A conversation being regenerated turn by turn."""

    def __init__(self, conv: Conversation, index: int):
        self.id = conv.id
        self.index = index  # position among valid input conversations (used for sharding)
        msgs = conv.messages
        self.context: list[dict] = [dict(m) for m in msgs[:1] if m["role"] == "system"]
        self.users = [m["content"] for m in msgs if m["role"] == "user"]
        self.finish_reasons: list[str | None] = []

    @property
    def turn(self) -> int:
        return len(self.finish_reasons)

    @property
    def finished(self) -> bool:
        return self.turn >= len(self.users)

    def next_messages(self) -> Messages:
        return self.context + [{"role": "user", "content": self.users[self.turn]}]

    def accept(self, result: TurnResult) -> None:
        self.context.append({"role": "user", "content": self.users[self.turn]})
        self.context.append({"role": "assistant", "content": result.text})
        self.finish_reasons.append(result.finish_reason)

    def row(self) -> dict:
        return {"id": self.id, "conversations": self.context, "finish_reasons": self.finish_reasons}


def _check_answer(result: TurnResult) -> TurnResult:
    # An empty answer would be dropped by the training reader anyway ("empty_answer"); say so here.
    if result.error is None and (result.text is None or not result.text.strip()):
        return TurnResult(error=f"the target produced an empty answer (finish reason {result.finish_reason!r})",
                          reason="empty_answer")
    return result


# ----------------------------------------------------------------------------- hf backend

class HFBackend:
    """transformers ``generate``, batched with left padding. For machines without vLLM."""

    name = "hf"
    default_batch_size = 8

    def __init__(self, *, model: str, sampling: SamplingSettings, batch_size: int = 8,
                 device: str | None = None, dtype: str = "auto", log: Log = print):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.sampling = sampling
        self.batch_size = max(1, int(batch_size))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype == "auto":
            # bf16 halves memory on GPU; on CPU fp32 keeps greedy outputs stable and is not slower here.
            torch_dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "left"  # decoder-only: new tokens must follow the prompt directly
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).to(self.device).eval()

        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else []
        eos = [eos] if isinstance(eos, int) else list(eos)
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos:
            eos.append(self.tokenizer.eos_token_id)
        if not eos:
            raise ValueError(f"{model}: neither generation_config.json nor the tokenizer names an end-of-turn "
                             "token; set eos_token_id in generation_config.json")
        self.eos_ids = eos
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else gen.pad_token_id
        self.pad_id = pad if pad is not None else eos[0]
        self.max_len = getattr(self.model.config, "max_position_embeddings", None)
        self.generation_config = self._generation_config(gen)
        torch.manual_seed(sampling.seed if sampling.seed is not None else 0)
        log(f"[regenerate] hf backend: {model} on {self.device} ({torch_dtype}), batch {self.batch_size}, "
            f"sampling {self._describe()}")

    def _generation_config(self, base):
        import copy

        cfg = copy.deepcopy(base)
        o = self.sampling.overrides()
        if "temperature" in o:
            cfg.do_sample = o["temperature"] > 0
            cfg.temperature = o["temperature"] if o["temperature"] > 0 else None
        for key in ("top_p", "top_k", "min_p"):
            if key in o:
                setattr(cfg, key, o[key] if o[key] else None)
        if not cfg.do_sample:  # greedy: sampling knobs would only trigger warnings
            cfg.temperature = cfg.top_p = cfg.top_k = cfg.min_p = None
        cfg.max_new_tokens = self.sampling.max_tokens
        cfg.max_length = None
        cfg.eos_token_id = self.eos_ids
        cfg.pad_token_id = self.pad_id
        return cfg

    def _describe(self) -> str:
        c = self.generation_config
        if not c.do_sample:
            return f"greedy, max_tokens {self.sampling.max_tokens}"
        return (f"temperature {c.temperature}, top_p {c.top_p}, top_k {c.top_k}, min_p {c.min_p}, "
                f"max_tokens {self.sampling.max_tokens}")

    def generate(self, batch: Sequence[Messages]) -> list[TurnResult]:
        import torch

        results: list[TurnResult | None] = [None] * len(batch)
        prompts: list[tuple[int, list[int]]] = []
        for i, messages in enumerate(batch):
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                      **self.sampling.chat_template_kwargs)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if self.max_len and len(ids) + self.sampling.max_tokens > self.max_len:
                results[i] = TurnResult(
                    error=f"prompt of {len(ids)} tokens + max_tokens {self.sampling.max_tokens} exceeds the "
                          f"model's context length {self.max_len}; lower --max-tokens or shorten the conversation",
                    reason="prompt_too_long")
            else:
                prompts.append((i, ids))
        prompts.sort(key=lambda p: len(p[1]))  # similar lengths together: less padding
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start:start + self.batch_size]
            width = max(len(ids) for _, ids in chunk)
            input_ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (_, ids) in enumerate(chunk):
                input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
                attention[row, width - len(ids):] = 1
            with torch.inference_mode():
                out = self.model.generate(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device),
                                          generation_config=self.generation_config)
            new = out[:, width:].tolist()
            for row, (i, _) in enumerate(chunk):
                tokens = new[row]
                stop = next((k for k, t in enumerate(tokens) if t in self.eos_ids), None)
                if stop is not None:
                    tokens, finish = tokens[:stop], "stop"
                else:
                    finish = "length"
                results[i] = TurnResult(text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                                        finish_reason=finish)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- vllm backend

def _cuda_device_ids() -> list[str]:
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

    def __init__(self, *, model: str, sampling: SamplingSettings, tensor_parallel_size: int = 1,
                 max_model_len: int | None = None, gpu_memory_utilization: float = 0.9,
                 enforce_eager: bool | None = None, log: Log = print):
        on_gpu = bool(_cuda_device_ids())
        _prepare_vllm_env(on_gpu)
        try:
            from vllm import LLM, SamplingParams
        except ImportError as e:
            raise RuntimeError(
                f"cannot import vllm ({e}). Install it with `bash scripts/data/setup_vllm_env.sh` and run this "
                "script with .venv-vllm/bin/python, or use --backend hf (no vLLM) / --backend openai (a server)"
            ) from e

        self.sampling = sampling
        kwargs = dict(model=model, tensor_parallel_size=tensor_parallel_size,
                      seed=sampling.seed if sampling.seed is not None else 0,
                      # CUDA graphs pay off on GPU; on CPU there are none and eager is what works.
                      enforce_eager=(not on_gpu) if enforce_eager is None else enforce_eager)
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        if on_gpu:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        self.llm = LLM(**kwargs)
        # Start from the target's generation_config.json (what vLLM itself would use), then apply overrides.
        defaults = self.llm.get_default_sampling_params()
        params = {k: getattr(defaults, k) for k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")}
        params.update(sampling.overrides())
        self.params = SamplingParams(**params, max_tokens=sampling.max_tokens)
        log(f"[regenerate] vllm backend: {model} ({'GPU' if on_gpu else 'CPU'}, tp {tensor_parallel_size}, "
            f"enforce_eager {kwargs['enforce_eager']}), sampling "
            + ", ".join(f"{k} {v}" for k, v in params.items()) + f", max_tokens {sampling.max_tokens}")

    def generate(self, batch: Sequence[Messages]) -> list[TurnResult]:
        outputs = self.llm.chat(list(batch), self.params, use_tqdm=False,
                                chat_template_kwargs=self.sampling.chat_template_kwargs)
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


# ----------------------------------------------------------------------------- openai backend

def _base_url(address: str) -> str:
    """``host:port`` / ``http://host:port`` / ``http://host:port/v1`` -> ``http://host:port/v1``."""
    addr = address.strip().rstrip("/")
    if not addr:
        raise ValueError("empty --server-address")
    if "://" not in addr:
        addr = "http://" + addr
    parsed = urllib.parse.urlparse(addr)
    try:
        port = parsed.port
    except ValueError:
        port = None
    if not parsed.hostname or port is None:
        raise ValueError(f"--server-address {address!r} is not HOST:PORT (e.g. 127.0.0.1:8000)")
    path = parsed.path.rstrip("/")
    if not path.endswith("/v1"):
        path += "/v1"
    return f"{parsed.scheme}://{parsed.netloc}{path}"


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlparse(url).hostname or ""
    return host == "localhost" or host.startswith("127.") or host == "::1"


class _HTTPStatusError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(f"HTTP {code}: {message}")
        self.code = code


class OpenAIBackend:
    """Chat completions from OpenAI-compatible servers, requests spread round-robin.

    Standard library only. Connection problems, timeouts, HTTP 408/429 and 5xx are
    retried with exponential backoff (on the next server); other 4xx answers (a
    prompt too long for the model, say) fail the conversation at once.
    """

    name = "openai"
    default_batch_size = 64  # here: the number of concurrent requests

    def __init__(self, *, servers: Sequence[str], model: str | None, sampling: SamplingSettings,
                 timeout: float = 600.0, max_retries: int = 5, backoff: float = 1.0,
                 api_key: str | None = None, log: Log = print):
        if not servers:
            raise ValueError("the openai backend needs at least one --server-address host:port; start servers "
                             "with `bash scripts/data/launch_vllm_server.sh --model MODEL`")
        self.sampling = sampling
        self.timeout = timeout
        self.max_retries = max(0, int(max_retries))
        self.backoff = backoff
        self.api_key = api_key
        self.stop = threading.Event()
        self._direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
        self._default = urllib.request.build_opener()
        self._rr = itertools.count()
        self._rr_lock = threading.Lock()
        self.bases = self._reachable([_base_url(s) for s in servers], log)
        self.model = self._resolve_model(model, log)
        log(f"[regenerate] openai backend: {len(self.bases)} server(s) {', '.join(self.bases)}, model {self.model!r}, "
            f"sampling overrides {sampling.overrides() or 'none (server defaults)'}, max_tokens {sampling.max_tokens}")

    # -- http
    def _request(self, url: str, payload: dict | None = None, *, timeout: float) -> dict:
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        req = urllib.request.Request(url, data=data, method="GET" if payload is None else "POST")
        req.add_header("Content-Type", "application/json")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        opener = self._direct if _is_loopback(url) else self._default
        try:
            with opener.open(req, timeout=timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")
            try:
                detail = json.loads(detail).get("error", {}).get("message", detail) if detail.startswith("{") else detail
            except (ValueError, AttributeError):
                pass
            raise _HTTPStatusError(e.code, str(detail)[:500]) from None
        return json.loads(body)

    def _reachable(self, bases: list[str], log: Log) -> list[str]:
        ok = []
        for base in bases:
            try:
                self._request(base + "/models", timeout=min(10.0, self.timeout))
                ok.append(base)
            except Exception as e:  # noqa: BLE001 - any failure means "not usable"
                log(f"[regenerate] WARNING: server {base} does not answer ({e}); leaving it out")
        if not ok:
            raise RuntimeError(f"no server answered at {', '.join(bases)}. Start them with "
                               "`bash scripts/data/launch_vllm_server.sh --model MODEL` and pass the "
                               "--server-address values it prints")
        return ok

    def _resolve_model(self, model: str | None, log: Log) -> str:
        served = [m.get("id") for m in self._request(self.bases[0] + "/models", timeout=30).get("data", [])]
        if model is None:
            if not served:
                raise RuntimeError(f"{self.bases[0]} serves no model; pass --model")
            return served[0]
        if model in served or not served:
            return model
        # The server names a model by the path it was started with; accept the same folder spelled differently.
        for name in served:
            if os.path.exists(model) and os.path.exists(name) and os.path.samefile(model, name):
                log(f"[regenerate] --model {model} is served as {name!r}")
                return name
        raise RuntimeError(f"--model {model!r} is not served by {self.bases[0]} (it serves {served}); pass one of "
                           "those or leave --model out to use the first")

    def _next_base(self) -> str:
        with self._rr_lock:
            return self.bases[next(self._rr) % len(self.bases)]

    def payload(self, messages: Messages) -> dict:
        body = {"model": self.model, "messages": messages, "max_tokens": self.sampling.max_tokens,
                "chat_template_kwargs": self.sampling.chat_template_kwargs}
        body.update(self.sampling.overrides())  # top_k / min_p travel as extra body fields vLLM understands
        if self.sampling.seed is not None:
            body["seed"] = self.sampling.seed
        return body

    def generate_one(self, messages: Messages) -> TurnResult:
        body = self.payload(messages)
        last = "no attempt made"
        for attempt in range(self.max_retries + 1):
            if self.stop.is_set():
                return TurnResult(error="interrupted", reason="interrupted")
            base = self._next_base()
            try:
                resp = self._request(base + "/chat/completions", body, timeout=self.timeout)
                choice = resp["choices"][0]
                msg = choice.get("message") or {}
                content = msg.get("content")
                reasoning = msg.get("reasoning_content") or msg.get("reasoning")
                if reasoning:  # a server started with a reasoning parser splits the think block off; put it back
                    content = f"<think>\n{reasoning}\n</think>\n\n{content or ''}"
                if content is None:
                    return TurnResult(error=f"{base} returned no message content: {str(resp)[:300]}")
                return TurnResult(text=content, finish_reason=choice.get("finish_reason"))
            except _HTTPStatusError as e:
                last = f"{base}: {e}"
                if e.code not in (408, 429) and e.code < 500:
                    return _failure(last, "rejected_by_server")
            except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
                # OSError covers refused connections, resets and timeouts; ValueError covers broken JSON.
                last = f"{base}: {type(e).__name__}: {e}"
            if attempt < self.max_retries:
                delay = min(60.0, self.backoff * (2 ** attempt)) * (0.5 + random.random())
                self.stop.wait(delay)
        return TurnResult(error=f"gave up after {self.max_retries + 1} attempts; last error {last}",
                          reason="server_unavailable")

    def generate(self, batch: Sequence[Messages]) -> list[TurnResult]:
        return [self.generate_one(m) for m in batch]

    def close(self) -> None:
        self.stop.set()


# ----------------------------------------------------------------------------- input and output files

class _RecordingReport(SkipReport):
    """A SkipReport that also hands every bad line to a callback (for the error file)."""

    def __init__(self, on_error: Callable[[DataError], None] | None):
        super().__init__()
        self.on_error = on_error

    def add(self, error: DataError) -> None:
        super().add(error)
        if self.on_error is not None:
            self.on_error(error)


def _iter_jobs(input_path, *, num_samples: int | None, done_ids: set, shard: tuple[int, int] = (0, 1),
               on_bad: Callable[[str | None, str, str, str], None] | None = None,
               on_skip: Callable[[str], None] | None = None) -> Iterator[_Job]:
    """Valid input conversations still to do, in file order.

    ``on_bad(id, where, reason, message)`` hears about bad lines and duplicate ids;
    ``on_skip(id)`` about conversations already in the output. Only the shard
    ``index % world == rank`` is yielded (the callbacks hear about every line).
    """
    rank, world = shard
    report = _RecordingReport(
        (lambda e: on_bad(None, e.where, e.reason, e.detail)) if on_bad is not None else None)
    seen: set[str] = set()
    index = 0
    for conv in read_conversations(input_path, report=report):
        if num_samples is not None and index >= num_samples:
            break
        if conv.id in seen:
            # Resume matches rows by id, so two inputs with one id cannot both be tracked.
            if on_bad is not None:
                on_bad(conv.id, "", "duplicate_id", f"id {conv.id!r} appears more than once in the input; "
                                                    "only the first is regenerated (give every line a unique id)")
            continue
        seen.add(conv.id)
        i, index = index, index + 1
        if conv.id in done_ids:
            if on_skip is not None:
                on_skip(conv.id)
            continue
        if i % world == rank:
            yield _Job(conv, i)


def _count_lines(path) -> int:
    p = Path(path)
    files = sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    n = 0
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                n += chunk.count(b"\n")
    return n


def _done_ids_and_repair(path: Path, log: Log) -> set:
    """Ids already in ``path``; cuts off a half-written last line left by a crash."""
    ids: set = set()
    if not path.exists():
        return ids
    with open(path, "rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            log(f"[regenerate] {path}: dropping a half-written last line ({len(data) - end} bytes) left by an "
                "interrupted run")
            f.truncate(end)
    bad = 0
    for line in data[:end].splitlines():
        if not line.strip():
            continue
        try:
            ids.add(str(json.loads(line)["id"]))
        except (ValueError, KeyError, TypeError):
            bad += 1
    if bad:
        log(f"[regenerate] WARNING: {bad} lines of {path} are not output rows; they are left as they are")
    return ids


class _Appender:
    """Appends JSON lines and flushes each, so a crash loses at most rows not yet written."""

    def __init__(self, path: Path, *, truncate: bool):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.f = open(path, "w" if truncate else "a", encoding="utf-8")
        self.count = 0

    def write(self, row: dict) -> None:
        self.f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.f.flush()
        self.count += 1

    def close(self) -> None:
        self.f.close()


# ----------------------------------------------------------------------------- drivers

def _failure(message: str, default: str = "generation_failed") -> TurnResult:
    # vLLM (in-process or server) words an over-long prompt like this; give it the hf backend's reason.
    lowered = message.lower()
    too_long = "maximum context length" in lowered or "maximum model length" in lowered
    return TurnResult(error=message, reason="prompt_too_long" if too_long else default)


def _generate_isolating(backend, batch: list[Messages]) -> list[TurnResult]:
    """One backend call; if it raises, retry item by item so one bad prompt fails only itself."""
    try:
        results = backend.generate(batch)
        if len(results) != len(batch):
            raise RuntimeError(f"backend returned {len(results)} results for {len(batch)} requests")
        return results
    except Exception as e:  # noqa: BLE001 - reported per conversation
        if len(batch) == 1:
            return [_failure(f"{type(e).__name__}: {e}")]
    out = []
    for messages in batch:
        try:
            out.extend(backend.generate([messages]))
        except Exception as e:  # noqa: BLE001
            out.append(_failure(f"{type(e).__name__}: {e}"))
    return out


def _run_batched(jobs: Iterator[_Job], backend, *, batch_size: int, on_done, on_fail) -> None:
    """Waves of one turn per active conversation; finished ones are replaced from the input at once."""
    active: list[_Job] = []
    exhausted = False
    while True:
        while not exhausted and len(active) < batch_size:
            job = next(jobs, None)
            if job is None:
                exhausted = True
            elif job.finished:  # nothing to generate (cannot happen for valid input, kept for safety)
                on_done(job)
            else:
                active.append(job)
        if not active:
            return
        results = _generate_isolating(backend, [j.next_messages() for j in active])
        still = []
        for job, result in zip(active, results):
            result = _check_answer(result)
            if result.error is not None:
                on_fail(job, result)
                continue
            job.accept(result)
            if job.finished:
                on_done(job)
            else:
                still.append(job)
        active = still


def _run_concurrent(jobs: Iterator[_Job], backend: OpenAIBackend, *, concurrency: int, on_done, on_fail) -> None:
    """Each conversation runs on a worker thread, turn after turn; writing stays on this thread."""

    def work(job: _Job):
        while not job.finished:
            result = _check_answer(backend.generate_one(job.next_messages()))
            if result.error is not None:
                return job, result
            job.accept(result)
        return job, None

    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="regen")
    pending: set = set()

    def drain(block_until_below: int) -> None:
        nonlocal pending
        while len(pending) > block_until_below:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                job, failure = fut.result()
                if failure is not None:
                    on_fail(job, failure)
                else:
                    on_done(job)

    try:
        for job in jobs:
            pending.add(pool.submit(work, job))
            drain(2 * concurrency)  # bounded queue: memory stays flat on huge inputs
        drain(0)
    except BaseException:
        backend.stop.set()  # retry loops give up at once; requests on the wire end within the timeout
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _vllm_worker(rank: int, world: int, devices: str, settings: dict, queue) -> None:
    """One data-parallel engine (a spawned process): generates its shard, reports rows on ``queue``."""
    try:
        # Lead a process group of our own, so the parent can stop vLLM's engine processes with us.
        os.setpgrp()
        if devices:
            os.environ["CUDA_VISIBLE_DEVICES"] = devices
        sampling = SamplingSettings(**settings["sampling"])
        backend = VLLMBackend(model=settings["model"], sampling=sampling, log=lambda m: print(f"[dp{rank}] {m}"),
                              **settings["engine"])
        jobs = _iter_jobs(settings["input_path"], num_samples=settings["num_samples"],
                          done_ids=set(settings["done_ids"]), shard=(rank, world))
        _run_batched(jobs, backend, batch_size=settings["batch_size"],
                     on_done=lambda j: queue.put(("done", j.row())),
                     on_fail=lambda j, r: queue.put(("fail", j.id, j.turn, r.reason, r.error)))
        # A spawned child runs no atexit hooks, so vLLM's engine processes must be stopped
        # explicitly, or this process waits for them forever when it exits.
        backend.close()
        queue.put(("exit", rank, None))
    except BaseException as e:  # noqa: BLE001 - the parent must hear why
        queue.put(("exit", rank, f"{type(e).__name__}: {e}"))
        raise


# ----------------------------------------------------------------------------- top level

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
    """Regenerate every assistant turn of ``input_path`` into ``output_path``. See the module docstring."""
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


def _signal_group(proc, sig) -> None:
    """Signal a data-parallel worker and the engine processes in its process group."""
    if proc.pid is None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _run_data_parallel(*, jobs: Iterator[_Job], dp: int, tp: int, devices: list[str], settings: dict,
                       on_row, on_fail, log: Log) -> list[str]:
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
        group = ",".join(devices[rank * tp:(rank + 1) * tp]) if devices else ""
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


# ----------------------------------------------------------------------------- command line

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
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="generate_train_data.py",
        description="Regenerate every assistant turn of a conversation JSONL file with the target model, so the "
                    "draft learns from the target's own answers. User turns are kept; turn k is conditioned on the "
                    "regenerated turns before it.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("input and output")
    io.add_argument("--input-file-path", required=True, help="conversation JSONL ({\"id\", \"conversations\"} lines, "
                    "ShareGPT roles accepted), or a folder of them")
    io.add_argument("--output-file-path", required=True, help="JSONL to write; failures go to <stem>_error.jsonl")
    io.add_argument("--num-samples", type=int, default=None, help="only the first N valid conversations (default: all)")
    io.add_argument("--resume", action="store_true", help="keep the rows already in the output and do only the "
                    "missing ids (failed ones are retried)")
    io.add_argument("--overwrite", action="store_true", help="start the output over if it already has rows")

    m = p.add_argument_group("model and backend")
    m.add_argument("--backend", choices=["vllm", "openai", "hf"], default=None,
                   help="vllm: in-process engine; openai: HTTP servers; hf: transformers generate "
                        "(default: vllm when importable, else hf)")
    m.add_argument("--model", default=None, help="target model folder or hub name (openai backend: the served "
                   "model name; default there: the first model the server lists)")
    m.add_argument("--batch-size", type=int, default=None,
                   help="conversations generated together per call (hf: %d, vllm: %d)"
                        % (HFBackend.default_batch_size, VLLMBackend.default_batch_size))
    m.add_argument("--dtype", default="auto", help="hf backend weights dtype: auto (bf16 on GPU, fp32 on CPU), "
                   "float32, bfloat16, float16")

    s = p.add_argument_group("sampling (unset = the target's own generation_config.json)")
    s.add_argument("--temperature", type=float, default=None, help="0 = greedy")
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--top-k", type=int, default=None, help="0 or -1 = off")
    s.add_argument("--min-p", type=float, default=None)
    s.add_argument("--max-tokens", type=int, default=2048, help="new tokens per assistant turn (default: 2048)")
    s.add_argument("--seed", type=int, default=None, help="sampling seed (hf and vllm default to 0; openai sends "
                   "it per request only when given)")
    think = s.add_mutually_exclusive_group()
    think.add_argument("--enable-thinking", dest="enable_thinking", action="store_true",
                       help="chat template kwarg enable_thinking=True (Qwen3 think blocks)")
    think.add_argument("--disable-thinking", dest="enable_thinking", action="store_false",
                       help="enable_thinking=False (the default)")
    p.set_defaults(enable_thinking=False)

    v = p.add_argument_group("vllm backend")
    v.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs per engine")
    v.add_argument("--data-parallel-size", type=int, default=None,
                   help="engines, one process each on its own GPU group (default: visible GPUs / tensor parallel "
                        "size; 1 on CPU)")
    v.add_argument("--max-model-len", type=int, default=None, help="engine context length (default: the model's)")
    v.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    v.add_argument("--enforce-eager", dest="enforce_eager", action="store_true", default=None,
                   help="no CUDA graphs (always on for CPU)")

    o = p.add_argument_group("openai backend")
    o.add_argument("--server-address", action="append", default=[], metavar="HOST:PORT",
                   help="an OpenAI-compatible server; repeat for several (requests go round-robin)")
    o.add_argument("--concurrency", type=int, default=None,
                   help="requests in flight across all servers (default: %d)" % OpenAIBackend.default_batch_size)
    o.add_argument("--request-timeout", type=float, default=600.0, help="seconds per request (default: 600)")
    o.add_argument("--max-retries", type=int, default=5, help="retries per request with exponential backoff")
    o.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="bearer token, if the servers want "
                   "one (default: $OPENAI_API_KEY)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _exit_on_sigterm(signum, _frame):
    # Turn `kill PID` into an exception, so files are closed and engine processes stopped on the way out.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    backend = args.backend or default_backend()
    try:
        sampling = SamplingSettings(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                    min_p=args.min_p, max_tokens=args.max_tokens, seed=args.seed,
                                    enable_thinking=args.enable_thinking)
        summary = regenerate(
            input_path=args.input_file_path, output_path=args.output_file_path, backend=backend, model=args.model,
            sampling=sampling, num_samples=args.num_samples, resume=args.resume, overwrite=args.overwrite,
            batch_size=args.batch_size, server_addresses=args.server_address, concurrency=args.concurrency,
            request_timeout=args.request_timeout, max_retries=args.max_retries, api_key=args.api_key,
            tensor_parallel_size=args.tensor_parallel_size, data_parallel_size=args.data_parallel_size,
            max_model_len=args.max_model_len, gpu_memory_utilization=args.gpu_memory_utilization,
            enforce_eager=args.enforce_eager, dtype=args.dtype, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished conversations are in the output; continue with --resume", file=sys.stderr)
        return 130
    print(summary.text())
    if summary.failed:
        print(f"failures are listed in {error_path_for(args.output_file_path)} (a --resume run tries the failed "
              "conversations again)")
    print(f"output: {args.output_file_path}")
    if summary.broken_workers or (summary.failed and summary.ok == 0):
        return 1
    return 0
