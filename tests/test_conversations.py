import json
import os

import pytest

from deepspec.data.conversations import (
    Conversation,
    DataError,
    SkipReport,
    normalize_conversation,
    read_conversations,
    write_jsonl,
)

GOOD = {"id": "g", "conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def _write(tmp_path, lines, name="data.jsonl"):
    path = tmp_path / name
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line if isinstance(line, str) else json.dumps(line))
            f.write("\n")
    return path


def _conv(*turns, **extra):
    return {"conversations": [{"role": r, "content": c} for r, c in turns], **extra}


BAD_CASES = {
    "malformed_json": '{"conversations": [',
    "not_an_object": "[1, 2, 3]",
    "no_conversations": {"id": "x", "text": "hello"},
    "first_turn_not_user": _conv(("assistant", "hi"), ("user", "hello")),
    "bad_content": {"conversations": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]},
    "empty_answer": _conv(("user", "q"), ("assistant", "   \n ")),
    "unknown_role": _conv(("user", "q"), ("narrator", "a")),
    "not_alternating": _conv(("user", "q"), ("user", "q2"), ("assistant", "a")),
    "empty_conversation": {"conversations": []},
    "misplaced_system": _conv(("user", "q"), ("system", "s"), ("assistant", "a")),
}


@pytest.mark.parametrize("reason", sorted(BAD_CASES))
def test_bad_line_is_counted_with_file_and_line(tmp_path, reason):
    # Bad line sits between good ones: line 2 of 3.
    path = _write(tmp_path, [GOOD, BAD_CASES[reason], {**GOOD, "id": "g2"}])
    report = SkipReport()
    convs = list(read_conversations(path, report=report))
    assert [c.id for c in convs] == ["g", "g2"]
    assert report.counts == {reason: 1}
    assert report.kept == 2
    assert len(report.examples) == 1
    assert report.examples[0].startswith("data.jsonl:2: ")
    summary = report.summary()
    assert reason in summary and "data.jsonl:2" in summary and "kept 2" in summary


@pytest.mark.parametrize("reason", sorted(BAD_CASES))
def test_strict_raises_data_error(tmp_path, reason):
    path = _write(tmp_path, [GOOD, BAD_CASES[reason]])
    with pytest.raises(DataError) as info:
        list(read_conversations(path, strict=True))
    assert info.value.reason == reason
    assert "data.jsonl:2" in str(info.value)


def test_missing_content_is_bad_content(tmp_path):
    path = _write(tmp_path, [{"conversations": [{"role": "user"}, {"role": "assistant", "content": "a"}]}])
    report = SkipReport()
    assert list(read_conversations(path, report=report)) == []
    assert report.counts == {"bad_content": 1}
    assert "no 'content'" in report.examples[0]


def test_system_only_is_empty(tmp_path):
    with pytest.raises(DataError) as info:
        normalize_conversation(_conv(("system", "s")), where="f.jsonl:1")
    assert info.value.reason == "empty_conversation"


def test_role_normalisation():
    obj = _conv(
        ("SYSTEM", "s"),
        ("Human", "q"),
        ("gpt", "a"),
        ("USER", "q2"),
        ("model", "a2"),
        ("user", "q3"),
        ("bot", "a3"),
        ("human", "q4"),
        ("ChatGPT", "a4"),
        ("user", "q5"),
        ("assistant", "a5"),
    )
    conv = normalize_conversation(obj, where="x:1")
    assert [m["role"] for m in conv.messages] == ["system"] + ["user", "assistant"] * 5
    assert conv.messages[2] == {"role": "assistant", "content": "a"}


def test_sharegpt_and_messages_key(tmp_path):
    sharegpt = {"id": 7, "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    messages = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = _write(tmp_path, [sharegpt, messages], name="mix.jsonl")
    convs = list(read_conversations(path))
    assert convs[0] == Conversation(
        id="7", messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    )
    # Missing id -> stable "<stem>:<line>".
    assert convs[1].id == "mix:2"
    assert convs[1].messages == convs[0].messages


def test_trailing_user_turn_is_a_prompt():
    conv = normalize_conversation(_conv(("user", "only a prompt")), where="p:1")
    assert conv.messages == [{"role": "user", "content": "only a prompt"}]


def test_blank_and_bad_utf8_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    with open(path, "wb") as f:
        f.write(json.dumps(GOOD).encode() + b"\n\n   \n")
        f.write(b'{"id": "\xff"}\n')
        f.write(json.dumps({**GOOD, "id": "z"}).encode() + b"\n")
    report = SkipReport()
    assert [c.id for c in read_conversations(path, report=report)] == ["g", "z"]
    assert report.counts == {"malformed_json": 1}
    assert report.examples[0].startswith("d.jsonl:4: ")


def test_examples_are_capped_and_multiple_files(tmp_path):
    a = _write(tmp_path, ["{bad"] * 5 + [GOOD], name="a.jsonl")
    b = _write(tmp_path, ["nope"] * 5, name="b.jsonl")
    report = SkipReport(max_examples=3)
    assert len(list(read_conversations([a, b], report=report))) == 1
    assert report.counts["malformed_json"] == 10
    assert len(report.examples) == 3
    # A folder expands to its *.jsonl files in sorted order.
    report2 = SkipReport()
    assert len(list(read_conversations(tmp_path, report=report2))) == 1
    assert report2.skipped == 10


def test_missing_file_raises_clear_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        list(read_conversations(tmp_path / "nope.jsonl"))


def test_write_jsonl_roundtrip_atomic(tmp_path):
    path = tmp_path / "sub" / "out.jsonl"
    rows = [Conversation(id="a", messages=[{"role": "user", "content": "é"}]), {"id": "b", **_conv(("user", "q"))}]
    assert write_jsonl(path, rows) == 2
    assert [c.id for c in read_conversations(path, strict=True)] == ["a", "b"]
    assert "é" in path.read_text(encoding="utf-8")
    assert [p.name for p in path.parent.iterdir()] == ["out.jsonl"]  # no temp left behind

    def broken():
        yield {"id": "c"}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_jsonl(path, broken())
    # Old file intact, temp file removed.
    assert [c.id for c in read_conversations(path)] == ["a", "b"]
    assert os.listdir(path.parent) == ["out.jsonl"]


def test_regenerated_rows_with_a_model_record_read_like_any_row(tmp_path):
    # generate_train_data.py adds finish_reasons and generated_by; readers must ignore them.
    row = dict(GOOD, finish_reasons=["stop"], generated_by={"model": "m", "fingerprint": "name:m"})
    path = _write(tmp_path, [row])
    (conv,) = read_conversations(path)
    assert conv.to_json() == GOOD


def test_input_files_are_listed_once(tmp_path):
    from deepspec.data.conversations import list_input_files

    _write(tmp_path, [GOOD], name="a.jsonl")
    files = list_input_files(tmp_path)
    _write(tmp_path, [GOOD], name="b.jsonl")  # written after listing, like an output would be
    assert [p.name for p in files] == ["a.jsonl"]
    assert len(list(read_conversations(files))) == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no \\*.jsonl"):
        list_input_files(tmp_path / "empty")
