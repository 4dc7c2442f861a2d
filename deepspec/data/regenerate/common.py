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
from deepspec.data.regenerate.identity import RECORD_KEY
from deepspec.errors import DeepSpecError, InputProtectionError

Messages = list  # list of {"role", "content"} dicts
Log = Callable[[str], None]


class RegenerationError(DeepSpecError, ValueError):
    """A setting or file that does not fit; the message says what to change."""


class OutputExistsError(DeepSpecError, FileExistsError):
    """The output already has rows and neither --resume nor --overwrite was given."""


class BackendUnavailable(DeepSpecError, RuntimeError):
    """The backend cannot run here (no vLLM, no server answering, a model that does not load)."""


# ----------------------------------------------------------------------------- settings and results


@dataclass(frozen=True)
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
            raise RegenerationError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature is not None and self.temperature < 0:
            raise RegenerationError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise RegenerationError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise RegenerationError(f"min_p must be in [0, 1], got {self.min_p}")

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
    attempted: int = 0  # conversations that needed generating (not already in the output)

    @property
    def nothing_to_do(self) -> bool:
        return self.attempted == 0 and self.skipped > 0

    def text(self) -> str:
        lines = [
            f"regenerated {self.ok} conversations, failed {self.failed}, "
            f"skipped {self.skipped} (already in the output) in {self.seconds:.1f}s"
        ]
        if self.finish_reasons:
            lines.append(
                "  assistant turns by finish reason: "
                + ", ".join(f"{k} {v}" for k, v in self.finish_reasons.most_common())
            )
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


class ConversationJob:
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


def check_answer(result: TurnResult) -> TurnResult:
    """``result``, or a failure (reason ``empty_answer``) when the answer is empty: every driver calls it."""
    # An empty answer would be dropped by the training reader anyway ("empty_answer"); say so here.
    if result.error is None and (result.text is None or not result.text.strip()):
        return TurnResult(
            error=f"the target produced an empty answer (finish reason {result.finish_reason!r})", reason="empty_answer"
        )
    return result


def failed_turn(message: str, default: str = "generation_failed") -> TurnResult:
    """A failed turn saying ``message``, with reason ``prompt_too_long`` when that is what it says, else ``default``."""
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


def iter_jobs(
    input_files,
    *,
    num_samples: int | None,
    done_ids: set,
    shard: tuple[int, int] = (0, 1),
    on_bad: Callable[[str | None, str, str, str], None] | None = None,
    on_skip: Callable[[str], None] | None = None,
) -> Iterator[ConversationJob]:
    """Valid input conversations still to do, in file order.

    ``input_files`` is the list made before any output was opened, so nothing written is read back.
    ``on_bad(id, where, reason, message)`` hears about bad lines and duplicate ids;
    ``on_skip(id)`` about conversations already in the output. Only the shard
    ``index % world == rank`` is yielded (the callbacks hear about every line).
    """
    rank, world = shard
    report = _RecordingReport((lambda e: on_bad(None, e.where, e.reason, e.detail)) if on_bad is not None else None)
    seen: set[str] = set()
    index = 0
    for conv in read_conversations(list(input_files), report=report):
        if num_samples is not None and index >= num_samples:
            break
        if conv.id in seen:
            # Resume matches rows by id, so two inputs with one id cannot both be tracked.
            if on_bad is not None:
                on_bad(
                    conv.id,
                    "",
                    "duplicate_id",
                    f"id {conv.id!r} appears more than once in the input; "
                    "only the first is regenerated (give every line a unique id)",
                )
            continue
        seen.add(conv.id)
        i, index = index, index + 1
        if conv.id in done_ids:
            if on_skip is not None:
                on_skip(conv.id)
            continue
        if i % world == rank:
            yield ConversationJob(conv, i)


def count_lines(files) -> int:
    """Lines in ``files``, counted as bytes without parsing: the progress bar's total, known at once."""
    n = 0
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                n += chunk.count(b"\n")
    return n


@dataclass
class OutputScan:
    """What an existing output holds, read without changing it (checks come before any write)."""

    ids: set = field(default_factory=set)
    models: Counter = field(default_factory=Counter)  # (model, fingerprint) of each row's record
    legacy_rows: int = 0  # rows without a record (older versions)
    not_rows: int = 0
    torn_tail: int = 0  # bytes of a half-written last line left by a crash
    tail_row: bool = False  # the last line lacks only its newline: it is a whole row, keep it


def _parse_row(line: bytes):
    try:
        row = json.loads(line)
        return row if isinstance(row, dict) and "id" in row else None
    except ValueError:
        return None


def scan_output(path: Path) -> OutputScan:
    """What an existing output at ``path`` holds (for --resume), without changing it: checks come first."""
    scan = OutputScan()
    if not path.exists():
        return scan
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    lines = data[:end].splitlines()
    if end < len(data):
        if data[end:].strip() and _parse_row(data[end:]) is not None:
            scan.tail_row = True
            lines.append(data[end:])
        else:
            scan.torn_tail = len(data) - end
    for line in lines:
        if not line.strip():
            continue
        row = _parse_row(line)
        if row is None:
            scan.not_rows += 1
            continue
        scan.ids.add(str(row["id"]))
        rec = row.get(RECORD_KEY)
        if isinstance(rec, dict) and rec.get("fingerprint"):
            scan.models[(str(rec.get("model")), str(rec["fingerprint"]))] += 1
        else:
            scan.legacy_rows += 1
    return scan


def repair_tail(path: Path, scan: OutputScan, log: Log) -> None:
    """Cut off a half-written last line left by a crash, or end a whole last row with its newline."""
    if scan.torn_tail:
        log(
            f"[regenerate] {path}: dropping a half-written last line ({scan.torn_tail} bytes) left by an "
            "interrupted run"
        )
        with open(path, "rb+") as f:
            f.truncate(path.stat().st_size - scan.torn_tail)
    elif scan.tail_row:
        with open(path, "ab") as f:
            f.write(b"\n")
    if scan.not_rows:
        log(f"[regenerate] WARNING: {scan.not_rows} lines of {path} are not output rows; they are left as they are")


def _looks_like_error_file(path: Path) -> bool:
    """Every line a failure record we write ({"id", "reason", "message"}): then it is ours to replace."""
    try:
        with open(path, "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                row = json.loads(line)
                if not (isinstance(row, dict) and {"id", "reason", "message"} <= set(row)):
                    return False
    except (OSError, ValueError):
        return False
    return True


def check_error_file(path: Path) -> None:
    """Refuse when the error file's place holds a file we did not write (we replace only our own)."""
    if path.exists() and (path.is_dir() or not _looks_like_error_file(path)):
        raise InputProtectionError(
            f"{path} is where failures of this output go, but it already exists and is not a failure list "
            "written by generate_train_data.py; move it away or choose another --output-file-path"
        )


def clear_stale_errors(path: Path) -> None:
    """The error file lists this run's failures only: an earlier run's list (checked to be ours) goes."""
    check_error_file(path)
    if path.exists() and path.stat().st_size:
        path.unlink()


class JsonlAppender:
    """Appends JSON lines and flushes each, so a crash loses at most rows not yet written.

    The file is opened at the first row: a run that writes nothing creates nothing.
    """

    def __init__(self, path: Path, *, truncate: bool = False):
        self.path = path
        self.mode = "w" if truncate else "a"
        self.f = None
        self.count = 0

    def write(self, row: dict) -> None:
        if self.f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.f = open(self.path, self.mode, encoding="utf-8")
        self.f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.f.flush()
        self.count += 1

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
