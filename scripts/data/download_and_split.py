#!/usr/bin/env python
"""Fetch a conversation data set, normalise it, and split it into train prompts and a held-out eval file.

The source is a Hugging Face hub data set (default mlabonne/open-perfectblend) or a
local .json / .jsonl / .parquet file or a folder of them. Every row is validated
and normalised by deepspec.data.conversations (ShareGPT human/gpt roles become
user/assistant); bad rows are counted by reason and skipped (--strict stops at the
first one instead). Rows are shuffled with --seed, the first --sample-size valid
ones are kept, and --test-size of them are held out.

Outputs (both written atomically, and never onto or inside the local source: that is refused):
  train  {"id": ..., "conversations": [{"role": ..., "content": ...}, ...]} per line
         -- the input of scripts/data/generate_train_data.py
  test   {"id": ..., "turns": [user turn, ...]} per line, the eval_datasets format

Example:
  python scripts/data/download_and_split.py --sample-size 20000 \\
      --train-output-path outputs/data/perfectblend_train.jsonl \\
      --test-output-dir outputs/data/eval_datasets --test-output-name perfectblend
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
from pathlib import Path
from typing import Iterator

try:
    import deepspec  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from deepspec.cli import positive_int  # noqa: E402
from deepspec.data.conversations import DataError, SkipReport, normalize_conversation, write_jsonl  # noqa: E402
from deepspec.errors import DeepSpecError, check_outputs_apart, cli_main  # noqa: E402

DEFAULT_DATASET = "mlabonne/open-perfectblend"
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


def dataset_slug(name: str) -> str:
    """A file-name-safe short name: ``mlabonne/open-perfectblend`` -> ``open-perfectblend``."""
    path = Path(name)
    base = path.stem if path.suffix in LOCAL_SUFFIXES else path.name
    base = base or name.rstrip("/").split("/")[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base) or "dataset"


# ----------------------------------------------------------------------------- loading


class _Rows:
    """Rows of the source, addressable by index: a list (local JSON) or a datasets.Dataset."""

    def __init__(self, parts: list, labels: list[str]):
        self.parts = parts  # each: list of (where, obj | DataError) or a datasets.Dataset
        self.labels = labels
        self.offsets = []
        total = 0
        for part in parts:
            self.offsets.append(total)
            total += len(part)
        self.total = total

    def __len__(self) -> int:
        return self.total

    def iter_order(self, order: list[int], chunk: int = 2048) -> Iterator[tuple[int, str, object]]:
        """Yield ``(index, where, row)`` for the indices in ``order``; rows of a Dataset are read in chunks."""
        import bisect

        for start in range(0, len(order), chunk):
            block = order[start : start + chunk]
            fetched: dict[int, tuple[str, object]] = {}
            by_part: dict[int, list[int]] = {}
            for idx in block:
                p = bisect.bisect_right(self.offsets, idx) - 1
                by_part.setdefault(p, []).append(idx)
            for p, indices in by_part.items():
                part, base = self.parts[p], self.offsets[p]
                if isinstance(part, list):
                    for idx in indices:
                        fetched[idx] = part[idx - base]
                else:  # datasets.Dataset: one select() per chunk is far faster than row-by-row access
                    rows = part.select([idx - base for idx in indices])
                    for idx, row in zip(indices, rows):
                        fetched[idx] = (f"{self.labels[p]}[{idx - base}]", row)
            for idx in block:
                yield (idx, *fetched[idx])


def _read_json_file(path: Path) -> list:
    """JSON lines, or one JSON array; a malformed line becomes a DataError so it is counted, not fatal.

    Read here rather than with datasets' json builder: one malformed line or one row
    whose fields have other types than the rest makes that builder fail on the whole file.
    """
    raw = path.read_bytes()
    head = raw.lstrip()[:1]
    if path.suffix == ".json" and head == b"[":
        try:
            items = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path} is not valid JSON ({e.msg} at line {e.lineno}); fix it or convert it to "
                "JSON lines so bad rows can be skipped one by one",
                reason="malformed_json",
            ) from None
        return [(f"{path.name}[{i}]", item) for i, item in enumerate(items)]
    rows = []
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{lineno}"
        try:
            rows.append((where, json.loads(line)))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            rows.append((where, DataError(f"malformed JSON: {e}", reason="malformed_json", where=where)))
    return rows


def load_rows(*, dataset_name: str, split: str) -> _Rows:
    """Open the source named on the command line (local path or hub data set)."""
    path = Path(dataset_name).expanduser()
    if path.exists():
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in LOCAL_SUFFIXES)
            if not files:
                raise DataError(f"{path} holds no {', '.join(LOCAL_SUFFIXES)} files", reason="no_conversations")
        elif path.suffix in LOCAL_SUFFIXES:
            files = [path]
        else:
            raise DataError(
                f"{path}: unsupported file type {path.suffix!r}; use .jsonl, .json or .parquet",
                reason="no_conversations",
            )
        parts, labels = [], []
        for f in files:
            try:
                if f.suffix == ".parquet":
                    from datasets import load_dataset

                    parts.append(load_dataset("parquet", data_files=str(f), split="train"))
                else:
                    parts.append(_read_json_file(f))
            except DataError:
                raise
            except Exception as e:  # noqa: BLE001 - unreadable or not parquet: arrow and OS errors come in many types
                first = (str(e).strip().splitlines() or [""])[0]
                raise DataError(
                    f"cannot read {f}: {type(e).__name__}: {first}. Check the file (a .parquet must be "
                    "Parquet, a .json/.jsonl JSON)",
                    reason="no_conversations",
                ) from None
            labels.append(f.name)
        return _Rows(parts, labels)
    # Hub ids are NAME or OWNER/NAME: any other spelling is a local path that does not exist.
    if (
        dataset_name.startswith((".", "/", "~"))
        or Path(dataset_name).suffix in LOCAL_SUFFIXES
        or dataset_name.count("/") > 1
        or not dataset_name.strip()
    ):
        raise DataError(f"local data set {dataset_name} not found (check the path)", reason="no_conversations")
    from datasets import load_dataset

    try:
        ds = load_dataset(dataset_name, split=split)
    except Exception as e:  # noqa: BLE001 - hub/network errors come in many types
        raise DataError(
            f"could not load {dataset_name!r} split {split!r} from the Hugging Face hub: "
            f"{type(e).__name__}: {e}. Check the name and network, or pass a local file",
            reason="no_conversations",
        ) from None
    return _Rows([ds], [dataset_slug(dataset_name)])


def _drop_nulls(obj):
    # Arrow gives every message struct all keys seen in the data set (None where absent), so a
    # {"from", "value"} message may also carry "role": None; the normaliser must not see those.
    if isinstance(obj, dict):
        out = dict(obj)
        for key in ("conversations", "messages"):
            if isinstance(out.get(key), list):
                out[key] = [
                    {k: v for k, v in m.items() if v is not None} if isinstance(m, dict) else m for m in out[key]
                ]
        return out
    return obj


# ----------------------------------------------------------------------------- split


class SplitError(DeepSpecError, ValueError):
    """A split setting or output path that cannot work; the message says what to change."""


def split_size(n: int, test_size: float) -> int:
    """Held-out count: a fraction (< 1) rounds up, a number >= 1 is a count; never more than ``n``."""
    if not math.isfinite(test_size) or test_size < 0:
        raise SplitError(f"--test-size must be a share in [0, 1) or a whole count >= 1, got {test_size}")
    k = math.ceil(n * test_size) if test_size < 1 else int(test_size)
    return min(k, n)


def select_and_split(
    rows: _Rows,
    *,
    sample_size: int | None,
    test_size: float,
    seed: int,
    strict: bool,
    report: SkipReport,
    id_prefix: str,
    progress: bool = True,
):
    """Shuffle with ``seed``, keep the first ``sample_size`` valid rows, hold out ``test_size`` of them."""
    from tqdm.auto import tqdm

    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)  # Python's Mersenne Twister: same order on every platform
    want = len(order) if sample_size is None else sample_size
    kept, seen = [], set()
    bar = tqdm(total=min(want, len(order)), desc="normalise", unit="row", disable=not progress, dynamic_ncols=True)
    for index, where, row in rows.iter_order(order):
        if len(kept) >= want:
            break
        try:
            if isinstance(row, DataError):
                raise row
            conv = normalize_conversation(_drop_nulls(row), where=where, default_id=f"{id_prefix}-{index}")
            if conv.id in seen:
                raise DataError(
                    f"duplicate id {conv.id!r}; ids must be unique (regeneration resumes by id)",
                    reason="duplicate_id",
                    where=where,
                )
        except DataError as e:
            if strict:
                raise
            report.add(e)
            continue
        seen.add(conv.id)
        kept.append(conv)
        report.kept += 1
        bar.update(1)
    bar.close()
    n_test = split_size(len(kept), test_size)
    return kept[n_test:], kept[:n_test]


def eval_row(conv) -> dict:
    return {"id": conv.id, "turns": [m["content"] for m in conv.messages if m["role"] == "user"]}


# ----------------------------------------------------------------------------- command line


def _test_size(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a share in [0, 1) or a whole count >= 1, got {text!r}")
    if value >= 1 and value != int(value):
        raise argparse.ArgumentTypeError(f"a count >= 1 must be whole (or give a share below 1), got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _check_outputs(*, source: str, train_path: Path, test_path: Path | None) -> None:
    """Before anything is read or written: no output onto, inside or holding the local source."""
    outputs = [train_path] + ([test_path] if test_path is not None else [])
    src = Path(source).expanduser()
    check_outputs_apart(inputs=[src] if src.exists() else [], outputs=outputs, what="output")
    if test_path is not None and train_path.resolve() == test_path.resolve():
        raise SplitError(
            f"the train and held-out outputs are both {train_path}; the second would overwrite the "
            "first. Change --train-output-path or --test-output-dir/--test-output-name"
        )
    for path in outputs:
        if path.is_dir():
            raise SplitError(f"{path} is a folder; outputs must be .jsonl file paths")
        parent = next((q for q in path.parents if q.exists()), None)
        if parent is not None and not parent.is_dir():
            raise SplitError(f"cannot write {path}: {parent} is a file, not a folder")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="download_and_split.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--dataset-name",
        default=DEFAULT_DATASET,
        help=f"hub data set, or a local .json/.jsonl/.parquet file or folder (default: {DEFAULT_DATASET})",
    )
    p.add_argument("--split", default="train", help="hub split to load (default: train; ignored for local files)")
    p.add_argument(
        "--sample-size", type=positive_int, default=None, help="keep this many valid conversations (default: all)"
    )
    p.add_argument(
        "--test-size",
        type=_test_size,
        default=0.05,
        help="held-out share (< 1) or count (>= 1) of the kept conversations (default: 0.05)",
    )
    p.add_argument(
        "--seed", type=_seed, default=42, help="shuffle seed; the same seed gives the same split (default: 42)"
    )
    p.add_argument(
        "--train-output-path", default=None, help="train JSONL (default: outputs/data/<dataset>_train.jsonl)"
    )
    p.add_argument(
        "--test-output-dir",
        default="outputs/data/eval_datasets",
        help="folder of the held-out eval file (default: outputs/data/eval_datasets)",
    )
    p.add_argument(
        "--test-output-name",
        default=None,
        help="held-out eval file name, .jsonl added if missing (default: <dataset>.jsonl)",
    )
    p.add_argument("--skip-existing", action="store_true", help="do nothing if the outputs already exist")
    p.add_argument("--strict", action="store_true", help="stop at the first bad row instead of skipping it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@cli_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    slug = dataset_slug(args.dataset_name)
    train_path = Path(args.train_output_path or f"outputs/data/{slug}_train.jsonl")
    name = args.test_output_name or slug
    test_path = Path(args.test_output_dir) / (name if name.endswith(".jsonl") else f"{name}.jsonl")
    wants_test = args.test_size > 0

    if args.skip_existing and train_path.is_file() and (test_path.is_file() or not wants_test):
        print(
            f"[split] {train_path}{' and ' + str(test_path) if wants_test else ''} exist; skipping "
            "(leave out --skip-existing to rebuild)"
        )
        return 0
    _check_outputs(source=args.dataset_name, train_path=train_path, test_path=test_path if wants_test else None)

    report = SkipReport()
    rows = load_rows(dataset_name=args.dataset_name, split=args.split)
    print(f"[split] {args.dataset_name}: {len(rows)} rows")
    try:
        train, test = select_and_split(
            rows,
            sample_size=args.sample_size,
            test_size=args.test_size,
            seed=args.seed,
            strict=args.strict,
            report=report,
            id_prefix=slug,
            progress=not args.no_progress,
        )
    except DataError as e:
        if not args.strict:
            raise
        raise DataError(
            f"{e} (--strict stops at the first bad row; leave it out to skip bad rows and count them)", reason=e.reason
        ) from None

    print("[split] " + report.summary().replace("\n", "\n[split] "))
    if args.sample_size is not None and report.kept < args.sample_size:
        print(f"[split] WARNING: asked for {args.sample_size} conversations, only {report.kept} valid ones exist")
    if not train:
        raise SplitError(
            f"no conversations left for training ({report.kept} valid, {len(test)} held out); "
            "lower --test-size or check the data"
        )
    write_jsonl(train_path, train)
    print(f"[split] train: {len(train)} conversations -> {train_path}")
    if wants_test:
        write_jsonl(test_path, (eval_row(c) for c in test))
        print(f"[split] held-out: {len(test)} conversations (user turns) -> {test_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
