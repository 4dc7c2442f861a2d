"""Configs: every shipped config loads; --opts overrides parse, apply and fail clearly."""

import glob
import os
from pathlib import Path

import pytest

from deepspec.run_config import ConfigError, ConfigNode, load_config, parse_override
from deepspec.layer_ids import spread_layer_ids
from deepspec.recipes import TARGET_NUM_LAYERS

ROOT = Path(__file__).resolve().parents[1]
REAL = [
    f"config/{algo}/{algo}_{target}.py"
    for algo in ("dspark", "dflash", "eagle3")
    for target in ("qwen3_4b", "qwen3_8b", "qwen3_14b", "gemma4_12b", "llama3_8b", "qwen3_30b_a3b", "qwen3_5_9b")
]
TINY = [f"config/{algo}/{algo}_tiny.py" for algo in ("dspark", "dflash", "eagle3")]


def test_every_config_file_is_listed():
    shipped = sorted(str(Path(p).relative_to(ROOT)) for p in glob.glob(str(ROOT / "config/*/*.py")))
    assert shipped == sorted(REAL + TINY)


@pytest.mark.parametrize("rel", REAL)
def test_real_configs_have_paper_settings(rel):
    cfg = load_config(ROOT / rel)
    m, t, d = cfg.model, cfg.train, cfg.data
    assert (t.lr, t.warmup_ratio, t.global_batch_size, t.num_train_epochs, t.precision) == (6e-4, 0.04, 512, 10, "bf16")
    assert d.max_length == 4096
    assert cfg.logging.checkpoint_dir == os.path.expanduser(f"~/checkpoints/{cfg.project_name}/{cfg.exp_name}")
    assert cfg.logging.tensorboard_dir == os.path.expanduser(f"~/tensorboard/{cfg.project_name}/{cfg.exp_name}")
    num_layers = TARGET_NUM_LAYERS[m.target_model_name_or_path]
    assert max(m.target_layer_ids) < num_layers - 1, "never the last layer"
    if m.algorithm == "eagle3":
        assert (m.num_draft_layers, m.ttt_length, m.step_loss_decay) == (1, 7, 0.8)
        # a subset of the parallel drafters' ids, so one cache serves every algorithm
        assert set(m.target_layer_ids) <= set(spread_layer_ids(num_layers))
        return
    assert m.target_layer_ids == spread_layer_ids(num_layers)
    assert (m.block_size, m.num_draft_layers, m.num_anchors, m.loss_decay_gamma) == (7, 5, 512, 4.0)
    expected_mask = 4 if "gemma" in rel else 128002 if "llama" in rel else 248319 if "qwen3_5" in rel else 151669
    assert m.mask_token_id == expected_mask
    if m.algorithm == "dspark":
        assert (m.markov_rank, m.markov_head_type, m.confidence_head_alpha) == (256, "vanilla", 1.0)
        assert (m.ce_loss_alpha, m.l1_loss_alpha) == (0.1, 0.9)
    else:
        assert (m.markov_rank, m.confidence_head_alpha, m.ce_loss_alpha, m.l1_loss_alpha) == (0, 0.0, 1.0, 0.0)


def test_qwen3_4b_ids_are_the_papers():
    assert spread_layer_ids(36) == [1, 9, 17, 25, 33]


@pytest.mark.parametrize("rel", TINY)
def test_tiny_configs_point_at_the_tiny_target(rel, monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPSPEC_TINY_TARGET", str(tmp_path / "tt"))
    cfg = load_config(ROOT / rel)
    assert cfg.model.target_model_name_or_path == str(tmp_path / "tt")
    assert cfg.train.global_batch_size % cfg.train.local_batch_size == 0
    monkeypatch.delenv("DEEPSPEC_TINY_TARGET")
    cfg = load_config(ROOT / rel)
    assert cfg.model.target_model_name_or_path == os.path.expanduser("~/.cache/deepspec/tiny_target")


def test_overrides_apply_and_rederive_dirs():
    cfg = load_config(
        ROOT / "config/dspark/dspark_qwen3_4b.py",
        opts=[
            "train.lr=3e-4",
            "model.target_layer_ids=[1,9,17]",
            "train.max_train_steps=100",
            "exp_name=2024",
            "train.torch_compile=true",
            "+data.extra_flag=yes",
        ],
    )
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.model.target_layer_ids == [1, 9, 17]
    assert cfg.train.max_train_steps == 100
    assert cfg.exp_name == "2024"
    assert cfg.logging.checkpoint_dir.endswith("/deepspec/2024")
    assert cfg.train.torch_compile is True
    assert cfg.data.extra_flag == "yes"
    cfg = load_config(ROOT / "config/dspark/dspark_qwen3_4b.py", opts=["train.max_train_steps=null"])
    assert cfg.train.max_train_steps is None


def test_parse_override_values():
    assert parse_override("a.b=1") == ("a.b", 1, False)
    assert parse_override("a.b=6e-4") == ("a.b", 6e-4, False)
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2], False)
    assert parse_override("a.b=null") == ("a.b", None, False)
    assert parse_override("+a.c=x") == ("a.c", "x", True)
    assert parse_override("a.path=/tmp/x=y") == ("a.path", "/tmp/x=y", False)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "Closest valid keys: train.lr"),
        ("lr=1", "train.lr"),
        ("modle.block_size=4", "'modle' does not exist"),
        ("model=3", "replaces a section (dict) with int"),
        ("train.lr.x=3", "train.lr is not a section"),
        ("train.torch_compile=1", "expected true or false"),
        ("model.target_layer_ids=5", "expected a list"),
        ("train.local_batch_size=1.5", "expected an integer"),
        ("train.lr", "must look like key.path=value"),
        ("model.target_layer_ids=[9,1]", "strictly increasing"),
        ("model.algorithm=medusa", "model.algorithm must be one of"),
        ("train.local_batch_size=3", "must be a multiple of"),
    ],
)
def test_bad_overrides_fail_clearly(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_config(ROOT / "config/dspark/dspark_qwen3_4b.py", opts=[override])


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.py")
    broken = tmp_path / "broken.py"
    broken.write_text("model = dict(\n")
    with pytest.raises(ConfigError, match="error while executing config"):
        load_config(broken)
    partial = tmp_path / "partial.py"
    partial.write_text("project_name='p'\nexp_name='e'\nseed=1\nmodel={}\n")
    with pytest.raises(ConfigError, match="lacks required names: train, logging, data"):
        load_config(partial)


def test_attribute_access_and_round_trip():
    node = ConfigNode({"a": {"b": [1, {"c": 2}]}})
    assert node.a.b[1].c == 2
    assert node.to_dict() == {"a": {"b": [1, {"c": 2}]}}
    with pytest.raises(AttributeError, match="did you mean a"):
        node.aa


def test_override_yaml_has_no_yes_no_booleans():
    assert parse_override("a=yes")[1] == "yes"
    assert parse_override("a=on")[1] == "on"
    assert parse_override("a=false")[1] is False
    assert parse_override("a=1e-4")[1] == pytest.approx(1e-4)
    assert parse_override("a=-2E3")[1] == -2000.0


def test_opts_flag_repeats_and_lists():
    """--opts a=1 --opts b=2 keeps both (docs/configs.md and DeepSpec's train.sh repeat the flag)."""
    import argparse

    from deepspec.run_config import add_opts_argument

    p = argparse.ArgumentParser()
    add_opts_argument(p)
    args = p.parse_args(["--opts", "train.lr=1e-3", "seed=3", "--opts", "train.max_train_steps=7"])
    assert args.opts == ["train.lr=1e-3", "seed=3", "train.max_train_steps=7"]
    assert p.parse_args([]).opts == [] and p.parse_args([]).opts is not args.opts
    cfg = load_config(ROOT / "config/dspark/dspark_tiny.py", opts=args.opts)
    assert (cfg.train.lr, cfg.seed, cfg.train.max_train_steps) == (1e-3, 3, 7)


def _bash_argv(script: str, args: list[str], tmp_path: Path) -> list[str]:
    """The argv a wrapper script hands to python: a fake venv whose python prints its argv."""
    import hashlib
    import subprocess

    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    (venv / "bin/python").write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    (venv / "bin/python").chmod(0o755)
    stamp = hashlib.sha256((ROOT / "requirements.txt").read_bytes() + (ROOT / "pyproject.toml").read_bytes())
    (venv / ".deepspec-installed").write_text(stamp.hexdigest() + "\n")  # env.sh: nothing to install
    env = dict(os.environ, DEEPSPEC_VENV=str(venv))
    out = subprocess.run(["bash", str(ROOT / script), *args], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


@pytest.mark.parametrize(
    "args",
    [
        ["train.lr=1", "seed=2", "--nproc", "2"],
        ["--opts", "train.lr=1", "--opts", "seed=2", "--nproc", "2"],
        ["--nproc", "2", "--opts", "train.lr=1", "seed=2"],
    ],
)
def test_train_sh_passes_bare_and_opts_overrides(args, tmp_path):
    argv = _bash_argv("scripts/train/train.sh", args, tmp_path)
    assert argv[0] == "train.py"
    assert argv[argv.index("--nproc") + 1] == "2"
    assert argv[argv.index("--opts") :][1:3] == ["train.lr=1", "seed=2"] and argv.count("--opts") == 1


def test_train_sh_online_from_train_data_path(tmp_path, monkeypatch):
    monkeypatch.delenv("train_data_path", raising=False)
    monkeypatch.delenv("target_cache_dir", raising=False)
    args = ["train_data_path=a.jsonl", "train_data_path=b c.jsonl", "--nproc", "2"]
    argv = _bash_argv("scripts/train/train.sh", args, tmp_path)
    files = [os.path.join(os.getcwd(), name) for name in ("a.jsonl", "b c.jsonl")]  # the caller's folder
    assert argv[3:] == ["--online", "--train-data-path", files[0], "--train-data-path", files[1], "--nproc", "2"]


def test_eval_sh_maps_name_value_to_flags(tmp_path):
    argv = _bash_argv("scripts/eval/eval.sh", ["tasks=gsm8k:2", "--opts", "temperature=0", "--seed", "1"], tmp_path)
    assert argv[1:] == ["--tasks", "gsm8k:2", "--temperature", "0", "--seed", "1"]


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.local_batch_size=0", "train.local_batch_size must be >= 1, got 0"),
        ("train.global_batch_size=-4", "train.global_batch_size must be >= 1, got -4"),
        ("train.lr=0", "train.lr must be > 0, got 0.0"),
        ("train.lr=.nan", "train.lr must be a finite number, got nan"),
        ("train.warmup_ratio=1.5", "train.warmup_ratio is a fraction of all steps in [0, 1], got 1.5"),
        ("train.max_train_steps=0", "train.max_train_steps must be >= 1, got 0"),
        ("data.max_length=1", "data.max_length must be >= 2, got 1"),
        ("logging.logging_steps=0", "logging.logging_steps must be >= 1, got 0"),
        ("model.num_anchors=0", "model.num_anchors must be >= 1, got 0"),
    ],
)
def test_numeric_fields_are_range_checked(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "config/dspark/dspark_tiny.py", opts=[override])
    assert str(err.value) == message
