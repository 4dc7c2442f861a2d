#!/usr/bin/env python
"""Build the benchmark prompt files (<task>.jsonl) from their public sources.

Every output line is {"turns": ["<user turn>", ...]}; evaluation uses the first
turn (mt-bench keeps both of its turns). The nine tasks, their sources and the
source fields each prompt is made of:

  task           source (Hugging Face hub)                       split  fields used
  gsm8k          openai/gsm8k, config main                       test   question
  math500        HuggingFaceH4/MATH-500                          test   problem
  aime25         MathArena/aime_2025                             train  problem
  humaneval      openai/openai_humaneval                         test   prompt
  mbpp           google-research-datasets/mbpp, config sanitized test   prompt
  livecodebench  livecodebench/code_generation_lite,             -      question_content, starter_code
                 files of --lcb-version (default release_v6)
  mt-bench       HuggingFaceH4/mt_bench_prompts                  train  prompt (the list of turns)
  alpaca         tatsu-lab/alpaca                                train  instruction, input
  arena-hard-v2  lmarena-ai/arena-hard-auto,                     -      prompt
                 file data/arena-hard-v2.0/question.jsonl

Prompt formats (inferred from the shared prompt files the evaluation was set up with):
  gsm8k, math500, aime25  <text> + "\\nPlease reason step by step, and put your final answer within \\boxed{}."
  humaneval      "Write a solution to the following problem and make sure that it passes the
                 tests:\\n```python\\n" + <prompt> + "\\n```"
  mbpp           <prompt> alone (the shared file has no test asserts in the prompt)
  livecodebench  the LiveCodeBench "expert Python programmer" template: question, then the
                 starter code block (or "# YOUR CODE HERE" when there is none), then the answer line
  mt-bench       both turns as they are
  alpaca         <instruction>, or <instruction> + "\\n\\nInput:\\n" + <input> when input is not blank
  arena-hard-v2  <prompt> as it is

Rows are taken in source order and the first N are kept (N: --num-samples, default
the paper's count per task), as the paper uses the first N rows of each file. Alpaca
is the exception: it is a seeded shuffle (--seed) of tatsu-lab/alpaca, first N kept;
a larger N keeps the smaller sample as its prefix.

Offline / air-gapped use: copy each source once to a folder as <task>.jsonl, .json
(JSON lines or one array) or .parquet -- or a folder <task>/ of such files, read in
natural order (livecodebench: a clone of code_generation_lite; the files of
--lcb-version are used when the folder holds them all) -- and pass --source-dir.
The rows must have the source's columns (see FIELDS below).

Known uncertainties (fix them in FIELDS / SOURCES / the templates at the top of the file):
  * arena-hard-v2: the v2.0 questions are read from data/arena-hard-v2.0/question.jsonl
    (750 rows: 500 hard prompts, then 250 creative-writing ones; field "prompt").
  * livecodebench: release_v6 (1055 problems) matches the shared file; the row order is
    the hub files' order (test.jsonl, test2.jsonl, ...). The template was inferred from
    the shared file, not from LiveCodeBench's code.
  * mbpp: the shared file (257 rows, all of the sanitized test split) holds the bare
    prompt, so no test list is appended; the paper uses 256 of them.
  * alpaca: no shared file exists and the paper's selection is unknown; a seeded sample
    is our choice.

Examples:
  python eval_datasets/build_eval_datasets.py                         # all nine, from the hub
  python eval_datasets/build_eval_datasets.py --tasks gsm8k,mt-bench --num-samples 20
  python eval_datasets/build_eval_datasets.py --source-dir /data/eval_sources --overwrite
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

if importlib.util.find_spec("deepspec") is None:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepspec.eval.tasks import KNOWN_TASKS as _TASK_TABLE  # noqa: E402
from deepspec.fsio import atomic_write  # noqa: E402

SCRIPT_NAME = "eval_datasets/build_eval_datasets.py"
DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parent
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")

# ----------------------------------------------------------------------------- the tables to edit

# Paper sample counts (the default --num-samples), in the paper's table order: eval.py's task table.
PAPER_COUNTS: dict[str, int] = {name: count for name, (count, _) in _TASK_TABLE.items()}
KNOWN_TASKS = tuple(PAPER_COUNTS)

# Tasks that are a seeded sample of their source; every other task keeps its first N rows.
SAMPLED_TASKS = frozenset({"alpaca"})


@dataclass(frozen=True, kw_only=True)
class HubSource:
    """Where a task's rows live on the hub: a data set split, or (``files``) JSON-lines files of the repo."""

    repo: str
    split: str = "train"
    config: str | None = None
    files: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.files:
            return f"{self.repo} ({', '.join(self.files)})"
        return f"{self.repo} ({'config ' + self.config + ', ' if self.config else ''}split {self.split})"


# LiveCodeBench release -> files of livecodebench/code_generation_lite (releases are cumulative).
LCB_REPO = "livecodebench/code_generation_lite"
LCB_VERSION_FILES: dict[str, tuple[str, ...]] = {
    f"release_v{n}": tuple("test.jsonl" if k == 1 else f"test{k}.jsonl" for k in range(1, n + 1)) for n in range(1, 7)
}
LCB_VERSION_FILES.update({f"v{n}": ("test.jsonl" if n == 1 else f"test{n}.jsonl",) for n in range(1, 7)})
DEFAULT_LCB_VERSION = "release_v6"

SOURCES: dict[str, HubSource] = {
    "gsm8k": HubSource(repo="openai/gsm8k", config="main", split="test"),
    "math500": HubSource(repo="HuggingFaceH4/MATH-500", split="test"),
    "aime25": HubSource(repo="MathArena/aime_2025", split="train"),
    "humaneval": HubSource(repo="openai/openai_humaneval", split="test"),
    "mbpp": HubSource(repo="google-research-datasets/mbpp", config="sanitized", split="test"),
    "livecodebench": HubSource(repo=LCB_REPO, files=LCB_VERSION_FILES[DEFAULT_LCB_VERSION]),
    "mt-bench": HubSource(repo="HuggingFaceH4/mt_bench_prompts", split="train"),
    "alpaca": HubSource(repo="tatsu-lab/alpaca", split="train"),
    "arena-hard-v2": HubSource(repo="lmarena-ai/arena-hard-auto", files=("data/arena-hard-v2.0/question.jsonl",)),
}

# task -> {what the converter needs: source column names, the first one present wins}.
# If a source renames a column, change it here (e.g. "question": ("question", "new_name")).
FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "gsm8k": {"question": ("question",)},
    "math500": {"problem": ("problem",)},
    "aime25": {"problem": ("problem",)},
    "humaneval": {"prompt": ("prompt",)},
    "mbpp": {"prompt": ("prompt",)},
    "livecodebench": {"question": ("question_content",), "starter_code": ("starter_code",)},
    "mt-bench": {"turns": ("prompt", "turns")},  # "turns": FastChat's question.jsonl
    "alpaca": {"instruction": ("instruction",), "input": ("input",)},
    "arena-hard-v2": {"prompt": ("prompt",)},
}

# Prompt templates, as found in the shared prompt files.
BOXED_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."
HUMANEVAL_PREFIX = "Write a solution to the following problem and make sure that it passes the tests:\n```python\n"
HUMANEVAL_SUFFIX = "\n```"
LCB_PREFIX = (
    "You are an expert Python programmer. You will be given a question (problem specification) and "
    "will generate a correct Python program that matches the specification and passes all tests. "
    "You will NOT return anything except for the program\n\n### Question:\n"
)
LCB_WITH_STARTER = "### Format: Use the following code structure:\n```python\n{starter_code}\n```\n\n"
LCB_WITHOUT_STARTER = "### Format: Write your code in the following format:\n```python\n# YOUR CODE HERE\n```\n\n"
LCB_ANSWER = "### Answer: (use the provided format with backticks)"
ALPACA_INPUT_SEPARATOR = "\n\nInput:\n"


# ----------------------------------------------------------------------------- errors


class BuildError(RuntimeError):
    """Something the user has to fix (flags, files, network); the message says what."""

    written: tuple = ()  # set by build(): the tasks finished before the failure


class HubError(BuildError):
    """The hub could not be reached or did not have the source."""


class ConversionError(ValueError):
    """A source row lacks a field or has one of the wrong type."""


# ----------------------------------------------------------------------------- conversion (pure)


def _field(row: Mapping, *, task: str, role: str, required: bool = True):
    names = FIELDS[task][role]
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    if not required:
        return None
    wanted = " or ".join(repr(n) for n in names)
    raise ConversionError(
        f"{task}: the source row has no {wanted} field, or it is null (the row has "
        f"{sorted(row)}); if the "
        f"source renamed it, edit FIELDS[{task!r}][{role!r}] at the top of {SCRIPT_NAME}"
    )


def _text(row: Mapping, *, task: str, role: str, required: bool = True) -> str:
    value = _field(row, task=task, role=role, required=required)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConversionError(
            f"{task}: field {role!r} must be a string, got {type(value).__name__}; "
            f"check FIELDS[{task!r}][{role!r}] at the top of {SCRIPT_NAME}"
        )
    if required and not value.strip():
        raise ConversionError(f"{task}: field {role!r} is blank; the source row is unusable")
    return value


def convert_gsm8k(row: Mapping) -> dict:
    """``question`` + the step-by-step ``\\boxed{}`` suffix."""
    return {"turns": [_text(row, task="gsm8k", role="question") + BOXED_SUFFIX]}


def convert_math500(row: Mapping) -> dict:
    """``problem`` + the step-by-step ``\\boxed{}`` suffix."""
    return {"turns": [_text(row, task="math500", role="problem") + BOXED_SUFFIX]}


def convert_aime25(row: Mapping) -> dict:
    """``problem`` + the step-by-step ``\\boxed{}`` suffix."""
    return {"turns": [_text(row, task="aime25", role="problem") + BOXED_SUFFIX]}


def convert_humaneval(row: Mapping) -> dict:
    """The function stub ``prompt`` in a python code block behind a one-line instruction."""
    return {"turns": [HUMANEVAL_PREFIX + _text(row, task="humaneval", role="prompt") + HUMANEVAL_SUFFIX]}


def convert_mbpp(row: Mapping) -> dict:
    """The task description ``prompt`` as it is."""
    return {"turns": [_text(row, task="mbpp", role="prompt")]}


def convert_livecodebench(row: Mapping) -> dict:
    """LiveCodeBench's template: question, starter code (or a placeholder block), answer line."""
    question = _text(row, task="livecodebench", role="question")
    starter = _text(row, task="livecodebench", role="starter_code", required=False)
    fmt = LCB_WITH_STARTER.format(starter_code=starter) if starter.strip() else LCB_WITHOUT_STARTER
    return {"turns": [LCB_PREFIX + question + "\n\n" + fmt + LCB_ANSWER]}


def convert_mt_bench(row: Mapping) -> dict:
    """Every turn of the ``prompt`` list (two in MT-Bench)."""
    turns = _field(row, task="mt-bench", role="turns")
    if isinstance(turns, tuple):
        turns = list(turns)
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns) or not turns[0].strip():
        raise ConversionError(
            f"mt-bench: field 'turns' must be a non-empty list of strings, got {turns!r:.200}; "
            f"check FIELDS['mt-bench'] at the top of {SCRIPT_NAME}"
        )
    return {"turns": list(turns)}


def convert_alpaca(row: Mapping) -> dict:
    """``instruction``, plus ``"\\n\\nInput:\\n" + input`` when the input is not blank."""
    instruction = _text(row, task="alpaca", role="instruction")
    extra = _text(row, task="alpaca", role="input", required=False)
    return {"turns": [instruction + ALPACA_INPUT_SEPARATOR + extra if extra.strip() else instruction]}


def convert_arena_hard_v2(row: Mapping) -> dict:
    """The user turn ``prompt`` as it is."""
    return {"turns": [_text(row, task="arena-hard-v2", role="prompt")]}


CONVERTERS: dict[str, Callable[[Mapping], dict]] = {
    "gsm8k": convert_gsm8k,
    "math500": convert_math500,
    "aime25": convert_aime25,
    "humaneval": convert_humaneval,
    "mbpp": convert_mbpp,
    "livecodebench": convert_livecodebench,
    "mt-bench": convert_mt_bench,
    "alpaca": convert_alpaca,
    "arena-hard-v2": convert_arena_hard_v2,
}


# ----------------------------------------------------------------------------- reading sources


def _natural_key(path: Path):
    """test.jsonl < test2.jsonl < test10.jsonl: numbers in the stem compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.stem)], path.suffix


def _iter_json_file(path: Path) -> Iterator[tuple[str, object]]:
    """Rows of a JSON-lines file, or of a .json file holding one array."""
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    if path.suffix == ".json" and head.startswith(b"["):
        try:
            items = json.loads(path.read_bytes())
        except json.JSONDecodeError as e:
            raise BuildError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); fix or re-download it") from None
        for i, item in enumerate(items):
            yield f"{path.name}[{i}]", item
        return
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path.name}:{lineno}", json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise BuildError(
                    f"{path}:{lineno} is not valid JSON ({e}); each line must be one JSON object "
                    "(or give a .json file holding one array)"
                ) from None


def _iter_parquet_file(path: Path) -> Iterator[tuple[str, object]]:
    import pyarrow.parquet as pq

    i = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield f"{path.name}[{i}]", row
            i += 1


def iter_local_file(path: Path) -> Iterator[tuple[str, object]]:
    """``(where, row)`` for each row of a local .jsonl / .json / .parquet file."""
    if path.suffix == ".parquet":
        return _iter_parquet_file(path)
    return _iter_json_file(path)


def find_local_source(source_dir: Path, *, task: str, lcb_version: str) -> list[Path]:
    """The local file(s) of ``task``: ``<task>.jsonl|.json|.parquet`` or a folder ``<task>/`` of them."""
    candidates = [source_dir / f"{task}{suffix}" for suffix in LOCAL_SUFFIXES]
    found = [p for p in candidates if p.is_file()]
    folder = source_dir / task
    if folder.is_dir():
        found.append(folder)
    if not found:
        raise BuildError(
            f"--source-dir {source_dir} has no source for {task!r}: put its rows in "
            f"{task}.jsonl, {task}.json, {task}.parquet or a folder {task}/ there "
            f"(source: {SOURCES[task].describe()}), or leave {task} out of --tasks"
        )
    if len(found) > 1:
        raise BuildError(
            f"--source-dir {source_dir} has several sources for {task!r} "
            f"({', '.join(p.name for p in found)}); keep only one"
        )
    if found[0].is_file():
        return found
    files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix in LOCAL_SUFFIXES), key=_natural_key)
    if task == "livecodebench":  # a clone of the hub repo: use the files of the chosen release
        names = {p.name for p in files}
        wanted = LCB_VERSION_FILES[lcb_version]
        if all(name in names for name in wanted):
            files = [folder / name for name in wanted]
    if not files:
        raise BuildError(f"{folder} holds no {', '.join(LOCAL_SUFFIXES)} files for {task!r}")
    return files


def _iter_local_rows(files: list[Path]) -> Iterator[tuple[str, object]]:
    for path in files:
        yield from iter_local_file(path)


def _hub_hint(what: str, err: BaseException) -> str:
    detail = f"{type(err).__name__}: {err}"
    if len(detail) > 400:
        detail = detail[:400] + " ..."
    return (
        f"could not load {what} from the Hugging Face hub ({detail}). Check the name and the network; "
        f"on a machine without internet access, copy the sources elsewhere and build from local copies "
        f"with --source-dir DIR (see --help)"
    )


def _iter_hub_rows(source: HubSource) -> Iterator[tuple[str, object]]:
    if source.files:
        try:
            from huggingface_hub import hf_hub_download
        except ImportError:
            raise BuildError(
                "reading from the hub needs huggingface_hub (pip install huggingface_hub datasets), "
                "or build from local copies with --source-dir"
            ) from None
        for name in source.files:  # one at a time: later files are fetched only when rows are still wanted
            try:
                path = hf_hub_download(repo_id=source.repo, filename=name, repo_type="dataset")
            except Exception as e:  # noqa: BLE001 - network/hub errors come in many types
                raise HubError(_hub_hint(f"{source.repo}/{name}", e)) from None
            for where, row in _iter_json_file(Path(path)):
                yield f"{source.repo}/{where}", row
        return
    try:
        from datasets import load_dataset
    except ImportError:
        raise BuildError(
            "reading from the hub needs the datasets library (pip install datasets), "
            "or build from local copies with --source-dir"
        ) from None
    try:
        ds = load_dataset(source.repo, source.config, split=source.split)
    except Exception as e:  # noqa: BLE001
        raise HubError(_hub_hint(source.describe(), e)) from None
    for i, row in enumerate(ds):
        yield f"{source.repo}[{source.split}][{i}]", row


def hub_source(task: str, *, lcb_version: str) -> HubSource:
    """The hub source of ``task``; livecodebench's files follow ``lcb_version``."""
    if task == "livecodebench":
        return HubSource(repo=LCB_REPO, files=LCB_VERSION_FILES[lcb_version])
    return SOURCES[task]


# ----------------------------------------------------------------------------- selection and building


@dataclass
class TaskResult:
    task: str
    rows: int
    path: Path
    source: str
    note: str = ""


def parse_task_list(spec: str | Iterable[str] | None) -> list[str]:
    """``"gsm8k, mt-bench"`` (or a list) -> task names in the given order; ``None``/``"all"`` -> all nine."""
    if spec is None:
        return list(KNOWN_TASKS)
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [item.strip() for item in items if item.strip()]
    if not names:
        raise BuildError(f"--tasks is empty; give a comma list of {', '.join(KNOWN_TASKS)} (or leave it out for all)")
    if names == ["all"]:
        return list(KNOWN_TASKS)
    unknown = [n for n in names if n not in PAPER_COUNTS]
    if unknown:
        raise BuildError(
            f"unknown task(s) {', '.join(repr(n) for n in unknown)}; known tasks: {', '.join(KNOWN_TASKS)}"
        )
    return list(dict.fromkeys(names))  # drop repeats, keep order


def parse_max_samples(raw: str | int | None) -> int | None:
    """``None`` -> the paper counts; ``"all"`` -> 0 (no cap); else a positive integer."""
    if raw is None:
        return None
    if isinstance(raw, str):
        if raw.strip().lower() == "all":
            return 0
        try:
            raw = int(raw)
        except ValueError:
            raise BuildError(f"--num-samples {raw!r} is not a number; give a positive integer or 'all'") from None
    if raw < 1:
        raise BuildError(f"--num-samples must be at least 1 (or 'all' for every row), got {raw}")
    return raw


def _limit(task: str, max_samples: int | None) -> int | None:
    if max_samples is None:
        return PAPER_COUNTS[task]
    return max_samples or None  # 0: every row


def select_rows(
    rows: Iterable[tuple[str, object]], *, limit: int | None, sample: bool, seed: int
) -> tuple[list[tuple[str, object]], int | None]:
    """First ``limit`` rows, or (``sample``) the first ``limit`` of a seeded shuffle; also the source size if read."""
    if not sample:
        # islice stops before pulling row limit+1, so no further source file is fetched for it
        out = list(rows if limit is None else itertools.islice(rows, limit))
        return out, (len(out) if limit is None or len(out) < limit else None)
    everything = list(rows)
    order = list(range(len(everything)))
    random.Random(seed).shuffle(order)  # Mersenne Twister: the same order on every platform
    if limit is not None:
        order = order[:limit]
    return [everything[i] for i in order], len(everything)


def convert_rows(task: str, rows: list[tuple[str, object]], *, progress: bool = False) -> list[dict]:
    from tqdm.auto import tqdm

    convert = CONVERTERS[task]
    out = []
    for where, row in tqdm(rows, desc=task, unit="row", disable=not progress, dynamic_ncols=True, leave=False):
        if not isinstance(row, Mapping):
            raise BuildError(f"{where}: a {task} source row must be a JSON object, got {type(row).__name__}")
        try:
            out.append(convert(row))
        except ConversionError as e:
            raise BuildError(f"{where}: {e}") from None
    return out


def render_jsonl(records: Iterable[dict]) -> str:
    """One ``{"turns": [...]}`` object a line, non-ASCII kept as is (as in the shared files)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def _refuse_existing(paths: list[Path]) -> None:
    existing = [p for p in paths if p.exists()]
    if existing:
        raise BuildError(
            f"{', '.join(str(p) for p in existing)} already exist(s); pass --overwrite to replace "
            "them, or choose another --output-dir"
        )


def build(
    *,
    tasks: list[str] | str | None = None,
    output_dir: str | Path = DEFAULT_OUTPUT_DIR,
    source_dir: str | Path | None = None,
    max_samples: int | str | None = None,
    overwrite: bool = False,
    seed: int = 0,
    lcb_version: str = DEFAULT_LCB_VERSION,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[TaskResult]:
    """Write ``<output_dir>/<task>.jsonl`` for each task; returns what was written.

    Raises :class:`BuildError` (or its :class:`HubError`) with a message meant for the user.
    Everything that can be checked before reading any source (names, limits, existing outputs,
    local source files) is checked first, so a run never fails half-way for those reasons.
    """
    names = parse_task_list(tasks)
    cap = parse_max_samples(max_samples)
    if lcb_version not in LCB_VERSION_FILES:
        raise BuildError(f"unknown --lcb-version {lcb_version!r}; known: {', '.join(LCB_VERSION_FILES)}")
    output_dir = Path(output_dir)
    targets = {task: output_dir / f"{task}.jsonl" for task in names}
    if output_dir.exists() and not output_dir.is_dir():
        raise BuildError(f"--output-dir {output_dir} is a file; give a folder")
    if not overwrite:
        _refuse_existing(list(targets.values()))
    local: dict[str, list[Path]] = {}
    if source_dir is not None:
        source_dir = Path(source_dir)
        if not source_dir.is_dir():
            raise BuildError(
                f"--source-dir {source_dir} is not a folder; create it with the local copies "
                "of the sources (see --help)"
            )
        local = {task: find_local_source(source_dir, task=task, lcb_version=lcb_version) for task in names}
    output_dir.mkdir(parents=True, exist_ok=True)

    results: list[TaskResult] = []
    try:
        for task in names:
            results.append(
                _build_task(
                    task,
                    target=targets[task],
                    local=local.get(task),
                    limit=_limit(task, cap),
                    overwrite=overwrite,
                    seed=seed,
                    lcb_version=lcb_version,
                    progress=progress,
                    log=log,
                )
            )
    except BuildError as e:
        e.written = results  # what was finished before the failure (each file is complete)
        raise
    return results


def _build_task(
    task: str,
    *,
    target: Path,
    local: list[Path] | None,
    limit: int | None,
    overwrite: bool,
    seed: int,
    lcb_version: str,
    progress: bool,
    log: Callable[[str], None],
) -> TaskResult:
    if local is not None:
        where = ", ".join(str(p) for p in local)
        log(f"[build] {task}: reading {where}")
        rows = _iter_local_rows(local)
    else:
        source = hub_source(task, lcb_version=lcb_version)
        where = source.describe()
        log(f"[build] {task}: loading {where} from the hub")
        rows = _iter_hub_rows(source)
    sample = task in SAMPLED_TASKS
    picked, total = select_rows(rows, limit=limit, sample=sample, seed=seed)
    if not picked:
        raise BuildError(f"{task}: the source {where} holds no rows")
    records = convert_rows(task, picked, progress=progress)
    if not overwrite:
        _refuse_existing([target])  # created since the check at the start?
    atomic_write(target, render_jsonl(records))
    notes = []
    if sample:
        notes.append(f"seeded sample (seed {seed}) of {total} rows")
    if limit is not None and len(records) < limit:
        notes.append(f"only {len(records)} source row{'' if len(records) == 1 else 's'}, fewer than {limit}")
    return TaskResult(task=task, rows=len(records), path=target, source=where, note="; ".join(notes))


def format_summary(results: list[TaskResult]) -> str:
    width = max([len("task")] + [len(r.task) for r in results])
    lines = [f"{'task':<{width}}  {'rows':>5}  output"]
    for r in results:
        lines.append(f"{r.task:<{width}}  {r.rows:>5}  {r.path}" + (f"  ({r.note})" if r.note else ""))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    counts = ", ".join(f"{t} {n}" for t, n in PAPER_COUNTS.items())
    p = argparse.ArgumentParser(
        prog="build_eval_datasets.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--output-dir",
        default=str(DEFAULT_OUTPUT_DIR),
        help="folder for the <task>.jsonl files (default: the folder of this script, eval_datasets/)",
    )
    p.add_argument(
        "--tasks", default=None, help=f"comma list of tasks to build (default: all nine: {', '.join(KNOWN_TASKS)})"
    )
    p.add_argument("--max-samples", dest="num_samples", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # old name
    p.add_argument(
        "--num-samples",
        default=None,
        metavar="N",
        help=f"keep at most N rows per task, or 'all' for every source row (default: the paper's counts: {counts})",
    )
    p.add_argument(
        "--source-dir",
        default=None,
        metavar="DIR",
        help="offline mode: read each task's source rows from DIR/<task>.jsonl, .json, .parquet or "
        "a folder DIR/<task>/ instead of the hub (for machines without internet access)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace existing output files (default: refuse and change nothing)"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help=f"seed of the sampled tasks ({', '.join(sorted(SAMPLED_TASKS))}); the others keep their "
        "first N rows (default: 0)",
    )
    p.add_argument(
        "--lcb-version",
        default=DEFAULT_LCB_VERSION,
        choices=list(LCB_VERSION_FILES),
        metavar="VERSION",
        help=f"LiveCodeBench release: release_v1 .. release_v6 (cumulative) or v1 .. v6 (one release's "
        f"problems only) (default: {DEFAULT_LCB_VERSION}, 1055 problems)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        results = build(
            tasks=args.tasks,
            output_dir=args.output_dir,
            source_dir=args.source_dir,
            max_samples=args.num_samples,
            overwrite=args.overwrite,
            seed=args.seed,
            lcb_version=args.lcb_version,
            progress=not args.no_progress,
        )
    except BuildError as e:
        written = getattr(e, "written", None)
        if written:
            print("written before the error:\n" + format_summary(written))
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
