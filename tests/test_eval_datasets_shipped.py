"""The benchmark prompt files that ship with the code: present, intact, attributed, and the default.

A fresh clone must evaluate without anything beside it, so these five files are committed; the
other four tasks' sources do not allow redistribution and stay out (git ignores them).
"""

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from deepspec.eval.tasks import KNOWN_TASKS, SHIPPED_TASKS, parse_tasks

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "eval_datasets"
LICENSES = {"gsm8k": "MIT", "math500": "MIT", "humaneval": "MIT", "mbpp": "CC-BY-4.0", "mt-bench": "Apache-2.0"}


def _readme_table() -> dict[str, tuple[int, str, str]]:
    """``{file: (rows, license, sha256)}`` from eval_datasets/README.md's table of shipped files."""
    rows = {}
    for line in (DATA / "README.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\| (\S+\.jsonl) \| (\d+) \| .* \| (\S+) \| `([0-9a-f]{64})` \|$", line)
        if m:
            rows[m[1]] = (int(m[2]), m[3], m[4])
    return rows


def test_the_five_shipped_files_match_the_readme_table():
    table = _readme_table()
    assert sorted(table) == sorted(f"{t}.jsonl" for t in SHIPPED_TASKS)
    for task in SHIPPED_TASKS:
        path = DATA / f"{task}.jsonl"
        rows, license_, sha = table[path.name]
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha, f"{path} changed: update the README table and NOTICE"
        lines = [line for line in data.decode("utf-8").split("\n") if line.strip()]
        assert len(lines) == rows
        assert license_ == LICENSES[task]
        for line in lines:
            turns = json.loads(line)["turns"]
            assert turns and all(isinstance(t, str) for t in turns) and turns[0].strip()
        if task == "mt-bench":
            assert {len(json.loads(line)["turns"]) for line in lines} == {2}


def test_notice_attributes_every_shipped_file():
    notice = (ROOT / "NOTICE").read_text(encoding="utf-8")
    for task in SHIPPED_TASKS:
        entry = notice[notice.index(f"eval_datasets/{task}.jsonl") :].split("\n- ")[0]
        assert "Changed:" in entry, task
        assert {"MIT": "MIT License", "CC-BY-4.0": "CC BY 4.0", "Apache-2.0": "Apache License 2.0"}[
            LICENSES[task]
        ] in entry, task
    for task in set(KNOWN_TASKS) - set(SHIPPED_TASKS):
        assert task in notice.split("Not shipped")[1]


def test_default_folder_evaluates_the_shipped_tasks(monkeypatch):
    monkeypatch.delenv("DEEPSPEC_EVAL_DATA_DIR", raising=False)
    tasks, absent = parse_tasks(None)
    names = [t.name for t in tasks]
    assert set(SHIPPED_TASKS) <= set(names)
    assert set(names) | set(absent) == set(KNOWN_TASKS)
    assert {t.name: t.count for t in tasks}["mbpp"] == 256  # the paper's count, of the 257 rows


@pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None, reason="not a git checkout")
def test_git_ships_five_and_ignores_the_rest():
    def ignored(name):
        rc = subprocess.run(["git", "check-ignore", "-q", f"eval_datasets/{name}.jsonl"], cwd=ROOT).returncode
        return rc == 0

    assert [t for t in KNOWN_TASKS if not ignored(t)] == [t for t in KNOWN_TASKS if t in SHIPPED_TASKS]
