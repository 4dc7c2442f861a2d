"""scripts/data/download_and_split.py on small local files (no hub access needed)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "data" / "download_and_split.py"


@pytest.fixture(scope="module")
def split_mod():
    spec = importlib.util.spec_from_file_location("download_and_split", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _sharegpt(i):
    turns = [{"from": "human", "value": f"question {i}"}, {"from": "gpt", "value": f"answer {i}"}]
    if i % 3 == 0:  # some multi-turn
        turns += [{"from": "human", "value": f"follow-up {i}"}, {"from": "gpt", "value": f"second answer {i}"}]
    if i % 5 == 0:
        turns.insert(0, {"from": "system", "value": "be helpful"})
    return {"id": f"row{i}", "conversations": turns}


N_GOOD = 40
BAD_LINES = [
    '{"id": "broken", "conversations": [',  # malformed_json
    {"id": "who", "conversations": [{"from": "narrator", "value": "x"}, {"from": "gpt", "value": "y"}]},  # unknown_role
    {"id": "blank", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "  "}]},  # empty_answer
    {
        "id": "twice",
        "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}],
    },  # not_alternating
    {"id": "nothing", "text": "no conversation here"},  # no_conversations
    {
        "id": "row7",
        "conversations": [{"from": "human", "value": "dup"}, {"from": "gpt", "value": "dup"}],
    },  # duplicate_id
]
BAD_REASONS = {"malformed_json", "unknown_role", "empty_answer", "not_alternating", "no_conversations", "duplicate_id"}


@pytest.fixture
def source(tmp_path):
    """40 good ShareGPT rows (one without an id) with 6 bad rows spread through them."""
    lines = []
    for i in range(N_GOOD):
        row = _sharegpt(i)
        if i == 11:
            del row["id"]
        lines.append(json.dumps(row))
    bad = [b if isinstance(b, str) else json.dumps(b) for b in BAD_LINES]
    for k, line in enumerate(bad):  # interleave: after good rows 5, 10, 15, ...
        lines.insert(5 * (k + 1) + k, line)
    path = tmp_path / "sharegpt.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(mod, tmp_path, source, *extra, name="out"):
    train = tmp_path / name / "train.jsonl"
    argv = [
        "--dataset-name",
        str(source),
        "--train-output-path",
        str(train),
        "--test-output-dir",
        str(tmp_path / name / "eval"),
        "--test-output-name",
        "heldout",
        "--no-progress",
        *extra,
    ]
    rc = mod.main(argv)
    return rc, train, tmp_path / name / "eval" / "heldout.jsonl"


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_split_sizes_roles_ids_and_eval_format(split_mod, tmp_path, source, capsys):
    rc, train_path, test_path = _run(split_mod, tmp_path, source, "--test-size", "0.1")
    assert rc == 0
    train, test = _read(train_path), _read(test_path)
    assert (len(train), len(test)) == (36, 4)  # ceil(40 * 0.1) held out

    train_ids = {r["id"] for r in train}
    test_ids = {r["id"] for r in test}
    assert not train_ids & test_ids
    assert len(train_ids | test_ids) == N_GOOD
    assert {f"row{i}" for i in range(N_GOOD) if i != 11} <= train_ids | test_ids
    no_id = [i for i in train_ids | test_ids if not i.startswith("row")]
    assert len(no_id) == 1 and no_id[0].startswith("sharegpt-")  # default id: <dataset>-<row index>

    originals = {f"row{i}": _sharegpt(i) for i in range(N_GOOD)}
    for row in train:
        assert set(row) == {"id", "conversations"}
        roles = [m["role"] for m in row["conversations"]]
        assert set(roles) <= {"system", "user", "assistant"}
        body = [r for r in roles if r != "system"]
        assert body == ["user", "assistant"] * (len(body) // 2)
        if row["id"] in originals and row["id"] != "row7":  # of two rows with one id, the first in shuffled order stays
            assert [m["content"] for m in row["conversations"]] == [
                t["value"] for t in originals[row["id"]]["conversations"]
            ]
    for row in test:
        assert set(row) == {"id", "turns"}
        assert all(isinstance(t, str) for t in row["turns"])
        if row["id"] in originals and row["id"] != "row7":
            src = originals[row["id"]]["conversations"]
            assert row["turns"] == [t["value"] for t in src if t["from"] == "human"]

    out = capsys.readouterr().out
    assert "kept 40, skipped 6" in out
    for reason in BAD_REASONS:
        assert f"{reason}: 1" in out


def test_same_seed_same_split_other_seed_other_split(split_mod, tmp_path, source):
    _, a_train, a_test = _run(split_mod, tmp_path, source, "--seed", "7", name="a")
    _, b_train, b_test = _run(split_mod, tmp_path, source, "--seed", "7", name="b")
    _, c_train, c_test = _run(split_mod, tmp_path, source, "--seed", "8", name="c")
    assert a_train.read_bytes() == b_train.read_bytes() and a_test.read_bytes() == b_test.read_bytes()
    assert a_train.read_bytes() != c_train.read_bytes()
    assert len(_read(a_test)) == 2  # default --test-size 0.05 of 40


def test_sample_size_and_test_count(split_mod, tmp_path, source):
    rc, train_path, test_path = _run(split_mod, tmp_path, source, "--sample-size", "10", "--test-size", "3")
    assert rc == 0
    assert (len(_read(train_path)), len(_read(test_path))) == (7, 3)  # a test size >= 1 is a count


def test_skip_existing_leaves_outputs_alone(split_mod, tmp_path, source, capsys):
    _, train_path, test_path = _run(split_mod, tmp_path, source, "--seed", "1")
    before = (train_path.read_bytes(), test_path.read_bytes())
    rc, _, _ = _run(split_mod, tmp_path, source, "--seed", "2", "--skip-existing")
    assert rc == 0 and "skipping" in capsys.readouterr().out
    assert (train_path.read_bytes(), test_path.read_bytes()) == before
    rc, _, _ = _run(split_mod, tmp_path, source, "--seed", "2")  # without the flag: rebuilt
    assert train_path.read_bytes() != before[0]


def test_strict_stops_at_first_bad_row(split_mod, tmp_path, source, capsys):
    rc, train_path, test_path = _run(split_mod, tmp_path, source, "--strict")
    assert rc == 2
    assert not train_path.exists() and not test_path.exists()
    assert "--strict" in capsys.readouterr().err


def test_parquet_with_mixed_message_keys(split_mod, tmp_path):
    # Arrow unifies message structs: a {"from","value"} message also gets "role": None and vice versa.
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [
        {"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]} for i in range(5)
    ]
    rows += [
        {"conversations": [{"role": "user", "content": f"u{i}"}, {"role": "assistant", "content": f"r{i}"}]}
        for i in range(5)
    ]
    path = tmp_path / "mixed.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    rc, train_path, test_path = _run(split_mod, tmp_path, path, "--test-size", "0.2")
    assert rc == 0
    train, test = _read(train_path), _read(test_path)
    assert (len(train), len(test)) == (8, 2)
    assert all(r["id"].startswith("mixed-") for r in train)
    assert all([m["role"] for m in r["conversations"]] == ["user", "assistant"] for r in train)


def test_missing_local_file_is_a_clear_error(split_mod, tmp_path, capsys):
    rc, _, _ = _run(split_mod, tmp_path, tmp_path / "nope.jsonl")
    assert rc == 2 and "not found" in capsys.readouterr().err


def test_command_line_runs_as_a_script(tmp_path, source):
    train = tmp_path / "cli" / "train.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--dataset-name",
            str(source),
            "--train-output-path",
            str(train),
            "--test-output-dir",
            str(tmp_path / "cli"),
            "--test-output-name",
            "eval",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(_read(train)) == 38 and len(_read(tmp_path / "cli" / "eval.jsonl")) == 2
    assert "train: 38 conversations" in proc.stdout
