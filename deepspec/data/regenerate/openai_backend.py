"""The ``openai`` backend: OpenAI-compatible servers, spoken to with the standard library only."""

from __future__ import annotations

import itertools
import json
import os
import random
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Sequence

from deepspec.data.regenerate.common import (
    BackendUnavailable,
    Log,
    Messages,
    RegenerationError,
    SamplingSettings,
    TurnResult,
    failed_turn,
)

# $OPENAI_API_KEY goes to this host only: sending it to any other server hands the key to whoever runs it.
OFFICIAL_HOST = "api.openai.com"
ENV_KEY = "OPENAI_API_KEY"


def base_url(address: str) -> str:
    """``host:port`` / ``http://host:port`` / ``http://host:port/v1`` -> ``http://host:port/v1``."""
    addr = address.strip().rstrip("/")
    if not addr:
        raise RegenerationError("empty --server-address; pass HOST:PORT (e.g. 127.0.0.1:8000)")
    if "://" not in addr:
        addr = "http://" + addr
    parsed = urllib.parse.urlparse(addr)
    try:
        port = parsed.port
    except ValueError:
        port = None
    if not parsed.hostname or port is None:
        raise RegenerationError(f"--server-address {address!r} is not HOST:PORT (e.g. 127.0.0.1:8000)")
    if parsed.scheme not in ("http", "https"):
        raise RegenerationError(f"--server-address {address!r}: only http:// and https:// servers are supported")
    path = parsed.path.rstrip("/")
    if not path.endswith("/v1"):
        path += "/v1"
    return f"{parsed.scheme}://{parsed.netloc}{path}"


def check_servers(servers: Sequence[str]) -> list[str]:
    """The base URL of every ``--server-address``; refuses none at all and any that is not HOST:PORT."""
    if not servers:
        raise RegenerationError(
            "the openai backend needs at least one --server-address host:port; start servers "
            "with `bash scripts/data/launch_vllm_server.sh --model MODEL`"
        )
    return [base_url(s) for s in servers]


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlparse(url).hostname or ""
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _is_official(url: str) -> bool:
    parsed = urllib.parse.urlparse(url)
    return parsed.scheme == "https" and (parsed.hostname or "").lower() == OFFICIAL_HOST


def key_for(url: str, explicit: str | None) -> str | None:
    """The bearer token for ``url``: the key the user gave, else $OPENAI_API_KEY for the official API only."""
    if explicit:
        return explicit
    return (os.environ.get(ENV_KEY) or None) if _is_official(url) else None


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

    def __init__(
        self,
        *,
        servers: Sequence[str],
        model: str | None,
        sampling: SamplingSettings,
        timeout: float = 600.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        api_key: str | None = None,
        log: Log = print,
    ):
        bases = check_servers(servers)
        self.sampling = sampling
        self.timeout = timeout
        self.max_retries = max(0, int(max_retries))
        self.backoff = backoff
        self.api_key = api_key  # explicit: sent to every server; else see key_for
        self.stop = threading.Event()
        self._direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
        self._default = urllib.request.build_opener()
        self._rr = itertools.count()
        self._rr_lock = threading.Lock()
        if api_key:
            for base in bases:
                if base.startswith("http://") and not _is_loopback(base):
                    log(
                        f"[regenerate] WARNING: the API key goes to {base} over plain http, readable on the way; "
                        "use https:// for servers on other machines"
                    )
        self.bases = self._reachable(bases, log)
        self.model = self._resolve_model(model, log)
        log(
            f"[regenerate] openai backend: {len(self.bases)} server(s) {', '.join(self.bases)}, model {self.model!r}, "
            f"sampling overrides {sampling.overrides() or 'none (server defaults)'}, max_tokens {sampling.max_tokens}"
        )

    # -- http
    def _request(self, url: str, payload: dict | None = None, *, timeout: float) -> dict:
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        req = urllib.request.Request(url, data=data, method="GET" if payload is None else "POST")
        req.add_header("Content-Type", "application/json")
        key = key_for(url, self.api_key)
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        opener = self._direct if _is_loopback(url) else self._default
        try:
            with opener.open(req, timeout=timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")
            try:
                detail = (
                    json.loads(detail).get("error", {}).get("message", detail) if detail.startswith("{") else detail
                )
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
                hint = ""
                if isinstance(e, _HTTPStatusError) and e.code in (401, 403):
                    hint = (
                        f" - it wants an API key: pass --api-key-env VAR (or --api-key KEY); ${ENV_KEY} is "
                        f"sent to {OFFICIAL_HOST} only"
                    )
                log(f"[regenerate] WARNING: server {base} does not answer ({e}){hint}; leaving it out")
        if not ok:
            raise BackendUnavailable(
                f"no server answered at {', '.join(bases)}. Start them with "
                "`bash scripts/data/launch_vllm_server.sh --model MODEL` and pass the "
                "--server-address values it prints (a server that wants a key needs "
                "--api-key-env VAR or --api-key KEY)"
            )
        return ok

    def _resolve_model(self, model: str | None, log: Log) -> str:
        try:
            listing = self._request(self.bases[0] + "/models", timeout=30)
            served = [m.get("id") for m in listing.get("data", [])]
        except (OSError, ValueError, AttributeError, TypeError, _HTTPStatusError) as e:
            raise BackendUnavailable(
                f"{self.bases[0]}/models did not list the served models ({e}); is it an OpenAI-compatible server?"
            ) from None
        if model is None:
            if not served:
                raise BackendUnavailable(f"{self.bases[0]} serves no model; pass --model")
            return served[0]
        if model in served or not served:
            return model
        # The server names a model by the path it was started with; accept the same folder spelled differently.
        for name in served:
            if os.path.exists(model) and os.path.exists(name) and os.path.samefile(model, name):
                log(f"[regenerate] --model {model} is served as {name!r}")
                return name
        raise BackendUnavailable(
            f"--model {model!r} is not served by {self.bases[0]} (it serves {served}); pass one of "
            "those or leave --model out to use the first"
        )

    def _next_base(self) -> str:
        with self._rr_lock:
            return self.bases[next(self._rr) % len(self.bases)]

    def payload(self, messages: Messages) -> dict:
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.sampling.max_tokens,
            "chat_template_kwargs": self.sampling.chat_template_kwargs,
        }
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
                    return failed_turn(last, "rejected_by_server")
            except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
                # OSError covers refused connections, resets and timeouts; ValueError covers broken JSON.
                last = f"{base}: {type(e).__name__}: {e}"
            if attempt < self.max_retries:
                delay = min(60.0, self.backoff * (2**attempt)) * (0.5 + random.random())
                self.stop.wait(delay)
        return TurnResult(
            error=f"gave up after {self.max_retries + 1} attempts; last error {last}", reason="server_unavailable"
        )

    def generate(self, batch: Sequence[Messages]) -> list[TurnResult]:
        return [self.generate_one(m) for m in batch]

    def close(self) -> None:
        self.stop.set()
