"""Bad inputs to calibrate.py, threshold_sweep.py, simulate_serving.py and a resumed train.py.

Each case runs the entry point as a user would and asserts a non-zero exit, no traceback, a message
that names the problem, and the user's files byte-for-byte untouched (tests/badinput.py). Unit tests
of the shared pieces (deepspec.cli's option types, round-record validation) come first.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest

from badinput import fingerprint, refused, run_entry
from deepspec.launch import LAUNCH_ENV_VARS
from deepspec.cli import nonnegative_float, nonnegative_int, positive_float, positive_int, probability
from deepspec.decoding.confidence import CalibrationError, read_calibration_file
from deepspec.decoding.rounds import read_rounds
from deepspec.eval.calibration import save_calibration
from tinyrun import RUN_SIZES

CALIBRATE = "scripts/eval/calibrate.py"
SWEEP = "scripts/eval/threshold_sweep.py"
SIMULATE = "scripts/eval/simulate_serving.py"
GAMMA = 4
OLD_CALIBRATION = {"method": "sts", "temperatures": [1.0, 2.0, 0.5, 1.5], "gamma": 4}


# -- unit: option types ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fn, good, bad",
    [
        (positive_int, {"1": 1, "42": 42}, ["0", "-3", "1.5", "x", ""]),
        (nonnegative_int, {"0": 0, "7": 7}, ["-1", "nan", "2e3"]),
        (positive_float, {"0.5": 0.5, "3": 3.0}, ["0", "-1", "nan", "inf", "x"]),
        (nonnegative_float, {"0": 0.0, "2.5": 2.5}, ["-0.1", "nan", "-inf"]),
        (probability, {"0": 0.0, "1": 1.0, "0.3": 0.3}, ["1.01", "-0.2", "nan", "inf", "half"]),
    ],
)
def test_cli_types(fn, good, bad):
    assert {text: fn(text) for text in good} == good
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match="expected"):
            fn(text)


# -- helpers ---------------------------------------------------------------------------------------
def round_record(*, task="code", prompt=0, rnd=0, gamma=GAMMA, ell=GAMMA, accepted=2, logits="default"):
    logits = [1.0, 0.5, -0.5, -1.0][:gamma] if logits == "default" else logits
    return {
        "task": task,
        "prompt_index": prompt,
        "round": rnd,
        "gamma": gamma,
        "proposal_len": ell,
        "accepted": accepted,
        "conf_logits": logits,
    }


def write_rounds(path: Path, records=None, *, n_prompts=16, n_rounds=8) -> Path:
    """A valid threshold-0 rounds.jsonl (two tasks), or the given records / raw lines."""
    if records is None:
        rng = np.random.default_rng(0)
        records = []
        for p in range(n_prompts):
            for r in range(n_rounds):
                z = rng.normal(1.0, 1.5, size=GAMMA)
                ok = rng.random(GAMMA) < 1 / (1 + np.exp(-z))
                records.append(
                    round_record(
                        task="code" if p % 2 else "math",
                        prompt=p,
                        rnd=r,
                        accepted=int(np.cumprod(ok).sum()),
                        logits=[round(float(v), 4) for v in z],
                    )
                )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in records))
    return path


@pytest.fixture
def user(tmp_path):
    """A user's eval folder with rounds.jsonl and a draft folder already holding a calibration.json."""
    rounds = write_rounds(tmp_path / "eval" / "rounds.jsonl")
    draft = tmp_path / "draft"
    draft.mkdir()
    (draft / "config.json").write_text(json.dumps({"architectures": ["Qwen3DSparkModel"]}) + "\n")
    (draft / "calibration.json").write_text(json.dumps(OLD_CALIBRATION) + "\n")
    cost = tmp_path / "cost_table.json"
    cost.write_text(
        json.dumps({"batch_tokens": [1, 8, 64, 512, 4096], "steps_per_second": [100.0, 99.0, 90.0, 50.0, 8.0]}) + "\n"
    )
    return {"base": tmp_path, "rounds": rounds, "draft": draft, "cost": cost, "out": tmp_path / "out"}


def bad_line(user, line) -> Path:
    """The user's rounds file with one bad record appended (line 129)."""
    lines = user["rounds"].read_text().splitlines()
    write_rounds(user["rounds"], lines + [line if isinstance(line, str) else json.dumps(line)])
    return user["rounds"]


def check_refused(user, script, args, *needles):
    before = fingerprint([user["base"]])
    result = run_entry(script, [str(a) for a in args])
    refused(result, *needles)
    assert fingerprint([user["base"]]) == before, "a refused run changed the user's files"
    return result


# -- unit: round records ---------------------------------------------------------------------------
def test_read_rounds_names_the_file_and_line(tmp_path):
    good = write_rounds(tmp_path / "ok.jsonl")
    assert len(read_rounds(good)) == 128
    cases = [
        ([round_record(logits=[1.0, float("nan"), 0.0, 0.0])], r"bad.jsonl:1: conf_logits .*finite.*\[nan\]"),
        (["", json.dumps(round_record(logits=[1.0, float("inf"), 0.0, 0.0]))], r"bad.jsonl:2: .*finite.*\[inf\]"),
        ([round_record(accepted=True)], "must be integers"),
        ([round_record(logits=[1.0, True, 0.0, 0.0])], "finite numbers"),
        ([round_record(task=3)], "task must be a string"),
        ([], r"rounds file .*bad.jsonl is empty \(0 records\): run eval.py"),
        (["", "   "], r"is empty \(0 records\)"),
    ]
    for lines, match in cases:
        write_rounds(tmp_path / "bad.jsonl", lines)
        with pytest.raises(CalibrationError, match=match):
            read_rounds([good, tmp_path / "bad.jsonl"])
    with pytest.raises(CalibrationError, match="is a folder"):
        read_rounds(tmp_path)


def test_calibration_files_are_checked_in_one_place(tmp_path):
    path = tmp_path / "calibration.json"
    for text, match in (
        ('{"temperatures": [1.0, NaN]}', "not positive finite"),
        ('{"temperatures": [1.0, -2]}', "not positive finite"),
        ('{"temperatures": []}', "not an STS calibration"),
        ('{"method": "sts", "temperatures": [1.0], "gamma": 2}', "not an STS calibration"),
        ("[1, 2]", "not an STS calibration"),
        ("{", "not valid JSON"),
    ):
        path.write_text(text)
        with pytest.raises(CalibrationError, match=match):
            read_calibration_file(path)
    path.write_text('{"temperatures": [1.0, 2]}')  # the minimal form simulate_serving documents
    assert read_calibration_file(path, gamma=2) == [1.0, 2.0]
    with pytest.raises(CalibrationError, match="fitted for gamma=2"):
        read_calibration_file(path, gamma=4)
    report = {"ece": [0.1]}
    with pytest.raises(CalibrationError, match="refusing to write"):
        save_calibration(tmp_path, temperatures=[float("nan")], report_before=report, report_after=report)
    assert path.read_text() == '{"temperatures": [1.0, 2]}'


# -- calibrate.py ----------------------------------------------------------------------------------
NAN_RECORD = (
    '{"task": "code", "prompt_index": 99, "round": 0, "gamma": 4, "proposal_len": 4, "accepted": 1, '
    '"conf_logits": [0.5, NaN, 0.1, 0.2]}'
)

CALIBRATE_CASES = {
    "nan_logits": (lambda u: bad_line(u, NAN_RECORD), [], ["rounds.jsonl:129", "finite", "nan"]),
    "inf_logits": (lambda u: bad_line(u, NAN_RECORD.replace("NaN", "-Infinity")), [], ["rounds.jsonl:129", "-inf"]),
    "empty_rounds": (lambda u: write_rounds(u["rounds"], []), [], ["is empty (0 records)", "eval.py"]),
    "blank_rounds": (lambda u: write_rounds(u["rounds"], ["", ""]), [], ["is empty (0 records)"]),
    "malformed_json": (lambda u: bad_line(u, '{"task": "code", "prompt'), [], [":129", "malformed JSON"]),
    "missing_keys": (lambda u: bad_line(u, {"task": "code"}), [], [":129", "missing keys"]),
    "accepted_too_big": (
        lambda u: bad_line(u, round_record(ell=2, accepted=3)),
        [],
        [":129", "accepted <= proposal_len"],
    ),
    "logits_wrong_length": (lambda u: bad_line(u, round_record(logits=[1.0])), [], [":129", "gamma=4"]),
    "bool_accepted": (lambda u: bad_line(u, round_record(accepted=True)), [], [":129", "must be integers"]),
    "mixed_gamma": (lambda u: bad_line(u, round_record(gamma=3, ell=3, logits=[1.0, 1.0, 1.0])), [], ["mix gamma"]),
    "no_conf_head": (lambda u: write_rounds(u["rounds"], [round_record(logits=None)]), [], ["no confidence head"]),
    "binary_rounds": (
        lambda u: (u["rounds"].write_bytes(b"\xff\xfe\x00\x01" * 50), u["rounds"])[1],
        [],
        ["not a text file"],
    ),
    "rounds_missing": (lambda u: u["base"] / "eval" / "nope.jsonl", [], ["nope.jsonl: no such file"]),
    "rounds_is_folder": (lambda u: u["base"] / "eval", [], ["is a folder"]),
    "draft_missing": (
        lambda u: u["rounds"],
        ["--draft_name_or_path", "runs/nope/step_5"],
        ["no such folder: runs/nope/step_5"],
    ),
    "draft_is_a_file": (lambda u: u["rounds"], ["--draft_name_or_path", "README.md"], ["not a folder: README.md"]),
    "held_out_one": (lambda u: u["rounds"], ["--held-out-fraction", "1"], ["[0, 1)"]),
    "held_out_nan": (lambda u: u["rounds"], ["--held-out-fraction", "nan"], ["--held-out-fraction", "expected"]),
    "num_bins_one": (lambda u: u["rounds"], ["--num-bins", "1"], ["--num-bins", ">= 2"]),
    "num_bins_text": (lambda u: u["rounds"], ["--num-bins", "ten"], ["--num-bins", "'ten'"]),
    "seed_negative": (lambda u: u["rounds"], ["--seed", "-1"], ["--seed", ">= 0"]),
}


@pytest.mark.parametrize("case", sorted(CALIBRATE_CASES))
def test_calibrate_refuses(user, case):
    make, extra, needles = CALIBRATE_CASES[case]
    rounds = make(user)
    args = ["--rounds", rounds, "--output-dir", user["out"]]
    if "--draft_name_or_path" not in extra:
        args += ["--draft_name_or_path", user["draft"]]
    check_refused(user, CALIBRATE, args + extra, *needles)
    assert json.loads((user["draft"] / "calibration.json").read_text()) == OLD_CALIBRATION
    assert not user["out"].exists(), "nothing may be written before the inputs are checked"


def test_calibrate_will_not_overwrite_its_input(user):
    """The report's default place is the rounds file's folder: a rounds file named like the report is refused."""
    rounds = user["base"] / "eval" / "calibration_report.json"
    user["rounds"].rename(rounds)
    check_refused(user, CALIBRATE, ["--rounds", rounds, "--dry-run"], "calibration_report.json", "is the input")


def test_calibrate_writes_after_validation(user):
    result = run_entry(
        CALIBRATE,
        [
            "--rounds",
            user["rounds"],
            "--draft_name_or_path",
            user["draft"],
            "--output-dir",
            user["out"],
            "--held-out-fraction",
            "0.25",
        ],
    )
    assert result.rc == 0, result.output[-2000:]
    saved = json.loads((user["draft"] / "calibration.json").read_text())
    assert saved["method"] == "sts" and saved["gamma"] == GAMMA and saved["num_fit_rounds"] > 0
    assert not list(user["draft"].glob(".*.tmp"))


def test_calibrate_refuses_a_folder_where_calibration_json_goes_before_writing_anything(user):
    """Before: the report was written, then '[Errno 21] Is a directory' and a .calibration.json.tmp left behind."""
    (user["draft"] / "calibration.json").unlink()
    (user["draft"] / "calibration.json").mkdir()
    args = ["--rounds", user["rounds"], "--draft_name_or_path", user["draft"], "--output-dir", user["out"]]
    check_refused(user, CALIBRATE, args, f"{user['draft'] / 'calibration.json'} is a folder, where the calibration")
    assert not user["out"].exists() and sorted(p.name for p in user["draft"].iterdir()) == [
        "calibration.json",
        "config.json",
    ]


# -- threshold_sweep.py ----------------------------------------------------------------------------
def _bad_calibration(user, text):
    (user["draft"] / "calibration.json").write_text(text)
    return user["rounds"]


SWEEP_CASES = {
    "empty_rounds": (lambda u: write_rounds(u["rounds"], []), [], ["is empty (0 records)", "eval.py"]),
    "nan_logits": (lambda u: bad_line(u, NAN_RECORD), [], ["rounds.jsonl:129", "finite"]),
    "threshold_above_one": (lambda u: u["rounds"], ["--thresholds", "0.2", "1.5"], ["--thresholds", "[0, 1]"]),
    "threshold_nan": (lambda u: u["rounds"], ["--thresholds", "nan"], ["--thresholds"]),
    "draft_missing": (lambda u: u["rounds"], ["--draft_name_or_path", "./nope"], ["no such folder: ./nope"]),
    "draft_is_a_file": (lambda u: u["rounds"], ["--draft_name_or_path", "README.md"], ["not a folder: README.md"]),
    "calibration_nan": (
        lambda u: _bad_calibration(u, '{"method": "sts", "temperatures": [1, NaN, 1, 1], "gamma": 4}'),
        ["--draft_name_or_path", "@draft"],
        ["not positive finite"],
    ),
    "calibration_gamma": (
        lambda u: _bad_calibration(u, '{"method": "sts", "temperatures": [1, 1], "gamma": 2}'),
        ["--draft_name_or_path", "@draft"],
        ["fitted for gamma=2", "gamma=4"],
    ),
    "output_dir_is_file": (lambda u: u["rounds"], ["--output-dir", "@cost"], ["is a file"]),
}


@pytest.mark.parametrize("case", sorted(SWEEP_CASES))
def test_threshold_sweep_refuses(user, case):
    make, extra, needles = SWEEP_CASES[case]
    rounds = make(user)
    extra = [str(user["draft"]) if a == "@draft" else str(user["cost"]) if a == "@cost" else a for a in extra]
    args = ["--rounds", rounds] + ([] if "--output-dir" in extra else ["--output-dir", user["out"]])
    check_refused(user, SWEEP, args + extra, *needles)
    assert not user["out"].exists()


# -- simulate_serving.py ---------------------------------------------------------------------------
SIMULATE_CASES = {
    # parse-time refusals: no torch import, so these are quick
    "steps_zero": (lambda u: u["rounds"], ["--steps", "0"], ["--steps", ">= 1"]),
    "concurrency_zero": (lambda u: u["rounds"], ["--concurrency", "0,4"], ["--concurrency", ">= 1"]),
    "thresholds_two": (lambda u: u["rounds"], ["--thresholds", "0.5,2"], ["--thresholds", "[0, 1]"]),
    "draft_time_negative": (lambda u: u["rounds"], ["--draft-time-ms", "-1"], ["--draft-time-ms", ">= 0"]),
    # input refusals
    "empty_rounds": (lambda u: write_rounds(u["rounds"], []), [], ["is empty (0 records)", "eval.py"]),
    "folder_without_rounds": (lambda u: u["draft"], [], ["no rounds.jsonl under the folder"]),
    "all_truncated": (
        lambda u: write_rounds(u["rounds"], [round_record(ell=2, accepted=1)]),
        [],
        ["no usable rounds", "truncated"],
    ),
    "calibration_nan": (lambda u: u["rounds"], ["--calibration", "@badcal"], ["not positive finite"]),
    "output_inside_input": (lambda u: u["rounds"].parent, ["--output-dir", "@evaldir"], ["inside the input folder"]),
}


@pytest.mark.parametrize("case", sorted(SIMULATE_CASES))
def test_simulate_serving_refuses(user, case):
    make, extra, needles = SIMULATE_CASES[case]
    rounds = make(user)
    badcal = user["base"] / "badcal.json"
    badcal.write_text('{"temperatures": [1, NaN, 1, 1]}')
    subs = {"@badcal": str(badcal), "@evaldir": str(user["rounds"].parent / "sim")}
    extra = [subs.get(a, a) for a in extra]
    args = [rounds, "--cost-table", user["cost"], "--steps", "2", "--min-request-rounds", "0"]
    args += [] if "--output-dir" in extra else ["--output-dir", user["out"]]
    check_refused(user, SIMULATE, args + extra, *needles)
    assert not user["out"].exists() and not (user["rounds"].parent / "sim").exists()


# -- train.py resume -------------------------------------------------------------------------------
# (A truncated latest step falling back to the previous one, and truncated training-state files, are in
# tests/test_training.py: test_resume_falls_back_past_a_truncated_latest_checkpoint, test_resume_point_*.)
TINY = "config/dflash/dflash_tiny.py"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny target, a 16-sample cache and a 2-step run with checkpoints step_1 and step_2."""
    import importlib.util

    from badinput import ROOT
    from deepspec.run_config import load_config
    from deepspec.cache.build import build_target_cache
    from deepspec.tiny_target import build_random_tiny_target

    base = tmp_path_factory.mktemp("resume")
    target = build_random_tiny_target(
        output_dir=base / "target",
        seed=0,
        **RUN_SIZES,
    )
    rows = [
        json.dumps(
            {
                "id": f"c{i}",
                "conversations": [
                    {"role": "user", "content": f"def f{i}(x):"},
                    {"role": "assistant", "content": "    return x" + " + x" * 5},
                ],
            }
        )
        for i in range(16)
    ]
    (base / "train.jsonl").write_text("\n".join(rows) + "\n")
    opts = [
        f"model.target_model_name_or_path={target}",
        "model.target_layer_ids=[-1, 1]",
        "model.num_draft_layers=1",
        "model.num_anchors=4",
        "train.local_batch_size=2",
        "train.global_batch_size=4",
        "train.max_train_steps=2",
        "logging.checkpointing_steps=1",
        f"logging.checkpoint_dir={base / 'run'}",
        f"logging.tensorboard_dir={base / 'run' / 'tb'}",
    ]
    cfg = load_config(ROOT / TINY, opts=opts)
    build_target_cache(
        cfg=cfg,
        train_data_paths=[str(base / "train.jsonl")],
        output_dir=base / "cache",
        min_loss_tokens=2,
        max_shard_bytes=1 << 24,
        batch_size=16,
        log=lambda _: None,
    )
    spec = importlib.util.spec_from_file_location("deepspec_train_entry_bad", ROOT / "train.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    entry.run_training(cfg, cache_dir=str(base / "cache"), device="cpu", progress=False)
    return {"base": base, "run": base / "run", "cache": base / "cache", "opts": opts}


def _resume_args(trained, run):
    opts = [o for o in trained["opts"] if not o.startswith("logging.")]
    return [
        "--config",
        TINY,
        "--target-cache-dir",
        trained["cache"],
        "--device",
        "cpu",
        "--no-progress",
        "--opts",
        *opts,
        "logging.checkpointing_steps=1",
        f"logging.checkpoint_dir={run}",
        f"logging.tensorboard_dir={run}/tb",
    ]


def _copy_run(trained, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained["run"], run, symlinks=True)
    return run


def _truncate(path: Path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _evil_state(path: Path, marker: Path):
    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"step": 2, "config": {}, "x": Evil()}, path)


RESUME_CASES = {
    "every_checkpoint_truncated": (
        lambda run, m: [_truncate(run / f"step_{s}" / "model.safetensors") for s in (1, 2)],
        ["no readable checkpoint", "step_2: ", "step_1: ", "truncated or corrupted"],
    ),
    "pickled_code_in_state": (
        lambda run, m: _evil_state(run / "step_2" / "training_state.pt", m),
        ["holds Python objects beyond tensors", "could run code"],
    ),
}


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_resume_refuses(trained, tmp_path, case):
    run = _copy_run(trained, tmp_path)
    marker = tmp_path / "pwned"
    RESUME_CASES[case][0](run, marker)
    before = fingerprint([run, trained["cache"]])
    env = {k: "" for k in LAUNCH_ENV_VARS}
    refused(run_entry("train.py", _resume_args(trained, run), env=env), *RESUME_CASES[case][1])
    assert fingerprint([run, trained["cache"]]) == before
    assert not marker.exists(), "a pickled payload in a checkpoint ran"


def test_a_checkpoint_write_past_the_file_size_limit_is_one_line_and_a_rerun_continues(trained, tmp_path):
    """ulimit -f while step 2 is saved: one line, step_1 stays the latest (no step_2, no temp folder), and the same
    command without the limit resumes from step_1 and writes the step_2 an uninterrupted run wrote."""
    import shutil
    import subprocess
    import sys

    from badinput import ROOT, Result

    run = _copy_run(trained, tmp_path)
    shutil.rmtree(run / "step_2")
    os.unlink(run / "step_latest")
    os.symlink("step_1", run / "step_latest")
    before = fingerprint([run / "step_1", trained["cache"]])
    args = [str(a) for a in _resume_args(trained, run)]
    cmd = " ".join(f"'{a}'" for a in [sys.executable, "train.py", *args])
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV_VARS}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a .pyc truncated by the limit would break later imports
    proc = subprocess.run(
        ["bash", "-c", f"ulimit -f 64; exec {cmd}"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600
    )
    refused(
        Result(proc.returncode, proc.stdout, proc.stderr),
        f"train.py: error: writing {run / '.step_2.tmp'} failed (",
        "check the free disk space and the file-size limit (ulimit -f), then run the same command again",
        code=2,
    )
    assert sorted(p.name for p in run.glob("*step_*")) == ["step_1", "step_latest"]
    assert os.readlink(run / "step_latest") == "step_1" and fingerprint([run / "step_1", trained["cache"]]) == before
    again = run_entry("train.py", args, env={k: "" for k in LAUNCH_ENV_VARS})
    assert again.rc == 0, again.output[-2000:]
    assert os.readlink(run / "step_latest") == "step_2"
    want = (trained["run"] / "step_2" / "model.safetensors").read_bytes()
    assert (run / "step_2" / "model.safetensors").read_bytes() == want


def test_resume_checks_the_data_it_was_trained_on(trained, tmp_path):
    """Checkpoints record the data (files' size and sha256, tokenization settings): a run resumed on other data
    is refused naming both, online or offline; the same files read live (online) resume the cached run."""
    import hashlib

    run = _copy_run(trained, tmp_path)
    data = trained["base"] / "train.jsonl"
    other = tmp_path / "other.jsonl"
    other.write_text("".join(data.read_text().splitlines(keepends=True)[:12]))
    before = fingerprint([run, trained["cache"], data])
    env = {k: "" for k in LAUNCH_ENV_VARS}
    args = _resume_args(trained, run)
    online = ["--online", "--nproc", "1"] + args[:2] + args[4:] + ["data.min_loss_tokens=2"]

    def shown(path):
        return f"{path} ({path.stat().st_size} bytes, sha256 {hashlib.sha256(path.read_bytes()).hexdigest()[:12]})"

    at = online.index("--online") + 1

    def train(path, *extra):
        return run_entry("train.py", online[:at] + ["--train-data-path", path] + online[at:] + list(extra), env=env)

    result = train(other)
    refused(
        result,
        f"train.py: error: cannot resume: the checkpoint {run / 'step_2'} differs in the training data: it was "
        f"trained on [{shown(data)}], this run has [{shown(other)}]; resume on that data (the same "
        "--train-data-path files, or a target cache built from them), or train on this data as a fresh run",
        code=2,
    )
    assert "read 12 conversations: kept 12, skipped 0" in result.stderr  # the cache builder's summary, online
    refused(
        train(data, "data.max_length=256"),
        f"the checkpoint {run / 'step_2'} differs in max_length: it was trained on data.max_length=512, this run has "
        "256; set data.max_length=512 to match it",
        code=2,
    )
    assert fingerprint([run, trained["cache"], data]) == before
    same = train(data)
    assert same.rc == 0 and "training already complete" in same.stdout, same.output[-2000:]


@pytest.mark.parametrize(
    "table,needle",
    [
        (
            {"batch_tokens": ["1", "2"], "steps_per_second": [10.0, 9.0]},
            "cost table batch_tokens must hold numbers only, got '1'",
        ),
        ({"batch_tokens": [1, 2], "steps_per_second": "fast"}, "steps_per_second must hold numbers only, got 'f'"),
        (
            {"batch_tokens": [1, 2], "steps_per_second": [10.0, 9.0], "context_len": "long"},
            "a field has the wrong type",
        ),
        ({"batch_tokens": 5, "steps_per_second": [10.0]}, "a field has the wrong type"),
    ],
    ids=["string-tokens", "string-speeds", "string-context", "number-not-list"],
)
def test_cost_tables_of_the_wrong_types_are_one_line(user, table, needle):
    """simulate_serving.py and eval.py --engine-profile read cost tables through CostTable.from_json."""
    cost = user["base"] / "typed_cost.json"
    cost.write_text(json.dumps(table))
    args = [
        user["rounds"],
        "--cost-table",
        cost,
        "--steps",
        "2",
        "--min-request-rounds",
        "0",
        "--output-dir",
        user["out"],
    ]
    check_refused(user, SIMULATE, args, str(cost), needle)
    assert not user["out"].exists()
