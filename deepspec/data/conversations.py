"""Reading and validating training conversations (JSONL).

One conversation per line::

    {"id": "...", "conversations": [{"role": "user", "content": "..."},
                                     {"role": "assistant", "content": "..."}, ...]}

Also accepted: ShareGPT messages (``{"from": "human", "value": "..."}``) and a
top-level ``messages`` key instead of ``conversations``.

Validation rules (each failure is a :class:`DataError` with a ``reason`` key;
:func:`read_conversations` counts and skips them unless ``strict=True``):

* roles are normalised case-insensitively: human/user -> ``user``;
  gpt/assistant/model/bot/chatgpt -> ``assistant``; ``system`` is allowed only
  as the first message;
* after the optional system message, turns must strictly alternate
  user, assistant, user, ... starting with user.  Consecutive turns of the same
  role are rejected rather than merged: merging silently changes what the
  target sees (two answers glued together are not an answer the model gave),
  and such lines are rare enough that dropping them costs nothing;
* a conversation may end with a user turn: prompt files for answer
  regeneration look exactly like that, and the tokenizer simply has nothing to
  supervise after it;
* every content must be a string; assistant answers must not be blank.

Blank lines are ignored silently (editors and ``cat`` leave them around).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, Union

from deepspec.errors import DeepSpecError
from deepspec.fsio import fsync_dir

__all__ = [
    "Conversation",
    "DataError",
    "SkipReport",
    "SKIP_REASONS",
    "normalize_role",
    "normalize_conversation",
    "read_conversations",
    "list_input_files",
    "write_jsonl",
]

PathLike = Union[str, os.PathLike]

_USER_ROLES = {"user", "human"}
_ASSISTANT_ROLES = {"assistant", "gpt", "model", "bot", "chatgpt"}

# Reason key -> short human description (used by SkipReport.summary()).
SKIP_REASONS = {
    "malformed_json": "line is not valid JSON",
    "not_an_object": "line is not a JSON object",
    "no_conversations": "no 'conversations' / 'messages' list",
    "empty_conversation": "conversation has no user/assistant turns",
    "first_turn_not_user": "first non-system turn is not from the user",
    "bad_content": "message content missing or not a string",
    "empty_answer": "assistant answer is empty or whitespace",
    "unknown_role": "unknown message role",
    "misplaced_system": "system message not at the start",
    "not_alternating": "roles do not alternate user/assistant",
    "bad_message": "message is not a JSON object",
    "missing_file": "input file or folder not found (always raised, never skipped)",
}


class DataError(DeepSpecError, ValueError):
    """A training-data problem; ``reason`` is a key of :data:`SKIP_REASONS`."""

    def __init__(self, message: str, *, reason: str, where: str = ""):
        super().__init__(f"{where}: {message}" if where else message)
        self.reason = reason
        self.where = where
        self.detail = message


@dataclass
class Conversation:
    """A validated conversation; ``messages`` are ``{"role", "content"}`` dicts."""

    id: str
    messages: list[dict]

    def to_json(self) -> dict:
        return {"id": self.id, "conversations": self.messages}


@dataclass
class SkipReport:
    """Counts why lines were skipped; keeps the first few examples verbatim."""

    max_examples: int = 10
    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    kept: int = 0

    @property
    def skipped(self) -> int:
        return sum(self.counts.values())

    def add(self, error: DataError) -> None:
        self.counts[error.reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(str(error))

    def summary(self) -> str:
        total = self.kept + self.skipped
        lines = [f"read {total} conversations: kept {self.kept}, skipped {self.skipped}"]
        for reason, n in self.counts.most_common():
            lines.append(f"  {reason}: {n} ({SKIP_REASONS.get(reason, reason)})")
        if self.examples:
            lines.append("first problems:")
            lines.extend(f"  {e}" for e in self.examples)
        return "\n".join(lines)


def normalize_role(role: Any, *, where: str = "") -> str:
    """Map a role spelling to ``user`` / ``assistant`` / ``system``."""
    if not isinstance(role, str):
        raise DataError(f"message role must be a string, got {role!r}", reason="unknown_role", where=where)
    key = role.strip().lower()
    if key in _USER_ROLES:
        return "user"
    if key in _ASSISTANT_ROLES:
        return "assistant"
    if key == "system":
        return "system"
    raise DataError(
        f"unknown role {role!r}; expected one of user/human, assistant/gpt/model/bot/chatgpt, system",
        reason="unknown_role",
        where=where,
    )


def _message(msg: Any, *, where: str, turn: int) -> dict:
    if not isinstance(msg, dict):
        raise DataError(f"message {turn} is not an object: {msg!r:.60}", reason="bad_message", where=where)
    # ShareGPT uses from/value; accept either spelling per message.
    raw_role = msg.get("role", msg.get("from"))
    if raw_role is None:
        raise DataError(f"message {turn} has no 'role' (or 'from') field", reason="unknown_role", where=where)
    role = normalize_role(raw_role, where=where)
    content = msg.get("content", msg.get("value"))
    if content is None:
        raise DataError(f"message {turn} ({role}) has no 'content' (or 'value')", reason="bad_content", where=where)
    if not isinstance(content, str):
        raise DataError(
            f"message {turn} ({role}) content must be a string, got {type(content).__name__}",
            reason="bad_content",
            where=where,
        )
    return {"role": role, "content": content}


def normalize_conversation(obj: Any, *, where: str = "<input>", default_id: str | None = None) -> Conversation:
    """Validate one decoded JSON line and return a normalised :class:`Conversation`.

    ``where`` (e.g. ``"data.jsonl:12"``) prefixes every error message;
    ``default_id`` is used when the object has no ``id`` (falls back to ``where``).
    Raises :class:`DataError` describing the first problem found.
    """
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}", reason="not_an_object", where=where)
    turns = obj.get("conversations")
    if turns is None:
        turns = obj.get("messages")
    if not isinstance(turns, list):
        raise DataError(
            "no 'conversations' (or 'messages') list; each line needs "
            '{"conversations": [{"role": "user", "content": ...}, ...]}',
            reason="no_conversations",
            where=where,
        )
    messages = [_message(m, where=where, turn=i) for i, m in enumerate(turns)]

    body = messages
    if body and body[0]["role"] == "system":
        body = body[1:]
    if not body:
        raise DataError("conversation has no user/assistant turns", reason="empty_conversation", where=where)
    for i, m in enumerate(body):
        if m["role"] == "system":
            raise DataError(
                f"system message at turn {i + len(messages) - len(body)}; only the first message may be system",
                reason="misplaced_system",
                where=where,
            )
    if body[0]["role"] != "user":
        raise DataError(
            f"first non-system turn is {body[0]['role']!r}; conversations must start with the user",
            reason="first_turn_not_user",
            where=where,
        )
    offset = len(messages) - len(body)
    for i, m in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise DataError(
                f"turn {i + offset} is {m['role']!r} but {expected!r} was expected; roles must alternate "
                "user/assistant (merge consecutive turns upstream if that is intended)",
                reason="not_alternating",
                where=where,
            )
        if expected == "assistant" and not m["content"].strip():
            raise DataError(f"assistant answer at turn {i + offset} is empty", reason="empty_answer", where=where)

    raw_id = obj.get("id")
    conv_id = str(raw_id) if raw_id is not None and str(raw_id) != "" else (default_id or where)
    return Conversation(id=conv_id, messages=messages)


def list_input_files(paths: PathLike | Sequence[PathLike]) -> list[Path]:
    """The JSONL files ``paths`` name (a folder gives its ``*.jsonl``), listed now.

    A tool that writes next to its input lists the input first, so that nothing it writes later
    can be read back as input.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(q for q in p.glob("*.jsonl") if q.is_file())
            if not found:
                raise DataError(f"directory {p} contains no *.jsonl files", reason="missing_file")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"training data file not found: {p} (check the data path)", reason="missing_file")
    return out


def read_conversations(
    paths: PathLike | Sequence[PathLike],
    *,
    strict: bool = False,
    report: SkipReport | None = None,
) -> Iterator[Conversation]:
    """Yield valid conversations from one or more JSONL files (or folders of them).

    Invalid lines are counted in ``report`` (pass your own :class:`SkipReport`
    to inspect it afterwards) and skipped; with ``strict=True`` the first
    invalid line raises :class:`DataError` naming file and line instead.
    A missing file always raises.
    """
    files = list_input_files(paths)
    if report is None:
        report = SkipReport()
    for path in files:
        stem = path.stem
        # Binary mode so a bad UTF-8 byte costs one line, not the whole file.
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                where = f"{path.name}:{lineno}"
                try:
                    try:
                        text = raw.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise DataError(f"invalid UTF-8 ({e.reason})", reason="malformed_json", where=where) from None
                    if not text.strip():
                        continue
                    try:
                        obj = json.loads(text)
                    except json.JSONDecodeError as e:
                        raise DataError(
                            f"malformed JSON: {e.msg} at column {e.colno}", reason="malformed_json", where=where
                        ) from None
                    conv = normalize_conversation(obj, where=where, default_id=f"{stem}:{lineno}")
                except DataError as e:
                    if strict:
                        raise
                    report.add(e)
                    continue
                report.kept += 1
                yield conv


def write_jsonl(path: PathLike, rows: Iterable[dict | Conversation]) -> int:
    """Write ``rows`` (dicts or Conversations) as JSONL atomically; returns the row count.

    Written to a temporary file in the same folder, fsynced, then renamed, so a
    crash never leaves a half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    n = 0
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; data files should be shareable
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                if isinstance(row, Conversation):
                    row = row.to_json()
                f.write(json.dumps(row, ensure_ascii=False))
                f.write("\n")
                n += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)
    return n
