"""scripts/export/export_draft.py: --format deepspec (vLLM's method dspark folder), --dtype, refusals."""

import json
import os
import shutil

import torch
from safetensors.torch import load_file

from deepspec.training.checkpoint import LATEST_NAME
from badinput import fingerprint, refused, run_entry
from shared_targets import export_target_config, saved_export_draft

SCRIPT = "scripts/export/export_draft.py"


def test_dspark_export_casts_to_bf16_and_keeps_every_tensor(tmp_path):
    src = saved_export_draft(tmp_path / "run", algorithm="dspark", markov_rank=8, markov_head_type="vanilla")
    result = run_entry(SCRIPT, ["--draft", src, "--output", tmp_path / "out", "--dtype", "bf16"])
    assert result.rc == 0, result.output
    before, after = load_file(src / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert before.keys() == after.keys()
    for k in before:
        want = before[k].to(torch.bfloat16) if before[k].is_floating_point() else before[k]
        assert after[k].dtype == want.dtype and torch.equal(after[k], want), k
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["torch_dtype"] == "bfloat16" and cfg["sample_from_anchor"] is True and cfg["markov_rank"] == 8


def test_dflash_export_gets_an_all_zero_rank_one_head(tmp_path):
    src = saved_export_draft(tmp_path / "run", algorithm="dflash", markov_rank=0)
    assert run_entry(SCRIPT, ["--draft", src, "--output", tmp_path / "out"]).rc == 0
    after = load_file(tmp_path / "out" / "model.safetensors")
    for name in ("markov_head.markov_w1.weight", "markov_head.markov_w2.weight"):
        assert after[name].shape == (export_target_config("qwen3").vocab_size, 1) and not after[name].any()
    assert json.loads((tmp_path / "out" / "config.json").read_text())["markov_rank"] == 1


def test_gated_head_is_refused_and_nothing_is_written(tmp_path):
    src = saved_export_draft(tmp_path / "run", algorithm="dspark", markov_rank=8, markov_head_type="gated")
    before = fingerprint([tmp_path / "run"])
    result = run_entry(SCRIPT, ["--draft", src, "--output", tmp_path / "out"])
    refused(result, "markov_head_type='gated': vLLM implements only the vanilla Markov head", code=2)
    assert not (tmp_path / "out").exists() and fingerprint([tmp_path / "run"]) == before


def test_non_empty_output_needs_overwrite(tmp_path):
    src = saved_export_draft(tmp_path / "run", algorithm="dspark", markov_rank=8, markov_head_type="vanilla")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    refused(run_entry(SCRIPT, ["--draft", src, "--output", tmp_path / "out"]), "exists and is not empty", code=2)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_overwrite_never_deletes_the_draft_or_files_it_did_not_write(tmp_path):
    src = saved_export_draft(tmp_path / "run", algorithm="dspark", markov_rank=8, markov_head_type="vanilla")
    before = fingerprint([tmp_path / "run"])
    # The checkpoint root holds the draft being read (step_latest -> step_1): --overwrite must not replace it.
    refused(
        run_entry(SCRIPT, ["--draft", src, "--output", tmp_path / "run", "--overwrite"]),
        f"--output-dir folder {tmp_path / 'run'} contains the input {src}",
        code=2,
    )
    # Nor write inside the draft folder.
    refused(
        run_entry(SCRIPT, ["--draft", src, "--output", src / "export", "--overwrite"]),
        "lies inside the input folder",
        code=2,
    )
    assert fingerprint([tmp_path / "run"]) == before
    # A folder holding anything an export does not write stays as it is, --overwrite or not.
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "config.json").write_text("{}")
    (tmp_path / "mixed" / "notes.txt").write_text("mine")
    refused(
        run_entry(SCRIPT, ["--draft", src, "--output", tmp_path / "mixed", "--overwrite"]),
        "holds notes.txt, which no export writes; --overwrite replaces only an earlier export",
        code=2,
    )
    assert (tmp_path / "mixed" / "notes.txt").read_text() == "mine"
    # An earlier export is replaced.
    out = tmp_path / "export"
    assert run_entry(SCRIPT, ["--draft", src, "--output", out]).rc == 0
    first = (out / "model.safetensors").read_bytes()
    assert run_entry(SCRIPT, ["--draft", src, "--output", out, "--overwrite", "--dtype", "bf16"]).rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert (out / "model.safetensors").read_bytes() != first
    assert fingerprint([tmp_path / "run"]) == before


def test_verifier_and_target_paths_that_are_not_there_are_refused(tmp_path):
    src = saved_export_draft(tmp_path / "run", algorithm="dspark", markov_rank=8, markov_head_type="vanilla")
    for flag in ("--verifier", "--target"):
        refused(
            run_entry(SCRIPT, ["--draft", src, "--format", "speculators", "--output", tmp_path / "o", flag, "./gone"]),
            f"no such folder: ./gone (the {flag} model must be an existing local folder, or a hub id",
            code=2,
        )
    assert not (tmp_path / "o").exists()


def test_step_latest_that_is_a_real_folder_is_moved_aside_and_a_dangling_one_is_named(tmp_path, capsys):
    from deepspec.training.checkpoint import latest_checkpoint, point_latest

    src = saved_export_draft(tmp_path / "run", algorithm="dspark", markov_rank=8, markov_head_type="vanilla")
    root = tmp_path / "run"
    # As `scp -r` leaves it: step_latest is a folder holding a copy of the draft.
    os.unlink(src)
    shutil.copytree(root / "step_1", root / LATEST_NAME)
    (root / LATEST_NAME / "note.txt").write_text("mine")
    point_latest(root, "step_1")
    moved = [p for p in root.iterdir() if p.name.startswith(f"{LATEST_NAME}.moved-")]
    assert len(moved) == 1 and (moved[0] / "note.txt").read_text() == "mine"  # moved aside, not deleted
    assert os.readlink(root / LATEST_NAME) == "step_1" and latest_checkpoint(root) == root / "step_1"
    assert f"{root / LATEST_NAME} was a folder" in capsys.readouterr().err
    # A dangling link is named as such, with what to pass instead.
    shutil.rmtree(root / "step_1")
    res = run_entry(SCRIPT, ["--draft", root / LATEST_NAME, "--output", tmp_path / "o"])
    refused(res, f"{root / LATEST_NAME} is a dangling symlink: it points at step_1, which does not exist", code=2)
    assert f"pass the checkpoint folder {root}" in res.stderr


def test_a_write_past_the_file_size_limit_is_one_line_and_leaves_nothing(tmp_path):
    """ulimit -f: safetensors' error (no OSError) and the checkpoint writer both end in one line."""
    import subprocess
    import sys

    from badinput import ROOT

    src = saved_export_draft(tmp_path / "run", algorithm="dspark", markov_rank=8, markov_head_type="vanilla")
    before = fingerprint([tmp_path / "run"])
    cmd = f"ulimit -f 64; exec {sys.executable} {ROOT / SCRIPT} --draft {src} --output {tmp_path / 'out'}"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # a .pyc truncated by the limit would break later imports
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"writing {tmp_path / 'out'} failed (" in proc.stderr and "ulimit -f" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no export, no temp folder
    assert fingerprint([tmp_path / "run"]) == before
    # The checkpoint writer: the step is not left behind as a folder a resume would take.
    code = (
        "import sys; sys.path.insert(0, 'tests'); from pathlib import Path; "
        "from shared_targets import saved_export_draft; "
        f"saved_export_draft(Path({str(tmp_path / 'run2')!r}), algorithm='dspark', markov_rank=8, "
        "markov_head_type='vanilla')"
    )
    proc = subprocess.run(
        ["bash", "-c", f'ulimit -f 64; exec {sys.executable} -c "{code}"'],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode != 0 and f"writing {tmp_path / 'run2' / '.step_1.tmp'} failed (" in proc.stderr
    assert not any(p.name.startswith(("step_1", ".step_1")) for p in (tmp_path / "run2").iterdir())
