"""Preflight: the inputs every later stage needs are checked before the first one, in one message.

The shell entry points stop in their first seconds when a prompt file, the target, the config, a
writable output folder or the disk for the cache is missing; nothing is created on the way.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import namedtuple

import pytest

from badinput import run_entry
from deepspec import preflight
from deepspec.preflight import PreflightError, check_free_disk, check_model, check_run_inputs, check_writable


def _prompts(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}.jsonl").write_text(json.dumps({"turns": [f"{name} question"]}) + "\n")
    return folder


def test_model_checks(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PreflightError) as e:
        check_model(str(tmp_path / "empty"), what="target", flag="--target_name_or_path")
    assert str(e.value) == f"--target_name_or_path: {tmp_path / 'empty'} is not a model folder (no config.json in it)"
    with pytest.raises(
        PreflightError, match=r"^--x: no such folder: ./no/such/model \(the target must be an existing local folder"
    ):
        check_model("./no/such/model", what="target", flag="--x")
    assert check_model("Qwen/Qwen3-4B", what="target", flag="--x").endswith(
        "downloaded from the Hugging Face hub on first use)"
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(PreflightError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE=1"):
        check_model("Qwen/Qwen3-4B", what="target", flag="--x")


def test_writable_and_disk(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PreflightError, match=r"is a file, not a folder"):
        check_writable(tmp_path / "file" / "out", what="output folder")
    assert check_writable(tmp_path / "a" / "b", what="output folder").endswith("(writable)")
    assert not (tmp_path / "a").exists()  # nothing created
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 << 30, 9 << 30, 1 << 20))
    with pytest.raises(PreflightError) as e:
        check_free_disk(tmp_path / "cache", needed_bytes=3 << 20, what="target cache")
    assert str(e.value).startswith(f"target cache: about 3.00 MiB needed, 1.00 MiB free on {tmp_path}; free space")
    assert check_free_disk(tmp_path / "cache", needed_bytes=1 << 19, what="c").startswith("c: about 512")


def test_every_problem_in_one_message(tmp_path, capsys):
    data = _prompts(tmp_path / "prompts", "gsm8k")
    (tmp_path / "notes.txt").write_text("a user's file\n")
    rc = preflight.main(
        ["--tasks", "aime25:4", "--eval-data-dir", str(data), "--config", str(tmp_path / "nope.py")]
        + ["--target", str(tmp_path / "no_target"), "--output", str(tmp_path / "notes.txt" / "out")]
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert lines[0].endswith("error: 4 inputs of this run cannot be used; nothing was started:")
    assert lines[1].startswith(f"  - none of the requested tasks has a prompt file in {data} (absent: aime25)")
    assert lines[1].endswith(f"build_eval_datasets.py --tasks aime25 --output-dir {data}")
    assert lines[2].startswith(f"  - config file {tmp_path / 'nope.py'} not found; fix the config path")
    assert lines[3] == (
        f"  - --target: no such folder: {tmp_path / 'no_target'} (the target must be an existing local folder, "
        "or a hub id of the form owner/name); check the path and the current directory"
    )
    assert lines[4] == (
        f"  - output folder {tmp_path / 'notes.txt' / 'out'}: {tmp_path / 'notes.txt'} is a file, not a folder; "
        "choose another folder"
    )
    assert (tmp_path / "notes.txt").read_text() == "a user's file\n"


def test_present_and_absent_tasks_and_the_cache_estimate(tmp_path, capsys, monkeypatch):
    data = _prompts(tmp_path / "prompts", "gsm8k", "humaneval")
    monkeypatch.setenv("DEEPSPEC_TINY_TARGET", str(tmp_path / "tiny"))
    rc = preflight.main(
        ["--tasks", "gsm8k:4,aime25:4,humaneval:2", "--eval-data-dir", str(data), "--target", str(tmp_path / "tiny")]
        + ["--tiny-target", "--output", str(tmp_path / "out"), "--config", "config/dspark/dspark_tiny.py"]
        + ["--cache-dir", str(tmp_path / "out" / "cache"), "--cache-samples", "256", "--cache-tokens", "640"]
    )
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert out[0] == "[preflight] prompt files: gsm8k (4), humaneval (2)"
    assert out[1].startswith(f"[preflight] not evaluated, no prompt file in {data}: aime25 ")
    # The tiny target does not exist yet: its folder must be writable, its size is the tiny architecture's.
    assert f"[preflight] output folder {tmp_path / 'tiny'} (writable)" in out
    # 256 x 512 tokens (data.max_length caps 640) x (3 captured + last) layers x 192 x 2 bytes + ids/mask + index.
    cache = [line for line in out if "target cache" in line]
    assert cache and "256 samples x 512 tokens, 3 captured layers + the last, hidden 192" in cache[0]
    assert not (tmp_path / "out").exists()


def test_train_and_eval_check_before_loading(tmp_path):
    res = run_entry(
        "train.py",
        ["--config", "config/dspark/dspark_tiny.py", "--online", "--train-data-path", __file__]
        + ["--opts", f"model.target_model_name_or_path={tmp_path / 'gone'}"],
    )
    assert res.rc == 2 and "Traceback" not in res.output
    assert f"model.target_model_name_or_path: no such folder: {tmp_path / 'gone'} (the target" in res.stderr
    res = run_entry(
        "eval.py",
        ["--target_name_or_path", tmp_path / "gone", "--draft_name_or_path", tmp_path / "nodraft", "--tasks", "gsm8k:1"]
        + ["--output-dir", tmp_path / "out"],
    )
    assert res.rc == 2 and "eval.py: error: 2 inputs of this run cannot be used; nothing was started:" in res.stderr
    assert f"--draft_name_or_path: no such folder: {tmp_path / 'nodraft'} (the draft" in res.stderr
    assert not (tmp_path / "out").exists()


def test_quickstart_stops_in_its_first_seconds(tmp_path):
    t0 = time.time()
    res = run_entry(
        "scripts/quickstart.sh",
        ["--fast", "--out", tmp_path / "run"],
        env={"DEEPSPEC_EVAL_DATA_DIR": str(tmp_path / "empty_prompts"), "DEEPSPEC_TINY_TARGET": ""},
        timeout=120,
    )
    assert res.rc == 2, res.output[-2000:]
    assert "eval data folder" in res.stderr and "does not exist" in res.stderr
    assert "==> tiny target" not in res.stdout and not (tmp_path / "run").exists()
    print(f"quickstart refused in {time.time() - t0:.1f} s")


def test_prepare_data_stops_before_downloading(tmp_path):
    res = run_entry(
        "scripts/data/prepare_data.sh",
        [],
        env={"CONFIG": str(tmp_path / "nope.py"), "DATA_DIR": str(tmp_path / "data"), "CACHE_DIR": str(tmp_path / "c")},
        timeout=120,
    )
    assert res.rc == 2 and f"config file {tmp_path / 'nope.py'} not found" in res.stderr
    assert "download and split" not in res.stdout and not (tmp_path / "data").exists()


def test_check_run_inputs_one_problem_is_one_line(tmp_path):
    (tmp_path / "f").write_text("")
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "config.json").write_text("{}")
    with pytest.raises(PreflightError) as e:
        check_run_inputs(target=(tmp_path / "target", "--t"), outputs={"--output-dir": tmp_path / "f" / "x"})
    assert (
        str(e.value)
        == f"--output-dir {tmp_path / 'f' / 'x'}: {tmp_path / 'f'} is a file, not a folder; choose another folder"
    )
