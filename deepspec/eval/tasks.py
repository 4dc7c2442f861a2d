"""Evaluation tasks: which benchmarks exist, how many prompts each uses, where their prompts live.

A task is ``<eval data dir>/<name>.jsonl``, one ``{"turns": [str, ...]}`` per line; the first user
turn is the prompt. The nine known tasks carry the paper's sample counts and a domain (math, code,
chat) for the per-domain averages; any other ``<name>.jsonl`` in the folder is a custom task in
the domain "other".
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from deepspec.errors import DeepSpecError

# name -> (paper sample count, domain), in the paper's table order.
KNOWN_TASKS: dict[str, tuple[int, str]] = {
    "gsm8k": (500, "math"),
    "math500": (500, "math"),
    "aime25": (30, "math"),
    "humaneval": (164, "code"),
    "mbpp": (256, "code"),
    "livecodebench": (500, "code"),
    "mt-bench": (80, "chat"),
    "alpaca": (500, "chat"),
    "arena-hard-v2": (500, "chat"),
}
DOMAINS = ("math", "code", "chat")
CUSTOM_DOMAIN = "other"
ENV_VAR = "DEEPSPEC_EVAL_DATA_DIR"
BUILD_HINT = "python eval_datasets/build_eval_datasets.py"
# The known tasks whose prompt files ship in eval_datasets/ (their sources' licenses allow it; NOTICE).
# The others are fetched by the user with BUILD_HINT.
SHIPPED_TASKS = ("gsm8k", "math500", "humaneval", "mbpp", "mt-bench")
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "eval_datasets"  # the checkout's folder of them

# Task names become file names: keep them to one plain path component.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class EvalDataError(DeepSpecError, ValueError):
    """The requested tasks or their prompt files are unusable; the message says what to change."""


@dataclass
class TaskSpec:
    name: str
    count: int  # prompts to use (the first ``count`` lines; fewer if the file is shorter)
    domain: str
    path: Path


def default_eval_data_dir() -> Path:
    """``$DEEPSPEC_EVAL_DATA_DIR`` if set, else ``<repo root>/eval_datasets`` (the shipped prompt files)."""
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else SHIPPED_DIR


def task_domain(name: str) -> str:
    """The domain of a task name: math / code / chat for the known tasks, "other" otherwise."""
    return KNOWN_TASKS[name][1] if name in KNOWN_TASKS else CUSTOM_DOMAIN


def domains_of(tasks: list[TaskSpec]) -> dict[str, str]:
    """``{task name: domain}``, the mapping the metrics and report functions take."""
    return {t.name: t.domain for t in tasks}


def _jsonl_files(data_dir: Path) -> list[str]:
    return sorted(p.stem for p in data_dir.glob("*.jsonl") if p.is_file())


def _count_nonblank_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _parse_count(item: str, raw: str) -> int:
    try:
        count = int(raw)
    except ValueError:
        raise EvalDataError(
            f"task entry {item!r}: the count {raw!r} is not an integer; write <task>:<positive integer>, e.g. gsm8k:20"
        ) from None
    if count < 1:
        raise EvalDataError(
            f"task entry {item!r}: the count must be at least 1; "
            "write <task>:<positive integer> or leave the count out for the paper's number"
        )
    return count


def parse_tasks(
    spec: str | None, *, eval_data_dir: str | os.PathLike | None = None
) -> tuple[list[TaskSpec], list[str]]:
    """Resolve a task list such as ``"gsm8k:20,mt-bench,humaneval:5"`` into ``(tasks, absent)``.

    ``None`` or ``""`` means all nine known tasks with the paper's counts. A known task without a
    count uses its paper count; a custom task without a count uses every line of its file. Known
    tasks whose file is absent are left out and named in ``absent`` (a checkout ships five of the
    nine; :func:`absent_tasks_line` says how to fetch the rest); unknown names, bad counts, a
    missing folder, or nothing left to run raise ``EvalDataError``.
    """
    data_dir = Path(eval_data_dir) if eval_data_dir is not None else default_eval_data_dir()
    if not data_dir.is_dir():
        raise EvalDataError(
            f"eval data folder {str(data_dir)!r} does not exist; point --eval-data-dir or "
            f"${ENV_VAR} at a folder of <task>.jsonl files, or build it with {BUILD_HINT}"
        )

    if spec is None or not spec.strip():
        requested = [(name, None) for name in KNOWN_TASKS]
    else:
        requested = []
        for item in spec.split(","):
            item = item.strip()
            if not item:
                raise EvalDataError(
                    f"task list {spec!r} has an empty entry; separate task names with single "
                    "commas, e.g. gsm8k:20,mt-bench"
                )
            name, sep, raw = item.partition(":")
            name = name.strip()
            if name.endswith(".jsonl"):  # accept file names as well as task names
                name = name[: -len(".jsonl")]
            requested.append((name, _parse_count(item, raw.strip()) if sep else None))

    names = [n for n, _ in requested]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise EvalDataError(f"task list names {dupes} more than once; list each task once")

    tasks: list[TaskSpec] = []
    absent: list[str] = []
    for name, count in requested:
        if not _NAME_RE.match(name):
            raise EvalDataError(
                f"task name {name!r} is not a plain name; use a known task "
                f"({', '.join(KNOWN_TASKS)}) or the stem of a .jsonl file in {data_dir}"
            )
        path = data_dir / f"{name}.jsonl"
        if name in KNOWN_TASKS:
            if not path.is_file():
                absent.append(name)
                continue
            paper_count, domain = KNOWN_TASKS[name]
            tasks.append(TaskSpec(name=name, count=count or paper_count, domain=domain, path=path))
        elif path.is_file():
            tasks.append(
                TaskSpec(name=name, count=count or _count_nonblank_lines(path), domain=CUSTOM_DOMAIN, path=path)
            )
        else:
            present = _jsonl_files(data_dir)
            raise EvalDataError(
                f"unknown task {name!r}: known tasks are {', '.join(KNOWN_TASKS)}; "
                f".jsonl files in {data_dir}: {', '.join(present) if present else '(none)'}"
            )

    if not tasks:
        raise EvalDataError(
            f"none of the requested tasks has a prompt file in {data_dir} (absent: {', '.join(absent)}); "
            f"evaluate a shipped task ({', '.join(SHIPPED_TASKS)}), point --eval-data-dir or ${ENV_VAR} "
            f"at the folder that holds them, or fetch them with {fetch_command(absent, data_dir=data_dir)}"
        )
    if any(t.count == 0 for t in tasks):
        empty = [t.name for t in tasks if t.count == 0]
        raise EvalDataError(f"task file(s) {empty} in {data_dir} hold no prompts; fill or remove them")
    return tasks, absent


def fetch_command(names: list[str], *, data_dir: str | os.PathLike) -> str:
    """The command that writes the prompt files of ``names`` into ``data_dir`` (needs the hub)."""
    cmd = f"{BUILD_HINT} --tasks {','.join(names)}"
    if Path(data_dir).resolve() != SHIPPED_DIR:
        cmd += f" --output-dir {data_dir}"
    return cmd


def absent_tasks_line(absent: list[str], *, data_dir: str | os.PathLike) -> str:
    """One line naming the requested tasks without a prompt file, and the command that fetches them."""
    return (
        f"not evaluated, no prompt file in {data_dir}: {', '.join(absent)} "
        f"(not shipped: see eval_datasets/README.md); fetch them with: {fetch_command(absent, data_dir=data_dir)}"
    )


def load_prompts(task: TaskSpec) -> list[str]:
    """The first user turn of the first ``task.count`` non-blank lines (fewer if the file is shorter)."""
    prompts: list[str] = []
    with open(task.path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if len(prompts) >= task.count:
                break
            if not line.strip():
                continue
            where = f"{task.path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalDataError(
                    f'{where}: not valid JSON ({e.msg}); each line must be one {{"turns": ["<user turn>", ...]}} object'
                ) from None
            turns = row.get("turns") if isinstance(row, dict) else None
            if not isinstance(turns, list) or not turns:
                raise EvalDataError(
                    f'{where}: needs a non-empty "turns" list of user turns, e.g. {{"turns": ["What is 2+2?"]}}'
                )
            first = turns[0]
            if not isinstance(first, str) or not first.strip():
                raise EvalDataError(f'{where}: "turns"[0] must be a non-empty string (the first user turn)')
            prompts.append(first)
    return prompts
