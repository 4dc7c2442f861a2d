"""A full disk (issue 28), on a real small filesystem: a 1 MiB tmpfs mounted in a user namespace (``unshare -rm``,
no root needed; skipped where the kernel does not allow it). tests/fullfs_probe.py runs inside it and reports.

Each writer (the cache shards, an export, a checkpoint) ends in one line naming the path and the free disk, leaves
nothing that could be taken for a complete output, and the cache build, re-run once there is room, keeps the
shards it had committed and completes. The file-size-limit twins of these cases use ``ulimit -f``
(test_bad_inputs_cache.py, test_bad_inputs_train_eval.py, test_export_draft.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from badinput import ROOT
from tinyrun import RUN_SIZES
from deepspec.tiny_target import build_random_tiny_target


def _namespace_mount_works(tmp_path) -> bool:
    probe = tmp_path / "probe_mount"
    probe.mkdir()
    cmd = ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0"', str(probe)]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.slow
def test_every_writer_on_a_full_disk_is_one_line_and_the_cache_build_continues(tmp_path):
    if not _namespace_mount_works(tmp_path):
        pytest.skip("no user-namespace tmpfs here (unshare -rm mount is not allowed)")
    target = build_random_tiny_target(
        output_dir=tmp_path / "target",
        seed=0,
        **RUN_SIZES,
    )
    rows = []  # long samples first in the build order: one commits, the next one fills the disk
    for i in range(8):
        answer = "    return x" + " + x" * (60 if i % 2 == 0 else 4)
        turns = [{"role": "user", "content": f"def f{i}(x):"}, {"role": "assistant", "content": answer}]
        rows.append(json.dumps({"id": f"c{i}", "conversations": turns}))
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(rows) + "\n")
    mount = tmp_path / "mnt"
    mount.mkdir()
    script = 'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$1" tests/fullfs_probe.py "$0" "$2" "$3" "$4"'
    config = str(ROOT / "config/dspark/dspark_tiny.py")
    cmd = ["unshare", "-rm", "sh", "-c", script, str(mount), sys.executable, str(target), str(data), config]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FULLFS_SCRATCH": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])

    cache = report["cache"]
    assert cache["precheck"]["rc"] == 2 and "not enough disk space: estimated cache size" in cache["precheck"]["stderr"]
    full = cache["full"]
    assert full["rc"] == 2 and "Traceback" not in full["stderr"], full["stderr"]
    assert (
        f"prepare_target_cache.py: error: writing {mount / 'cache'} failed ([Errno 28] No space left" in full["stderr"]
    )
    assert "resumes after the last committed shard" in full["stderr"]
    assert "manifest.json" not in cache["after_full"] and cache["committed_after_full"]  # some shards committed
    assert cache["rerun"]["rc"] == 0, cache["rerun"]["stderr"]
    assert cache["kept_unchanged"] and cache["num_samples"] == 8
    assert "manifest.json" in cache["after_rerun"] and not [n for n in cache["after_rerun"] if n.endswith(".tmp")]

    export = report["export"]["export"]
    assert export["rc"] == 2 and "Traceback" not in export["stderr"], export["stderr"]
    assert f"writing {mount / 'exp'} failed (" in export["stderr"] and "No space left" in export["stderr"]
    assert not [n for n in report["export"]["after"] if n.startswith(("exp", ".exp"))]  # no export, no temp folder

    checkpoint = report["checkpoint"]
    assert checkpoint["error"].startswith(f"OSError: writing {mount / 'ck' / '.step_1.tmp'} failed (")
    assert "No space left" in checkpoint["error"] and checkpoint["after"] == []
