"""eval_datasets/build_eval_datasets.py on small local source files (no hub access)."""

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from deepspec.eval.tasks import SHIPPED_TASKS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "eval_datasets" / "build_eval_datasets.py"

# The prompt templates, written out here independently of the script's constants.
BOXED = "\nPlease reason step by step, and put your final answer within \\boxed{}."
HE_PREFIX = "Write a solution to the following problem and make sure that it passes the tests:\n```python\n"
LCB_PREFIX = (
    "You are an expert Python programmer. You will be given a question (problem specification) and will "
    "generate a correct Python program that matches the specification and passes all tests. You will NOT "
    "return anything except for the program\n\n### Question:\n"
)
LCB_STARTER = "### Format: Use the following code structure:\n```python\n"
LCB_NO_STARTER = "### Format: Write your code in the following format:\n```python\n# YOUR CODE HERE\n```\n\n"
LCB_ANSWER = "### Answer: (use the provided format with backticks)"


@pytest.fixture(scope="module")
def mod():
    spec = importlib.util.spec_from_file_location("build_eval_datasets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


# ----------------------------------------------------------------------------- fixtures in the source schemas

SOURCE_ROWS = {
    "gsm8k": [{"question": f"Tom has {i} apples. How many?", "answer": f"#### {i}"} for i in range(4)],
    "math500": [
        {
            "problem": f"Compute $1+{i}$.",
            "solution": "...",
            "answer": str(1 + i),
            "subject": "Algebra",
            "level": 1,
            "unique_id": f"test/algebra/{i}.json",
        }
        for i in range(4)
    ],
    "aime25": [{"problem_idx": i + 1, "problem": f"Find $x$ if $x={i}$.\n", "answer": i} for i in range(3)],
    "humaneval": [
        {
            "task_id": f"HumanEval/{i}",
            "prompt": f'def f{i}(x):\n    """Return x."""\n',
            "canonical_solution": "    return x\n",
            "test": "def check(c): pass\n",
            "entry_point": f"f{i}",
        }
        for i in range(3)
    ],
    "mbpp": [
        {
            "source_file": "x.py",
            "task_id": 11 + i,
            "prompt": f"Write a function number {i}.",
            "code": "def f(): pass",
            "test_imports": [],
            "test_list": [f"assert f({i}) == {i}"],
        }
        for i in range(4)
    ],
    "livecodebench": [
        {
            "question_title": "A",
            "question_content": "Read n and print n.\n",
            "platform": "atcoder",
            "question_id": "abc1",
            "contest_id": "abc",
            "contest_date": "2023-08-01T00:00:00",
            "starter_code": "",
            "difficulty": "easy",
            "public_test_cases": "[]",
            "private_test_cases": "x",
            "metadata": "{}",
        },
        {
            "question_title": "B",
            "question_content": "Return the sum of nums.",
            "platform": "leetcode",
            "question_id": "1",
            "contest_id": "w1",
            "contest_date": "2023-08-02T00:00:00",
            "starter_code": "class Solution:\n    def total(self, nums: List[int]) -> int:\n        ",
            "difficulty": "easy",
            "public_test_cases": "[]",
            "private_test_cases": "x",
            "metadata": "{}",
        },
    ],
    "mt-bench": [
        {
            "prompt": [f"Write a poem {i}.", "Now shorten it."],
            "prompt_id": 81 + i,
            "category": "writing",
            "reference": [],
        }
        for i in range(3)
    ],
    "alpaca": [
        {"instruction": "Give three tips.", "input": "", "output": "...", "text": "..."},
        {"instruction": "Translate the sentence.", "input": "Hola mundo", "output": "...", "text": "..."},
        {"instruction": "Summarise.", "input": "   ", "output": "...", "text": "..."},
    ]
    + [{"instruction": f"Task {i}.", "input": "", "output": "", "text": ""} for i in range(3, 40)],
    "arena-hard-v2": [
        {
            "uid": f"u{i}",
            "category": "hard_prompt",
            "subcategory": "coding",
            "language": "English",
            "prompt": f"  Write zig code {i} ünïcode\u2028here  ",
        }
        for i in range(3)
    ],
}

EXPECTED = {
    "gsm8k": [[f"Tom has {i} apples. How many?" + BOXED] for i in range(4)],
    "math500": [[f"Compute $1+{i}$." + BOXED] for i in range(4)],
    "aime25": [[f"Find $x$ if $x={i}$.\n" + BOXED] for i in range(3)],
    "humaneval": [[HE_PREFIX + f'def f{i}(x):\n    """Return x."""\n' + "\n```"] for i in range(3)],
    "mbpp": [[f"Write a function number {i}."] for i in range(4)],
    "livecodebench": [
        [LCB_PREFIX + "Read n and print n.\n\n\n" + LCB_NO_STARTER + LCB_ANSWER],
        [
            LCB_PREFIX
            + "Return the sum of nums.\n\n"
            + LCB_STARTER
            + "class Solution:\n    def total(self, nums: List[int]) -> int:\n        \n```\n\n"
            + LCB_ANSWER
        ],
    ],
    "mt-bench": [[f"Write a poem {i}.", "Now shorten it."] for i in range(3)],
    "alpaca": [["Give three tips."], ["Translate the sentence.\n\nInput:\nHola mundo"], ["Summarise."]]
    + [[f"Task {i}."] for i in range(3, 40)],
    "arena-hard-v2": [[f"  Write zig code {i} ünïcode\u2028here  "] for i in range(3)],
}


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def source_dir(tmp_path):
    """One source per task, in every supported layout: .jsonl, .json array, .parquet, and a folder."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    d = tmp_path / "sources"
    d.mkdir()
    for task, rows in SOURCE_ROWS.items():
        if task == "alpaca":  # the original alpaca_data.json is one JSON array
            (d / "alpaca.json").write_text(json.dumps(rows), encoding="utf-8")
        elif task == "humaneval":
            pq.write_table(pa.Table.from_pylist(rows), d / "humaneval.parquet")
        elif task == "livecodebench":  # like a clone of the hub repo: one file per release
            _write_jsonl(d / "livecodebench" / "test.jsonl", rows[:1])
            _write_jsonl(d / "livecodebench" / "test2.jsonl", rows[1:])
        else:
            _write_jsonl(d / f"{task}.jsonl", rows)
    return d


def _lines(path):
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.split("\n")[:-1]]  # not splitlines: U+2028 inside strings


def _turns(path):
    rows = _lines(path)
    assert all(set(r) == {"turns"} for r in rows)
    return [r["turns"] for r in rows]


# ----------------------------------------------------------------------------- pure converters


@pytest.mark.parametrize("task", list(SOURCE_ROWS))
def test_each_converter_gives_the_exact_prompt(mod, task):
    assert list(mod.CONVERTERS) == list(mod.PAPER_COUNTS)
    got = [mod.CONVERTERS[task](row)["turns"] for row in SOURCE_ROWS[task]]
    assert got == EXPECTED[task]


def test_converter_errors_name_the_field_and_the_table(mod):
    with pytest.raises(mod.ConversionError, match=r"'question'.*FIELDS\['gsm8k'\]"):
        mod.convert_gsm8k({"problem": "x"})
    with pytest.raises(mod.ConversionError, match="must be a string"):
        mod.convert_mbpp({"prompt": 3})
    with pytest.raises(mod.ConversionError, match="blank"):
        mod.convert_math500({"problem": "  "})
    with pytest.raises(mod.ConversionError, match="list of strings"):
        mod.convert_mt_bench({"prompt": "one string"})
    assert mod.convert_mt_bench({"turns": ["a", "b"]}) == {"turns": ["a", "b"]}  # FastChat's column name
    assert (
        mod.convert_livecodebench({"question_content": "Q", "starter_code": None})["turns"][0]
        == LCB_PREFIX + "Q\n\n" + LCB_NO_STARTER + LCB_ANSWER
    )
    assert mod.convert_alpaca({"instruction": "Do it."}) == {"turns": ["Do it."]}  # no input column at all


# ----------------------------------------------------------------------------- building from --source-dir


def test_build_every_task_from_local_sources(mod, tmp_path, source_dir):
    out = tmp_path / "out"
    results = mod.build(output_dir=out, source_dir=source_dir, progress=False, log=lambda _: None)
    assert [r.task for r in results] == list(mod.PAPER_COUNTS)
    for r in results:
        assert r.path == out / f"{r.task}.jsonl"
        assert r.rows == len(SOURCE_ROWS[r.task])
        if r.task != "alpaca":
            assert _turns(r.path) == EXPECTED[r.task], r.task
    # alpaca is a seeded sample: the same rows, in another order
    alpaca = _turns(out / "alpaca.jsonl")
    assert sorted(map(tuple, alpaca)) == sorted(map(tuple, EXPECTED["alpaca"])) and alpaca != EXPECTED["alpaca"]
    # the written bytes: one compact object a line, non-ASCII kept, U+2028 kept as is
    first = (out / "arena-hard-v2.jsonl").read_text(encoding="utf-8").split("\n")[0]
    assert first == '{"turns": ["  Write zig code 0 ünïcode\u2028here  "]}'
    assert not list(out.glob(".*"))  # no temporary files left behind
    summary = mod.format_summary(results)
    assert "gsm8k" in summary and str(out / "mt-bench.jsonl") in summary and "fewer than 500" in summary


def test_command_line_runs_as_a_script(tmp_path, source_dir):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--source-dir",
            str(source_dir),
            "--output-dir",
            str(out),
            "--tasks",
            "gsm8k, mt-bench,mbpp",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["gsm8k.jsonl", "mbpp.jsonl", "mt-bench.jsonl"]
    assert _turns(out / "gsm8k.jsonl") == EXPECTED["gsm8k"]
    assert _turns(out / "mt-bench.jsonl") == EXPECTED["mt-bench"]
    assert all(len(t) == 2 for t in _turns(out / "mt-bench.jsonl"))
    assert _turns(out / "mbpp.jsonl") == EXPECTED["mbpp"]
    summary = proc.stdout[proc.stdout.index("task ") :]
    assert [line.split()[:2] for line in summary.strip().split("\n")[1:]] == [
        ["gsm8k", "4"],
        ["mt-bench", "3"],
        ["mbpp", "4"],
    ]
    assert str(out / "gsm8k.jsonl") in summary

    help_text = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=300
    ).stdout
    for word in ("--source-dir", "--num-samples", "--overwrite", "--seed", "openai/gsm8k", "arena-hard-v2"):
        assert word in help_text


def test_max_samples_caps_every_task(mod, tmp_path, source_dir):
    out = tmp_path / "capped"
    results = mod.build(output_dir=out, source_dir=source_dir, max_samples=2, progress=False, log=lambda _: None)
    assert {r.task: r.rows for r in results} == {t: 2 for t in mod.PAPER_COUNTS}
    assert _turns(out / "gsm8k.jsonl") == EXPECTED["gsm8k"][:2]  # the first rows, in source order
    assert _turns(out / "livecodebench.jsonl") == EXPECTED["livecodebench"]

    rc = mod.main(
        [
            "--source-dir",
            str(source_dir),
            "--output-dir",
            str(tmp_path / "one"),
            "--tasks",
            "mbpp",
            "--max-samples",
            "1",
            "--no-progress",
        ]
    )
    assert rc == 0 and _turns(tmp_path / "one" / "mbpp.jsonl") == EXPECTED["mbpp"][:1]


def test_default_counts_are_the_papers_and_all_keeps_everything(mod, tmp_path, source_dir):
    assert mod.PAPER_COUNTS == {
        "gsm8k": 500,
        "math500": 500,
        "aime25": 30,
        "humaneval": 164,
        "mbpp": 256,
        "livecodebench": 500,
        "mt-bench": 80,
        "alpaca": 500,
        "arena-hard-v2": 500,
    }
    _write_jsonl(source_dir / "aime25.jsonl", [{"problem": f"P{i}"} for i in range(45)])
    _write_jsonl(source_dir / "mt-bench.jsonl", [{"prompt": [f"T{i}", "again"]} for i in range(90)])
    mod.build(
        tasks="aime25,mt-bench",
        output_dir=tmp_path / "paper",
        source_dir=source_dir,
        progress=False,
        log=lambda _: None,
    )
    assert len(_turns(tmp_path / "paper" / "aime25.jsonl")) == 30
    assert _turns(tmp_path / "paper" / "mt-bench.jsonl")[-1] == ["T79", "again"]
    mod.build(
        tasks="aime25",
        output_dir=tmp_path / "all",
        source_dir=source_dir,
        max_samples="all",
        progress=False,
        log=lambda _: None,
    )
    assert len(_turns(tmp_path / "all" / "aime25.jsonl")) == 45
    for bad in ("0", "-3", "lots"):
        with pytest.raises(mod.BuildError, match="--num-samples"):
            mod.build(tasks="aime25", output_dir=tmp_path / "bad", source_dir=source_dir, max_samples=bad)
    assert not (tmp_path / "bad").exists()


def test_alpaca_sample_follows_the_seed(mod, tmp_path, source_dir):
    def sample(seed, n, name):
        mod.build(
            tasks="alpaca",
            output_dir=tmp_path / name,
            source_dir=source_dir,
            seed=seed,
            max_samples=n,
            progress=False,
            log=lambda _: None,
        )
        return _turns(tmp_path / name / "alpaca.jsonl")

    a, b, c = sample(1, 10, "a"), sample(1, 10, "b"), sample(2, 10, "c")
    assert a == b and a != c and len(a) == 10
    assert sample(1, 25, "d")[:10] == a  # a larger sample keeps the smaller one as its prefix


def test_refuses_to_overwrite_without_the_flag(mod, tmp_path, source_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mbpp.jsonl").write_text("keep me\n")
    argv = ["--source-dir", str(source_dir), "--output-dir", str(out), "--tasks", "gsm8k,mbpp", "--no-progress"]
    assert mod.main(argv) == 2
    err = capsys.readouterr().err
    assert "mbpp.jsonl" in err and "--overwrite" in err
    assert (out / "mbpp.jsonl").read_text() == "keep me\n"
    assert not (out / "gsm8k.jsonl").exists()  # checked before anything is written
    assert mod.main(argv + ["--overwrite"]) == 0
    assert _turns(out / "mbpp.jsonl") == EXPECTED["mbpp"]


def test_unknown_task_lists_the_known_ones(mod, tmp_path, source_dir, capsys):
    rc = mod.main(["--source-dir", str(source_dir), "--output-dir", str(tmp_path / "x"), "--tasks", "gsm8k,gsm9k"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "gsm9k" in err and all(t in err for t in mod.PAPER_COUNTS)
    assert not (tmp_path / "x").exists()
    with pytest.raises(mod.BuildError, match="empty"):
        mod.parse_task_list(" , ")
    assert mod.parse_task_list("all") == list(mod.PAPER_COUNTS)
    assert mod.parse_task_list("mbpp,gsm8k,mbpp") == ["mbpp", "gsm8k"]


def test_missing_or_ambiguous_local_source(mod, tmp_path, source_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(mod.BuildError, match=r"no source for 'gsm8k'.*gsm8k\.jsonl"):
        mod.build(tasks="gsm8k", output_dir=tmp_path / "o", source_dir=empty)
    _write_jsonl(source_dir / "mbpp.json", SOURCE_ROWS["mbpp"])
    with pytest.raises(mod.BuildError, match="several sources"):
        mod.build(tasks="mbpp", output_dir=tmp_path / "o", source_dir=source_dir)
    with pytest.raises(mod.BuildError, match="not a folder"):
        mod.build(tasks="gsm8k", output_dir=tmp_path / "o", source_dir=tmp_path / "absent")


def test_bad_source_rows_are_reported_with_their_place(mod, tmp_path, source_dir):
    _write_jsonl(source_dir / "gsm8k.jsonl", [{"question": "ok"}, {"query": "renamed column"}])
    with pytest.raises(mod.BuildError, match=r"gsm8k\.jsonl:2: .*FIELDS\['gsm8k'\]"):
        mod.build(tasks="gsm8k", output_dir=tmp_path / "o", source_dir=source_dir, progress=False, log=lambda _: None)
    assert not (tmp_path / "o" / "gsm8k.jsonl").exists()
    (source_dir / "gsm8k.jsonl").write_text('{"question": "ok"}\n{"question": \n')
    with pytest.raises(mod.BuildError, match=r"gsm8k\.jsonl:2 is not valid JSON"):
        mod.build(tasks="gsm8k", output_dir=tmp_path / "o", source_dir=source_dir, progress=False, log=lambda _: None)


def test_livecodebench_folder_follows_the_release(mod, tmp_path, source_dir):
    mod.build(
        tasks="livecodebench",
        output_dir=tmp_path / "v1",
        source_dir=source_dir,
        lcb_version="release_v1",
        progress=False,
        log=lambda _: None,
    )
    assert _turns(tmp_path / "v1" / "livecodebench.jsonl") == EXPECTED["livecodebench"][:1]
    mod.build(
        tasks="livecodebench",
        output_dir=tmp_path / "only2",
        source_dir=source_dir,
        lcb_version="v2",
        progress=False,
        log=lambda _: None,
    )
    assert _turns(tmp_path / "only2" / "livecodebench.jsonl") == EXPECTED["livecodebench"][1:]
    with pytest.raises(mod.BuildError, match="--lcb-version"):
        mod.build(tasks="livecodebench", output_dir=tmp_path / "x", source_dir=source_dir, lcb_version="v9")


# ----------------------------------------------------------------------------- the hub, faked


def _fake_hub(monkeypatch, tmp_path, *, fail=False):
    """Stand-ins for datasets.load_dataset and huggingface_hub.hf_hub_download; records the calls."""
    calls = []

    def load_dataset(repo, config=None, *, split):
        calls.append(("load_dataset", repo, config, split))
        if fail:
            raise ConnectionError(f"Couldn't reach '{repo}' on the Hub (LocalEntryNotFoundError)")
        task = next(t for t, s in HUB_NAMES.items() if s == repo)
        return list(SOURCE_ROWS[task])

    def hf_hub_download(*, repo_id, filename, repo_type):
        calls.append(("hf_hub_download", repo_id, filename, repo_type))
        if fail:
            raise OSError("Name or service not known")
        path = tmp_path / "hub" / repo_id / filename
        if repo_id == "livecodebench/code_generation_lite":
            rows = SOURCE_ROWS["livecodebench"][:1] if filename == "test.jsonl" else SOURCE_ROWS["livecodebench"][1:]
        else:
            rows = SOURCE_ROWS["arena-hard-v2"]
        _write_jsonl(path, rows)
        return str(path)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(hf_hub_download=hf_hub_download))
    return calls


HUB_NAMES = {
    "gsm8k": "openai/gsm8k",
    "math500": "HuggingFaceH4/MATH-500",
    "aime25": "MathArena/aime_2025",
    "humaneval": "openai/openai_humaneval",
    "mbpp": "google-research-datasets/mbpp",
    "mt-bench": "HuggingFaceH4/mt_bench_prompts",
    "alpaca": "tatsu-lab/alpaca",
}


def test_hub_sources_and_lazy_file_downloads(mod, tmp_path, monkeypatch):
    calls = _fake_hub(monkeypatch, tmp_path)
    results = mod.build(output_dir=tmp_path / "out", max_samples=1, progress=False, log=lambda _: None)
    assert {r.task: r.rows for r in results} == {t: 1 for t in mod.PAPER_COUNTS}
    loads = {c[1]: (c[2], c[3]) for c in calls if c[0] == "load_dataset"}
    assert loads == {
        "openai/gsm8k": ("main", "test"),
        "HuggingFaceH4/MATH-500": (None, "test"),
        "MathArena/aime_2025": (None, "train"),
        "openai/openai_humaneval": (None, "test"),
        "google-research-datasets/mbpp": ("sanitized", "test"),
        "HuggingFaceH4/mt_bench_prompts": (None, "train"),
        "tatsu-lab/alpaca": (None, "train"),
    }
    files = [c[1:] for c in calls if c[0] == "hf_hub_download"]
    # one LiveCodeBench row is in test.jsonl: test2..test6 are never fetched
    assert files == [
        ("livecodebench/code_generation_lite", "test.jsonl", "dataset"),
        ("lmarena-ai/arena-hard-auto", "data/arena-hard-v2.0/question.jsonl", "dataset"),
    ]
    assert _turns(tmp_path / "out" / "gsm8k.jsonl") == EXPECTED["gsm8k"][:1]
    assert _turns(tmp_path / "out" / "arena-hard-v2.jsonl") == EXPECTED["arena-hard-v2"][:1]

    calls.clear()
    mod.build(tasks="livecodebench", output_dir=tmp_path / "lcb", progress=False, log=lambda _: None)
    assert [c[2] for c in calls] == [f"test{k if k > 1 else ''}.jsonl" for k in range(1, 7)]  # release_v6


@pytest.mark.parametrize("task", ["gsm8k", "arena-hard-v2"])
def test_unreachable_hub_says_to_use_source_dir(mod, tmp_path, monkeypatch, capsys, task):
    _fake_hub(monkeypatch, tmp_path, fail=True)
    rc = mod.main(["--output-dir", str(tmp_path / "out"), "--tasks", f"mbpp,{task}", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--source-dir" in err and "Hugging Face hub" in err
    assert not list((tmp_path / "out").glob("*.jsonl"))


def test_error_after_some_tasks_lists_what_was_written(mod, tmp_path, source_dir, capsys):
    _write_jsonl(source_dir / "mbpp.jsonl", [{"prompt": 5}])
    rc = mod.main(
        ["--source-dir", str(source_dir), "--output-dir", str(tmp_path / "o"), "--tasks", "gsm8k,mbpp", "--no-progress"]
    )
    assert rc == 2
    captured = capsys.readouterr()
    assert "written before the error" in captured.out and "gsm8k.jsonl" in captured.out
    assert "mbpp" in captured.err and "must be a string" in captured.err


# ----------------------------------------------------------------------------- the shared prompt files


# The five shipped files are in the checkout; the other tasks' files exist only where a folder of them
# sits beside it (../shared/eval_datasets, on the project's own machines): read there, or skipped.
SHARED_DIR = ROOT.parent / "shared" / "eval_datasets"


def _prompt_file(task):
    if task in SHIPPED_TASKS:
        return ROOT / "eval_datasets" / f"{task}.jsonl"
    path = SHARED_DIR / f"{task}.jsonl"
    if not path.is_file():
        pytest.skip(f"{task} is not shipped (license) and {SHARED_DIR} is absent: nothing to compare with")
    return path


def _strip(text, *, prefix="", suffix=""):
    assert text.startswith(prefix) and text.endswith(suffix), text[:200]
    return text[len(prefix) : len(text) - len(suffix)]


def _lcb_source_row(text):
    body = _strip(text, prefix=LCB_PREFIX)
    if body.endswith(LCB_NO_STARTER + LCB_ANSWER):
        question = _strip(body, suffix="\n\n" + LCB_NO_STARTER + LCB_ANSWER)
        return {"question_content": question, "starter_code": ""}
    head, sep, starter = body.rpartition("\n\n" + LCB_STARTER)
    assert sep, body[-300:]
    return {"question_content": head, "starter_code": _strip(starter, suffix="\n```\n\n" + LCB_ANSWER)}


# task -> the source row (in the hub's column names) that a shared line was made from
SHARED_SOURCE_ROW = {
    "gsm8k": lambda turns: {"question": _strip(turns[0], suffix=BOXED)},
    "math500": lambda turns: {"problem": _strip(turns[0], suffix=BOXED)},
    "aime25": lambda turns: {"problem": _strip(turns[0], suffix=BOXED)},
    "humaneval": lambda turns: {"prompt": _strip(turns[0], prefix=HE_PREFIX, suffix="\n```")},
    "mbpp": lambda turns: {"prompt": turns[0]},
    "livecodebench": lambda turns: _lcb_source_row(turns[0]),
    "mt-bench": lambda turns: {"prompt": list(turns)},
    "arena-hard-v2": lambda turns: {"prompt": turns[0]},
}


@pytest.mark.parametrize("task", list(SHARED_SOURCE_ROW))
def test_converters_reproduce_the_shared_files(mod, task):
    path = _prompt_file(task)
    lines = path.read_text(encoding="utf-8").split("\n")
    lines = [line for line in lines if line.strip()]
    first = lines[0]
    row = SHARED_SOURCE_ROW[task](json.loads(first)["turns"])
    assert json.dumps(mod.CONVERTERS[task](row), ensure_ascii=False) == first  # byte for byte
    for line in lines[1:]:  # and the template fits every other line too
        turns = json.loads(line)["turns"]
        assert mod.CONVERTERS[task](SHARED_SOURCE_ROW[task](turns))["turns"] == turns


def test_paper_counts_match_the_evaluation_task_table(mod):
    tasks = pytest.importorskip("deepspec.eval.tasks")
    assert {name: count for name, (count, _) in tasks.KNOWN_TASKS.items()} == mod.PAPER_COUNTS
    assert list(tasks.KNOWN_TASKS) == list(mod.PAPER_COUNTS)
