"""Harness for bad-input cases: run an entry point as a user would, then check how it refused.

Every case asserts three things: a non-zero exit code, no Python traceback (a traceback means a
bug, not a message), and the user's files byte-for-byte untouched. ``refused`` also checks that
the message names what is wrong.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_entry(
    script: str,
    args: Sequence[str | os.PathLike],
    *,
    cwd: Path | None = None,
    env: dict | None = None,
    timeout: float = 300,
    stdin: str | None = None,
) -> Result:
    """Run ``python <ROOT/script> args`` (or ``bash`` for ``*.sh``) in a subprocess."""
    path = ROOT / script
    cmd = (["bash", str(path)] if script.endswith(".sh") else [sys.executable, str(path)]) + [str(a) for a in args]
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
    full_env.update(env or {})
    proc = subprocess.run(
        cmd, cwd=cwd or ROOT, env=full_env, capture_output=True, text=True, timeout=timeout, input=stdin
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def fingerprint(paths: Iterable[str | os.PathLike]) -> dict[str, str]:
    """sha256 of every file under ``paths`` (files or folders), to prove they were left untouched."""
    out: dict[str, str] = {}
    for p in map(Path, paths):
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else ([p] if p.exists() else [])
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
        if not p.exists():
            out[str(p)] = "<absent>"
    return out


def refused(result: Result, *needles: str, code: int | None = None) -> None:
    """A clear refusal: non-zero exit, no traceback, and every needle in the output."""
    assert result.rc != 0, f"expected a refusal, got exit 0:\n{result.output[-3000:]}"
    if code is not None:
        assert result.rc == code, f"exit code {result.rc}, expected {code}:\n{result.output[-3000:]}"
    assert "Traceback (most recent call last)" not in result.output, (
        f"traceback instead of a message:\n{result.output[-3000:]}"
    )
    for needle in needles:
        assert needle in result.output, f"{needle!r} not in the message:\n{result.output[-3000:]}"
