"""The shell entry points: --help first (no work, nothing written), paths meaning the caller's folder,
arguments that keep their spaces, and eval.sh's name=value mapping onto eval.py's real flags.

Almost everything runs the scripts with DEEPSPEC_DRY_RUN=1, which prints the commands they would run
(shell-quoted, one per line) and sets nothing up; no test trains or evaluates anything.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.relative_to(ROOT).as_posix() for p in [*ROOT.glob("scripts/**/*.sh"), *ROOT.glob("bench/*.sh")])
# Our variables in the caller's environment would change what the scripts do.
OURS = (
    "DEEPSPEC_VENV DEEPSPEC_VLLM_VENV DEEPSPEC_VLLM_PYTHON DEEPSPEC_TINY_TARGET DEEPSPEC_EVAL_DATA_DIR DEEPSPEC_PYTHON "
    "DEEPSPEC_DRY_RUN PYTHON config_path target_cache_dir train_data_path target_name_or_path draft_name_or_path "
    "model_path dataset_name data_dir sample_size max_tokens temperature overwrite eval_temperature MODEL CONFIG "
    "DATASET DATA_DIR CACHE_DIR REGEN_OUT SAMPLE_SIZE MAX_TOKENS TEMPERATURE OVERWRITE EVAL_TEMPERATURE"
).split()


def run(script, args=(), *, cwd, env=None, timeout=60):
    full = {k: v for k, v in os.environ.items() if k not in OURS}
    full.update(env or {})
    return subprocess.run(
        ["bash", str(ROOT / script), *map(str, args)],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def dry(script, args=(), *, cwd, env=None):
    """The commands a script would run: a list of argv lists (comment lines left out)."""
    out = run(script, args, cwd=cwd, env={"DEEPSPEC_DRY_RUN": "1", **(env or {})})
    assert out.returncode == 0, out.stderr
    return [shlex.split(line) for line in out.stdout.splitlines() if line and not line.startswith("#")]


def command(cmds, tool):
    """The one command running ``tool`` (a script path such as train.py)."""
    found = [c for c in cmds if tool in c]
    assert len(found) == 1, cmds
    return found[0]


def values(argv, flag):
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def listing(*roots):
    """Every path under ``roots`` with its size and mtime (big or generated folders only by name)."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [*dirnames, *filenames]:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                out[path] = (st.st_size, st.st_mtime_ns) if name in filenames else "dir"
            dirnames[:] = [
                d
                for d in dirnames
                if d not in (".git", "__pycache__", ".pytest_cache", "runs") and not d.startswith(".venv")
            ]
    return {p: v for p, v in out.items() if "__pycache__" not in p and ".pytest_cache" not in p}


@pytest.fixture
def caller(tmp_path):
    """An empty folder to run the scripts from, with HOME pointed at another."""
    (tmp_path / "home").mkdir()
    (tmp_path / "work").mkdir()
    return tmp_path / "work", {"HOME": str(tmp_path / "home")}


def test_every_entry_script_is_covered():
    named = {
        "scripts/data/prepare_data.sh",
        "scripts/train/train.sh",
        "scripts/eval/eval.sh",
        "scripts/data/launch_vllm_server.sh",
        "scripts/data/setup_vllm_env.sh",
        "scripts/quickstart.sh",
        "scripts/env.sh",
        "scripts/test.sh",
        "bench/gpu_check.sh",
    }
    assert named <= set(SCRIPTS)


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("script", SCRIPTS)
def test_help_comes_first_and_writes_nothing(script, flag, caller, tmp_path):
    cwd, env = caller
    # An interpreter that leaves a mark if any step of a script ran it.
    spy = tmp_path / "spy"
    spy.write_text(f'#!/bin/sh\ntouch "{tmp_path}/ran"\nexit 1\n')
    spy.chmod(0o755)
    env = {**env, "PYTHON": str(spy), "DEEPSPEC_VLLM_PYTHON": str(spy)}
    before = listing(ROOT, tmp_path)
    t0 = time.monotonic()
    out = run(script, [flag], cwd=cwd, env=env, timeout=30)
    elapsed = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert len(out.stdout.splitlines()) >= 5 and Path(script).name in out.stdout
    assert elapsed < 10
    assert listing(ROOT, tmp_path) == before  # no environment, no download, no file, here or in HOME
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize(
    "script,args,env",
    [
        ("scripts/train/train.sh", ["config_path=nope.py", "--nproc", "x", "--help"], {}),
        ("scripts/eval/eval.sh", ["max_tokens=4", "--help"], {"DEEPSPEC_DRY_RUN": "maybe"}),
        ("scripts/data/prepare_data.sh", ["overwrite=7", "-h"], {"MODEL": "nope/nope"}),
        ("scripts/quickstart.sh", ["--out", "--help"], {}),
        ("scripts/data/launch_vllm_server.sh", ["--bogus", "--help"], {}),
        ("scripts/data/setup_vllm_env.sh", ["extra", "--help"], {}),
    ],
)
def test_help_wins_over_bad_arguments(script, args, env, caller):
    cwd, home = caller
    out = run(script, args, cwd=cwd, env={**home, **env})
    assert out.returncode == 0 and out.stderr == "" and Path(script).name in out.stdout


def test_prepare_data_help_lists_variables_and_defaults(caller):
    cwd, env = caller
    text = run("scripts/data/prepare_data.sh", ["--help"], cwd=cwd, env=env).stdout
    for line in (
        "model_path=Qwen/Qwen3-4B",
        "config_path=config/dspark/dspark_qwen3_4b.py",
        "dataset_name=mlabonne/open-perfectblend",
        "target_cache_dir=",
        "train_data_path=",
        "max_tokens=4096",
        "temperature=0.6",
        "overwrite=0",
    ):
        assert line in text
    assert "CACHE_DIR" not in text and "REGEN_OUT" not in text  # the old spellings still work, unlisted


# ----------------------------------------------------------------------------- train.sh


@pytest.fixture
def user_files(caller):
    cwd, env = caller
    (cwd / "cacheA").mkdir()
    (cwd / "myconf.py").write_text((ROOT / "config/dspark/dspark_tiny.py").read_text())
    (cwd / "my data.jsonl").write_text("")
    (cwd / "a.jsonl").write_text("")
    return cwd, env


def test_train_paths_mean_the_callers_folder(user_files):
    cwd, env = user_files
    cmds = dry("scripts/train/train.sh", ["target_cache_dir=cacheA", "config_path=myconf.py", "--nproc", "2"], cwd=cwd)
    assert cmds[0] == ["cd", str(ROOT)]
    argv = command(cmds, "train.py")
    assert values(argv, "--config") == [str(cwd / "myconf.py")]
    assert values(argv, "--target-cache-dir") == [str(cwd / "cacheA")]
    assert values(argv, "--nproc") == ["2"]
    # the same from the environment, and the flags train.py knows
    cmds = dry("scripts/train/train.sh", cwd=cwd, env={"target_cache_dir": "cacheA", "config_path": "./myconf.py"})
    argv = command(cmds, "train.py")
    assert values(argv, "--config") == [str(cwd / "myconf.py")] and values(argv, "--target-cache-dir") == [
        str(cwd / "cacheA")
    ]
    argv = command(
        dry("scripts/train/train.sh", ["--config", "myconf.py", "--target-cache-dir=cacheA"], cwd=cwd), "train.py"
    )
    assert values(argv, "--config") == [str(cwd / "myconf.py")] and values(argv, "--target-cache-dir") == [
        str(cwd / "cacheA")
    ]


def test_train_data_paths_keep_their_spaces(user_files):
    cwd, env = user_files
    argv = command(
        dry("scripts/train/train.sh", ["train_data_path=a.jsonl", "train_data_path=my data.jsonl", "seed=3"], cwd=cwd),
        "train.py",
    )
    assert values(argv, "--train-data-path") == [str(cwd / "a.jsonl"), str(cwd / "my data.jsonl")]
    assert "--online" in argv and argv[argv.index("--opts") + 1 :] == ["seed=3"]
    argv = command(dry("scripts/train/train.sh", cwd=cwd, env={"train_data_path": "my data.jsonl"}), "train.py")
    assert values(argv, "--train-data-path") == [str(cwd / "my data.jsonl")]
    # the old space-separated list in the environment: still several files when each exists
    (cwd / "b.jsonl").write_text("")
    out = run("scripts/train/train.sh", cwd=cwd, env={"DEEPSPEC_DRY_RUN": "1", "train_data_path": "a.jsonl b.jsonl"})
    argv = command([shlex.split(x) for x in out.stdout.splitlines()], "train.py")
    assert values(argv, "--train-data-path") == [str(cwd / "a.jsonl"), str(cwd / "b.jsonl")]
    assert "repeat the argument" in out.stderr


def test_train_shipped_config_and_deepspec_spelling(caller):
    cwd, env = caller
    argv = command(dry("scripts/train/train.sh", ["config_path=config/eagle3/eagle3_tiny.py"], cwd=cwd), "train.py")
    assert values(argv, "--config") == [str(ROOT / "config/eagle3/eagle3_tiny.py")]
    argv = command(
        dry("scripts/train/train.sh", ["config/dflash/dflash_tiny.py", "train.lr=1e-3"], cwd=cwd), "train.py"
    )
    assert values(argv, "--config") == [str(ROOT / "config/dflash/dflash_tiny.py")]
    assert argv[-2:] == ["--opts", "train.lr=1e-3"]
    argv = command(dry("scripts/train/train.sh", cwd=cwd), "train.py")
    assert values(argv, "--config") == ["config/dspark/dspark_tiny.py"]  # the default, in the repository


def _venv(tmp_path):
    """A ready environment for env.sh whose python is the one running the tests (nothing to install)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin/python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (venv / "bin/python").chmod(0o755)
    stamp = hashlib.sha256((ROOT / "requirements.txt").read_bytes() + (ROOT / "pyproject.toml").read_bytes())
    (venv / ".deepspec-installed").write_text(stamp.hexdigest() + "\n")
    return venv


def test_train_reads_the_callers_config_for_real(user_files, tmp_path):
    """train.py itself, from another folder: myconf.py is found (it stops later, at the absent target)."""
    cwd, env = user_files
    env = {
        **env,
        "DEEPSPEC_VENV": str(_venv(tmp_path)),
        "PYTHONPATH": str(ROOT),
        "DEEPSPEC_TINY_TARGET": str(tmp_path / "no_target"),
    }
    out = run(
        "scripts/train/train.sh",
        ["config_path=myconf.py", "target_cache_dir=cacheA", "--device", "cpu", "--nproc", "1"],
        cwd=cwd,
        env=env,
        timeout=120,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "config file" not in out.stderr and "no target cache at cacheA" not in out.stderr
    assert f"no such folder: {tmp_path / 'no_target'}" in out.stderr


# ----------------------------------------------------------------------------- eval.sh


def eval_parser() -> argparse.ArgumentParser:
    import eval as eval_cli

    class Built(Exception):
        pass

    def grab(self, *args, **kwargs):
        raise Built(self)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", grab), pytest.raises(Built) as got:
        eval_cli.parse_args([])
    return got.value.args[0]


def eval_options():
    return [a for a in eval_parser()._actions if a.option_strings and a.dest != "help"]


def _sample(action):
    if isinstance(action, argparse._StoreTrueAction):
        return "1"
    if action.choices:
        return list(action.choices)[-1]
    return "7"


@pytest.mark.parametrize("sep", ["_", "-"])
def test_eval_names_map_onto_every_real_flag(sep, caller):
    cwd, env = caller
    options = eval_options()
    args = [f"{a.option_strings[0].lstrip('-').replace('-', '_').replace('_', sep)}={_sample(a)}" for a in options]
    argv = command(dry("scripts/eval/eval.sh", args, cwd=cwd), "eval.py")
    for action in options:
        real = action.option_strings[0]  # eval.py's own spelling (--target_name_or_path, --max-new-tokens, ...)
        assert argv.count(real) == 1, (real, argv)
        if not isinstance(action, argparse._StoreTrueAction):
            assert values(argv, real)[0].endswith(_sample(action))
    assert argv[:2] == ["python", "eval.py"]


def test_eval_help_shows_every_name_with_its_default(caller):
    cwd, env = caller
    text = run("scripts/eval/eval.sh", ["--help"], cwd=cwd, env=env).stdout
    lines = {line.split("=", 1)[0].strip(): line for line in text.splitlines() if line.startswith("  ") and "=" in line}
    for action in eval_options():
        name = action.option_strings[0].lstrip("-").replace("-", "_")
        assert name in lines, name
        if action.default not in (None, False) and action.dest != "target":
            assert f"default: {action.default}]" in lines[name], lines[name]


def test_eval_spellings_and_a_valid_command(caller):
    import eval as eval_cli

    cwd, env = caller
    variants = [
        ["tasks=gsm8k:1", "max_new_tokens=4", "temperature=0"],
        ["tasks=gsm8k:1", "max-new-tokens=4", "temperature=0"],
        ["--tasks", "gsm8k:1", "--max_new_tokens", "4", "--temperature=0"],
        ["--opts", "tasks=gsm8k:1", "max-new-tokens=4", "--temperature", "0"],
    ]
    argvs = [
        command(dry("scripts/eval/eval.sh", v, cwd=cwd, env={"draft_name_or_path": "d"}), "eval.py") for v in variants
    ]
    assert all(a == argvs[0] for a in argvs)
    args = eval_cli.parse_args(argvs[0][2:])
    assert (args.tasks, args.max_new_tokens, args.temperature, args.draft) == ("gsm8k:1", 4, 0.0, str(cwd / "d"))
    argv = command(dry("scripts/eval/eval.sh", ["self_draft=7", *variants[0], "save_outputs=0"], cwd=cwd), "eval.py")
    assert argv[2:] == ["--self-draft", "7", "--tasks", "gsm8k:1", "--max-new-tokens", "4", "--temperature", "0"]
    args = eval_cli.parse_args(argv[2:])
    assert (args.self_draft, args.save_outputs) == (7, False)


def test_eval_paths_and_hub_ids(caller):
    cwd, env = caller
    (cwd / "mydraft").mkdir()
    argv = command(
        dry(
            "scripts/eval/eval.sh",
            [
                "draft_name_or_path=mydraft",
                "target_name_or_path=Qwen/Qwen3-4B",
                "output_dir=out dir",
                "eval-data-dir=~/p",
            ],
            cwd=cwd,
            env=env,
        ),
        "eval.py",
    )
    assert values(argv, "--draft_name_or_path") == [str(cwd / "mydraft")]
    assert values(argv, "--target_name_or_path") == ["Qwen/Qwen3-4B"]  # a hub id stays one
    assert values(argv, "--output-dir") == [str(cwd / "out dir")]
    assert values(argv, "--eval-data-dir") == [env["HOME"] + "/p"]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["max_tokens=4"], "unknown name 'max_tokens' (closest: max_new_tokens)"),
        (["tmperature=0"], "unknown name 'tmperature' (closest: temperature)"),
        (["--max-tokens", "4"], "unknown name '--max-tokens' (closest: max_new_tokens)"),
        (["tasks"], "unexpected argument 'tasks'"),
        (["save_outputs=maybe"], "give 1 or 0"),
        (["tasks="], "tasks needs a value"),
    ],
)
def test_eval_refuses_unknown_names_before_any_work(args, needle, caller, tmp_path):
    cwd, env = caller
    venv = tmp_path / "would_be_venv"
    out = run("scripts/eval/eval.sh", args, cwd=cwd, env={**env, "DEEPSPEC_VENV": str(venv)})
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("eval.sh: error: ") and needle in out.stderr and out.stderr.count("\n") == 1
    assert not venv.exists()


# ----------------------------------------------------------------------------- prepare_data.sh


def test_prepare_data_paths_names_and_old_spellings(user_files):
    cwd, env = user_files
    (cwd / "tt").mkdir()
    cmds = dry(
        "scripts/data/prepare_data.sh",
        ["model_path=tt", "config_path=myconf.py", "dataset_name=a.jsonl", "data_dir=d", "target_cache_dir=cacheA"]
        + ["train_data_path=my data.jsonl", "sample_size=5", "--opts", "data.max_length=64", "--local-batch-size", "2"],
        cwd=cwd,
        env=env,
    )
    assert cmds[0] == ["cd", str(ROOT)]
    preflight = command(cmds, "deepspec.preflight")
    assert values(preflight, "--config") == [str(cwd / "myconf.py")] and values(preflight, "--target") == [
        str(cwd / "tt")
    ]
    assert "data.max_length=64" in preflight
    split = command(cmds, "scripts/data/download_and_split.py")
    assert values(split, "--dataset-name") == [str(cwd / "a.jsonl")] and values(split, "--sample-size") == ["5"]
    assert values(split, "--train-output-path") == [str(cwd / "d/train.jsonl")]
    regen = command(cmds, "scripts/data/generate_train_data.py")
    assert values(regen, "--output-file-path") == [str(cwd / "my data.jsonl")] and "--resume" in regen
    cache = command(cmds, "scripts/data/prepare_target_cache.py")
    assert values(cache, "--output-dir") == [str(cwd / "cacheA")]
    assert values(cache, "--train-data-path") == [str(cwd / "my data.jsonl")]
    assert cache[-2:] == ["--local-batch-size", "2"] and "data.max_length=64" in cache
    # the old spellings, from the environment; the new name wins over an old one
    cmds = dry(
        "scripts/data/prepare_data.sh",
        ["overwrite=1"],
        cwd=cwd,
        env={**env, "MODEL": "org/model", "CACHE_DIR": "c", "REGEN_OUT": "r.jsonl", "OVERWRITE": "0", "cache_dir": "x"},
    )
    regen = command(cmds, "scripts/data/generate_train_data.py")
    assert values(regen, "--model") == ["org/model"] and "--overwrite" in regen
    assert values(regen, "--output-file-path") == [str(cwd / "r.jsonl")]
    assert values(command(cmds, "scripts/data/prepare_target_cache.py"), "--output-dir") == [str(cwd / "c")]


@pytest.mark.parametrize(
    "args,env,needle",
    [
        (["max_token=3"], {}, "unknown name 'max_token' (closest: max_tokens)"),
        ([], {"OVERWRITE": "yes"}, "OVERWRITE must be 0 or 1, got 'yes'"),
        (["overwrite=2"], {}, "overwrite must be 0 or 1, got '2'"),
        (["max_tokens=many"], {}, "max_tokens must be a whole number"),
        (["sample_size=0"], {}, "sample_size must be a whole number"),
        (["temperature=-1"], {}, "temperature must be a number >= 0"),
    ],
)
def test_prepare_data_refuses_before_any_work(args, env, needle, caller, tmp_path):
    cwd, home = caller
    out = run("scripts/data/prepare_data.sh", args, cwd=cwd, env={**home, **env, "PYTHON": str(tmp_path / "none")})
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("prepare_data.sh: error: ") and needle in out.stderr and out.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "script",
    [
        "scripts/quickstart.sh",
        "scripts/test.sh",
        "scripts/data/launch_vllm_server.sh",
        "scripts/data/setup_vllm_env.sh",
        "bench/gpu_check.sh",
    ],
)
def test_scripts_without_a_dry_run_refuse_it(script, caller):
    cwd, env = caller
    out = run(script, cwd=cwd, env={**env, "DEEPSPEC_DRY_RUN": "1"})
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith(f"{Path(script).name}: error: has no dry run") and out.stderr.count("\n") == 1


def test_a_bad_dry_run_switch_is_refused(caller):
    cwd, env = caller
    out = run("scripts/train/train.sh", cwd=cwd, env={**env, "DEEPSPEC_DRY_RUN": "yes"})
    assert out.returncode == 2 and out.stderr == "train.sh: error: DEEPSPEC_DRY_RUN must be 0 or 1, got 'yes'\n"
