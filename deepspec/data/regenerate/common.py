"""Shared pieces of answer regeneration: sampling settings, results, the summary,
a conversation in flight, and the input / output / resume / error files."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from deepspec.data.conversations import Conversation, DataError, SkipReport, read_conversations

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


def _failure(message: str, default: str = "generation_failed") -> TurnResult:
    # vLLM (in-process or server) words an over-long prompt like this; give it the hf backend's reason.
    lowered = message.lower()
    too_long = "maximum context length" in lowered or "maximum model length" in lowered
    return TurnResult(error=message, reason="prompt_too_long" if too_long else default)


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
