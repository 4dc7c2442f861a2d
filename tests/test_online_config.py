"""Online mode's data-source contract (issue 12): one decision in train.resolve_data_source."""

import importlib.util
from pathlib import Path

import pytest

from deepspec.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("deepspec_train_entry_online", ROOT / "train.py")
train_entry = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_entry)
CFG = "config/dspark/dspark_tiny.py"


def _cfg(*opts):
    return load_config(str(ROOT / CFG), opts=list(opts))


def test_configs_default_to_offline():
    for path in ("config/dspark/dspark_tiny.py", "config/dflash/dflash_qwen3_4b.py", "config/eagle3/eagle3_tiny.py"):
        assert load_config(str(ROOT / path)).data.online_target is False


def test_offline_source_is_the_cache():
    src = train_entry.resolve_data_source(_cfg(), cache_dir="/c")
    assert src == {"online": False, "cache_dir": "/c"}


def test_online_source_from_config_or_flags():
    src = train_entry.resolve_data_source(_cfg("data.online_target=True", "data.train_data_paths=['a.jsonl']"))
    assert src == {"online": True, "train_data_paths": ["a.jsonl"]}
    src = train_entry.resolve_data_source(_cfg(), online=True, train_data_paths=["x.jsonl", "y.jsonl"])
    assert src == {"online": True, "train_data_paths": ["x.jsonl", "y.jsonl"]}


@pytest.mark.parametrize("opts,kw,needle", [
    (("data.online_target=True", "data.train_data_paths=['a.jsonl']", "data.target_cache_path=/c"), {},
     "does not read a target cache"),
    (("data.online_target=True", "data.train_data_paths=['a.jsonl']"), {"cache_dir": "/c"}, "--target-cache-dir"),
    (("data.online_target=True",), {}, "--train-data-path"),
    ((), {"train_data_paths": ["a.jsonl"], "cache_dir": "/c"}, "add --online"),
])
def test_online_source_errors(opts, kw, needle):
    with pytest.raises(ConfigError, match=needle):
        train_entry.resolve_data_source(_cfg(*opts), **kw)
