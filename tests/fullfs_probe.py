"""Run inside a private small filesystem (tests/test_disk_full.py mounts a tmpfs in a user namespace, so no root
is needed): fill it, run each writer into it, and print what happened as one JSON object on stdout.

    python tests/fullfs_probe.py MOUNT TARGET DATA CONFIG

The mount disappears with the namespace, so everything that must be looked at is looked at here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
DRAFT = dict(algorithm="dspark", markov_rank=8, markov_head_type="vanilla")


def fill(mount: Path, *, leave: int) -> Path:
    """A filler file that leaves about ``leave`` bytes free on the mount."""
    filler = mount / "filler"
    free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))
    return filler


def run(args: list[str]) -> dict:
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env)
    return {"rc": proc.returncode, "stderr": proc.stderr[-3000:], "stdout": proc.stdout[-3000:]}


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def cache_case(mount: Path, target: str, data: str, config: str) -> dict:
    cache = mount / "cache"
    build = ["scripts/data/prepare_target_cache.py", "--config", config, "--train-data-path", data]
    build += ["--output-dir", str(cache), "--max-shard-bytes", "1", "--nproc", "1", "--opts"]
    build += [f"model.target_model_name_or_path={target}", "model.target_layer_ids=[-1, 1]"]
    filler = fill(mount, leave=100 << 10)
    out = {"precheck": run(build)}  # the estimate says it will not fit before any work
    out["full"] = run(build + ["--ignore-disk-space"])  # forced: the disk fills mid-build
    out["after_full"] = listing(cache)
    out["committed_after_full"] = {p.name: p.stat().st_size for p in cache.glob("rank*.shard*")}
    kept = {p.name: p.read_bytes() for p in cache.glob("rank*.shard*")}
    filler.unlink()
    out["rerun"] = run(build)
    out["kept_unchanged"] = all((cache / n).read_bytes() == b for n, b in kept.items())
    out["after_rerun"] = listing(cache)
    from deepspec.cache.reader import TargetCache

    out["num_samples"] = len(TargetCache(cache))
    return out


def export_case(mount: Path) -> dict:
    from shared_targets import saved_export_draft

    draft = saved_export_draft(Path(os.environ["FULLFS_SCRATCH"]) / "run", **DRAFT)
    filler = fill(mount, leave=16 << 10)
    out = {"export": run(["scripts/export/export_draft.py", "--draft", str(draft), "--output-dir", str(mount / "exp")])}
    out["after"] = listing(mount)
    filler.unlink()
    return out


def checkpoint_case(mount: Path) -> dict:
    from shared_targets import saved_export_draft

    filler = fill(mount, leave=16 << 10)
    try:
        saved_export_draft(mount / "ck", **DRAFT)
        out = {"error": None}
    except Exception as exc:  # noqa: BLE001 - the type and text are what the test checks
        out = {"error": f"{type(exc).__name__}: {exc}"}
    out["after"] = listing(mount / "ck")
    filler.unlink()
    return out


def main() -> None:
    mount, target, data, config = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    result = {
        "cache": cache_case(mount, target, data, config),
        "export": export_case(mount),
        "checkpoint": checkpoint_case(mount),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
