"""Online mode's data-source contract (issue 12): one decision in train.resolve_data_source."""

import importlib.util
from pathlib import Path

import pytest

from deepspec.run_config import ConfigError, load_config
from tinyrun import RUN_SIZES

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


@pytest.mark.parametrize(
    "opts,kw,needle",
    [
        (
            ("data.online_target=True", "data.train_data_paths=['a.jsonl']", "data.target_cache_path=/c"),
            {},
            "does not read a target cache",
        ),
        (("data.online_target=True", "data.train_data_paths=['a.jsonl']"), {"cache_dir": "/c"}, "--target-cache-dir"),
        (("data.online_target=True",), {}, "--train-data-path"),
        ((), {"train_data_paths": ["a.jsonl"], "cache_dir": "/c"}, "add --online"),
    ],
)
def test_online_source_errors(opts, kw, needle):
    with pytest.raises(ConfigError, match=needle):
        train_entry.resolve_data_source(_cfg(*opts), **kw)


# -- memory: the numbers a rank needs, and the refusal before step 1 --------------------------------
def test_count_target_parameters_reads_headers(tmp_path):
    import torch
    from safetensors.torch import save_file

    from deepspec.target_files import count_target_parameters

    save_file(
        {
            "model.embed_tokens.weight": torch.zeros(10, 4),
            "model.norm.weight": torch.zeros(4),
            "model.layers.0.mlp.up.weight": torch.zeros(8, 4),
            "model.layers.0.norm.weight": torch.zeros(4),
            "model.layers.1.mlp.up.weight": torch.zeros(6, 4),
            "vision_tower.layers.0.proj.weight": torch.zeros(100, 4),
        },
        str(tmp_path / "model.safetensors"),
    )
    # layers: decoder 0 = 36, decoder 1 = 24, vision 0 = 400 (its own unit, not added to decoder layer 0)
    assert count_target_parameters(str(tmp_path)) == {
        "total": 40 + 4 + 36 + 24 + 400,
        "largest_layer": 400,
        "outside_layers": 44,
    }


def test_online_memory_plan_numbers():
    from deepspec.training.online import online_memory_plan

    params = {"total": 1000, "largest_layer": 100, "outside_layers": 200}
    common = dict(
        target_params=params,
        target_dtype_bytes=2,
        local_batch_size=2,
        max_length=8,
        hidden_size=4,
        num_captured=3,
        draft_bytes=7,
    )
    whole = online_memory_plan(world_size=4, sharded=False, **common)
    # activations: 2 x 8 tokens x 4 hidden x (3 captured + 5) x 2 bytes
    assert whole == {"target weights": 2000, "target activations": 1024, "draft + optimizer": 7}
    split = online_memory_plan(world_size=4, sharded=True, **common)
    assert split["target weights"] == 2000 // 4 + (200 + 100) * 2


def test_draft_state_bytes_counts_optimizer_state_for_trainable_only():
    import torch

    from deepspec.training.online import draft_state_bytes

    m = torch.nn.Sequential(torch.nn.Linear(3, 2, bias=False), torch.nn.Linear(2, 5, bias=False))
    m[1].weight.requires_grad_(False)
    assert draft_state_bytes(m) == 6 * 16 + 10 * 4


def test_target_that_does_not_fit_is_refused_with_the_numbers():
    from deepspec.training.online import OnlineError, check_memory_fits

    plan = {"target weights": 16 << 30, "target activations": 1 << 30, "draft + optimizer": 3 << 30}
    check_memory_fits(plan, free_bytes=20 << 30, where="cuda:0", world_size=8, sharded=False)  # fits exactly
    with pytest.raises(OnlineError) as err:
        check_memory_fits(plan, free_bytes=(20 << 30) - 1, where="cuda:0 (H100)", world_size=8, sharded=False)
    assert str(err.value) == (
        "online training needs about 20.0 GiB per rank on cuda:0 (H100) (target weights 16.0 GiB, target "
        "activations 1.0 GiB, draft + optimizer 3.0 GiB) but only 20.0 GiB is free; set train.target_sharding=True "
        "(the target's weights split over 8 ranks); lower train.local_batch_size or data.max_length; or train "
        "offline from a target cache (scripts/data/prepare_target_cache.py)"
    )


def test_online_run_refuses_before_loading_the_target(tmp_path, monkeypatch):
    """Too little memory stops the trainer in pre-flight: no step, no checkpoint folder contents."""
    from deepspec.tiny_target import build_random_tiny_target
    from deepspec.training import online
    from deepspec.launch import DistInfo
    from deepspec.training.trainer import Trainer

    target = build_random_tiny_target(
        output_dir=tmp_path / "target",
        seed=0,
        **RUN_SIZES,
    )

    monkeypatch.setattr(online, "free_memory_bytes", lambda device, ranks_on_node: (1 << 20, "host RAM (test)"))
    data = tmp_path / "regen.jsonl"
    data.write_text(
        '{"id": "a", "conversations": [{"role": "user", "content": "hi"}, '
        '{"role": "assistant", "content": "hello there"}]}\n'
    )
    cfg = _cfg(
        "data.online_target=True",
        f"data.train_data_paths=['{data}']",
        f"logging.checkpoint_dir={tmp_path}/ck",
        f"model.target_model_name_or_path={target}",
        "model.target_layer_ids=[0, 1]",
        f"logging.tensorboard_dir={tmp_path}/tb",
    )
    info = DistInfo(rank=0, local_rank=0, world_size=1, device=__import__("torch").device("cpu"))
    with pytest.raises(online.OnlineError, match=r"but only 0\.0 GiB is free; lower train.local_batch_size"):
        Trainer(cfg=cfg, info=info, train_data_paths=[str(data)], progress=False)
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())


def test_boolean_fields_refuse_other_values(tmp_path):
    cfg_file = tmp_path / "c.py"
    cfg_file.write_text((ROOT / CFG).read_text() + "\ntrain['target_sharding'] = 'yes'\n")
    with pytest.raises(ConfigError, match=r"^train.target_sharding must be True or False, got 'yes'$"):
        load_config(str(cfg_file))


def test_progress_bar_shows_data_wait_and_target_shares(tmp_path):
    from deepspec.training.metrics import MetricsLogger

    log = MetricsLogger(
        checkpoint_dir=str(tmp_path), tensorboard_dir=None, total_steps=4, start_step=0, enabled=True, progress=True
    )
    log.log({"step": 1, "loss": 1.0, "data_wait_fraction": 0.625, "target_forward_fraction": 0.5})
    log.step(loss=1.0, lr=1e-3)
    assert log.bar.postfix == "loss=1.0000, lr=1.00e-03, target=50%, wait=62%"  # tqdm sorts the keys
    log.bar.close()
