"""One rule for outputs (issue 28): no tool writes onto, into or around what it reads, nor into a folder that
another kind of tool owns (a target or draft, a checkpoint root, a target cache, an eval run).

The rule is deepspec.errors.check_outputs_apart; the cases run each entry point as a user would and check the
refusal (exit 2, one line, no traceback) and that every file of the user's is byte-for-byte unchanged and
nothing new appeared.
"""

from __future__ import annotations

import json
import os

import pytest

from badinput import fingerprint, refused, run_entry
from deepspec.errors import InputProtectionError, check_outputs_apart, owned_kind
from deepspec.launch import LAUNCH_ENV_VARS
from shared_targets import saved_export_draft

GAMMA = 4


def _rounds(path):
    """A threshold-0 rounds.jsonl: 8 prompts x 4 rounds, every slot's logit set so the labels vary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(8):
        for r in range(4):
            logits = [1.0 - 0.5 * k + 0.1 * ((p + r) % 3) for k in range(GAMMA)]
            rows.append(
                {
                    "task": "code" if p % 2 else "math",
                    "prompt_index": p,
                    "round": r,
                    "gamma": GAMMA,
                    "proposal_len": GAMMA,
                    "accepted": (p + r) % (GAMMA + 1),
                    "conf_logits": logits,
                }
            )
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One folder of each owned kind, a plain folder, and the small tools' inputs."""
    base = tmp_path_factory.mktemp("owned")
    target = base / "target"  # a model folder: config.json + weights
    target.mkdir()
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"not read")
    ckpt_latest = saved_export_draft(base / "ckpt", algorithm="dspark", markov_rank=8, markov_head_type="vanilla")
    cache = base / "cache"
    cache.mkdir()
    (cache / "manifest.json").write_text("{}")
    (cache / "index.bin").write_bytes(b"")
    for name in ("run", "other_run"):
        _rounds(base / name / "rounds.jsonl")
        (base / name / "results.json").write_text(json.dumps({"tasks": {"gsm8k": {"acceptance_length": 2.5}}}))
    (base / "plain").mkdir()
    cost = base / "cost.json"
    cost.write_text(json.dumps({"batch_tokens": [1, 8, 64], "steps_per_second": [100.0, 99.0, 90.0]}))
    data = base / "data.jsonl"
    data.write_text(json.dumps({"conversations": [{"role": "user", "content": "a"}]}) + "\n")
    return {
        "base": base,
        "target": target,
        "ckpt": base / "ckpt",
        "latest": ckpt_latest,
        "cache": cache,
        "run": base / "run",
        "other_run": base / "other_run",
        "plain": base / "plain",
        "cost": cost,
        "data": data,
    }


def test_owned_kinds_are_known_by_their_files(world, tmp_path):
    assert owned_kind(world["target"]) == ("model folder", "config.json and model.safetensors")
    assert owned_kind(world["ckpt"]) == ("checkpoint root", "step_latest")
    assert owned_kind(world["ckpt"] / "step_1")[0] == "model folder"
    assert owned_kind(world["cache"]) == ("target cache", "manifest.json and index.bin")
    assert owned_kind(world["run"]) == ("eval run", "results.json and rounds.jsonl")
    assert owned_kind(world["plain"]) is None and owned_kind(world["data"]) is None
    # A checkpoint root without its link (copied without symlinks), and a partial cache build.
    (tmp_path / "copied" / "step_3").mkdir(parents=True)
    (tmp_path / "copied" / "step_3" / "training_state.pt").write_bytes(b"")
    assert owned_kind(tmp_path / "copied") == ("checkpoint root", "step_3/training_state.pt")
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "rank00001.meta.json").write_text("{}")
    assert owned_kind(tmp_path / "partial") == ("target cache", "rank00001.meta.json of a partial build")


def test_the_rule_allows_only_the_tools_own_kinds(world):
    run, ckpt = world["run"], world["ckpt"]
    check_outputs_apart(inputs=[], outputs=[run / "threshold_sweep.json"], may_write_into=("eval run",))
    check_outputs_apart(inputs=[], outputs=[world["plain"] / "x.json"])
    with pytest.raises(InputProtectionError) as err:
        check_outputs_apart(inputs=[], outputs=[run / "sub" / "x.json"], what="--output-dir")
    assert str(err.value) == (
        f"--output-dir path {run / 'sub' / 'x.json'} lies in {run}, an eval run (it holds results.json and "
        "rounds.jsonl); this tool does not write into an eval run. Choose a path outside it."
    )
    # Symlinks are followed: step_latest is the model folder step_1 inside the checkpoint root.
    with pytest.raises(InputProtectionError, match=f"lies in {ckpt / 'step_1'}, a model folder"):
        check_outputs_apart(inputs=[], outputs=[world["latest"] / "calibration_report.json"])
    check_outputs_apart(
        inputs=[], outputs=[world["latest"] / "calibration.json"], may_write_into=("model folder", "checkpoint root")
    )
    with pytest.raises(InputProtectionError, match=f"{ckpt} is a checkpoint root"):
        check_outputs_apart(inputs=[], output_dirs=[ckpt], may_write_into=("model folder",))
    with pytest.raises(ValueError, match="unknown kinds"):
        check_outputs_apart(inputs=[], outputs=[], may_write_into=("run",))


# (id, script, args with {placeholders}, needle with {placeholders})
CASES = [
    (
        "compare-into-checkpoint-root",
        "scripts/eval/compare.py",
        ["--runs", "a={run}", "--output-dir", "{ckpt}"],
        "--output-dir path {ckpt}/results.json lies in {ckpt}, a checkpoint root (it holds step_latest)",
    ),
    (
        "compare-into-another-run",
        "scripts/eval/compare.py",
        ["--runs", "a={run}", "--output-dir", "{other_run}"],
        "lies in {other_run}, an eval run (it holds results.json and rounds.jsonl)",
    ),
    (
        "simulate-into-target",
        "scripts/eval/simulate_serving.py",
        ["{run}/rounds.jsonl", "--cost-table", "{cost}", "--output-dir", "{target}"],
        "--output-dir path {target}/simulation.json lies in {target}, a model folder",
    ),
    (
        "simulate-into-cache",
        "scripts/eval/simulate_serving.py",
        ["{run}/rounds.jsonl", "--cost-table", "{cost}", "--output-dir", "{cache}/sim"],
        "lies in {cache}, a target cache (it holds manifest.json and index.bin)",
    ),
    (
        "simulate-into-its-rounds-folder",
        "scripts/eval/simulate_serving.py",
        ["{run}", "--cost-table", "{cost}", "--output-dir", "{run}/sim"],
        "--output-dir path {run}/sim/simulation.json lies inside the input folder {run}",
    ),
    (
        "sweep-into-the-draft",
        "scripts/eval/threshold_sweep.py",
        ["--rounds", "{run}/rounds.jsonl", "--draft", "{latest}", "--output-dir", "{latest}"],
        "lies inside the input folder {latest}",
    ),
    (
        "sweep-into-target",
        "scripts/eval/threshold_sweep.py",
        ["--rounds", "{run}/rounds.jsonl", "--output-dir", "{target}"],
        "lies in {target}, a model folder",
    ),
    (
        "ablations-into-checkpoint-root",
        "scripts/eval/plot_ablations.py",
        ["--output-dir", "{ckpt}"],
        "--output-dir path {ckpt}/ablations.md lies in {ckpt}, a checkpoint root",
    ),
    (
        "ablations-with-no-run",
        "scripts/eval/plot_ablations.py",
        ["--output-dir", "{plain}"],
        "no ablation run under {plain}/eval has a results.json (looked for dflash, dflash_b12",
    ),
    (
        "calibrate-report-into-checkpoint-root",
        "scripts/eval/calibrate.py",
        ["--rounds", "{run}/rounds.jsonl", "--dry-run", "--output-dir", "{ckpt}/report"],
        "lies in {ckpt}, a checkpoint root",
    ),
    (
        "profile-into-run",
        "scripts/eval/profile_engine.py",
        ["--output-file-path", "{run}/cost.json"],
        "--output-file-path path {run}/cost.json lies in {run}, an eval run",
    ),
    (
        "export-into-checkpoint-root",
        "scripts/export/export_draft.py",
        ["--draft", "{latest}", "--output-dir", "{ckpt}/export"],
        "--output-dir path {ckpt}/export lies in {ckpt}, a checkpoint root",
    ),
    (
        "eval-into-cache",
        "eval.py",
        ["--draft_name_or_path", "{latest}", "--tasks", "gsm8k:1", "--output-dir", "{cache}/eval"],
        "--output-dir path {cache}/eval lies in {cache}, a target cache",
    ),
    (
        "cache-build-in-a-checkpoint-root",
        "scripts/data/prepare_target_cache.py",
        ["--config", "config/dspark/dspark_tiny.py", "--train-data-path", "{data}", "--output-dir", "{ckpt}/cache"],
        "cache output path {ckpt}/cache lies in {ckpt}, a checkpoint root",
    ),
    (
        "regenerated-data-into-a-run",
        "scripts/data/generate_train_data.py",
        ["--backend", "hf", "--model", "{target}", "--input-file-path", "{data}"]
        + ["--output-file-path", "{run}/regen.jsonl"],
        "output path {run}/regen.jsonl lies in {run}, an eval run",
    ),
    (
        "train-checkpoints-around-the-data",
        "train.py",
        ["--config", "config/dspark/dspark_tiny.py", "--online", "--train-data-path", "{data}"]
        + ["--opts", "logging.checkpoint_dir={base}", "logging.tensorboard_dir={plain}/tb"],
        "logging.checkpoint_dir folder {base} contains the input",
    ),
    (
        "train-checkpoints-in-a-run",
        "train.py",
        ["--config", "config/dspark/dspark_tiny.py", "--online", "--train-data-path", "{data}"]
        + ["--opts", "logging.checkpoint_dir={run}/ck", "logging.tensorboard_dir={plain}/tb"],
        "logging.checkpoint_dir path {run}/ck lies in {run}, an eval run",
    ),
]


@pytest.mark.parametrize("script,args,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_no_tool_writes_into_an_input_or_a_folder_of_another_kind(world, script, args, needle):
    fill = {k: str(v) for k, v in world.items()}
    before = fingerprint([world["base"]])
    env = {**{k: "" for k in LAUNCH_ENV_VARS}, "DEEPSPEC_TINY_TARGET": str(world["target"])}
    result = run_entry(script, [a.format(**fill) for a in args], env=env)
    refused(result, needle.format(**fill), code=2)
    assert fingerprint([world["base"]]) == before


def test_calibration_json_still_goes_into_the_draft_in_its_checkpoint_root(world, tmp_path):
    """calibrate.py's own output: calibration.json in the draft's step folder (inside the checkpoint root)."""
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(world["ckpt"], ckpt, symlinks=True)
    result = run_entry(
        "scripts/eval/calibrate.py",
        ["--rounds", world["run"] / "rounds.jsonl", "--draft", ckpt, "--output-dir", tmp_path / "report"],
    )
    assert result.rc == 0, result.output[-2000:]
    assert json.loads((ckpt / "step_1" / "calibration.json").read_text())["method"] == "sts"
    assert os.readlink(ckpt / "step_latest") == "step_1"


def test_a_tiny_target_is_never_built_inside_another_kind(world):
    from deepspec.tiny_target import build_tiny_target

    before = fingerprint([world["base"]])
    with pytest.raises(InputProtectionError, match=f"lies in {world['ckpt']}, a checkpoint root"):
        build_tiny_target(output_dir=world["ckpt"] / "tiny", steps=1, log=None)
    assert fingerprint([world["base"]]) == before
