"""FSDP2 on gloo: full_shard / shard_grad_op train the three drafts with the losses of DDP, a checkpoint saved
under FSDP resumes under DDP and the other way round, and flex attention (no CPU backward) falls back to SDPA
under both. One set of 2 gloo workers trains every run in turn (8 fp32 steps each)."""

import functools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deepspec.launch import LAUNCH_ENV_VARS, launch, plan_launch
from deepspec.training.checkpoint import load_training_state
from deepspec.training.metrics import read_metrics
from gpu_paths import train_config, train_in_turn
from tinyrun import tiny_run

ALGOS = ("dspark", "dflash", "eagle3")
FSDP = {"dspark": "full_shard", "dflash": "shard_grad_op", "eagle3": "full_shard"}
REL = 1e-5  # FSDP reduce-scatters where DDP all-reduces: the same sums in another order


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every run's folder, trained by one launch of 2 gloo workers."""
    base = tmp_path_factory.mktemp("fsdp")
    setup = tiny_run(base, layers=[-1, 1], n=48, batch_size=16)
    plan: list[tuple[dict, int | None]] = []
    folders = {}

    def add(name, algo, strategy, *extra, stop=None):
        folders[name] = base / name
        cfg = train_config(setup, algo, folders[name], f"train.sharding_strategy={strategy}", *extra)
        plan.append((cfg.to_dict(), stop))

    for algo in ALGOS:
        add(f"{algo}_ddp", algo, "no_shard")
        add(f"{algo}_fsdp", algo, FSDP[algo])
    # the same folder trained to step 4 under one wrapping and resumed to step 8 under the other
    add("fsdp_then_ddp", "dspark", "full_shard", stop=4)
    add("fsdp_then_ddp", "dspark", "no_shard")
    add("ddp_then_fsdp", "dspark", "no_shard", stop=4)
    add("ddp_then_fsdp", "dspark", "full_shard")
    for strategy in ("no_shard", "full_shard"):
        add(f"eagle3_{strategy}_flex", "eagle3", strategy, "model.attention_backend=flex")
    with pytest.MonkeyPatch.context() as mp:  # single node: no launcher variables from the caller's shell
        for var in (*LAUNCH_ENV_VARS, "GLOO_SOCKET_IFNAME"):
            mp.delenv(var, raising=False)
        launch(
            functools.partial(train_in_turn, runs=plan, cache_dir=setup["cache"]),
            plan_launch(device_type="cpu", nproc=2),
        )
    return folders


def records(folder: Path) -> list[dict]:
    return read_metrics(folder / "metrics.jsonl")


def losses(folder: Path) -> list[float]:
    return [r["loss"] for r in records(folder)]


def weights(folder: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(folder / f"step_{step}" / "model.safetensors")


def rel_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))


def assert_weights_close(a: dict, b: dict) -> None:
    """Same tensors; values within 1e-4, 1/20 of one step at the tiny learning rate: AdamW divides by the root of
    the squared gradients, so float-order noise in near-zero gradients (rare tokens' Markov rows) moves weights
    by a few 1e-5."""
    assert {k: (v.shape, v.dtype) for k, v in a.items()} == {k: (v.shape, v.dtype) for k, v in b.items()}
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-4, msg=k)


@pytest.mark.parametrize("algo", ALGOS)
def test_fsdp_losses_equal_ddp(runs, algo):
    ddp, fsdp = losses(runs[f"{algo}_ddp"]), losses(runs[f"{algo}_fsdp"])
    assert len(ddp) == len(fsdp) == 8
    print(f"{algo} {FSDP[algo]} vs DDP: max relative loss difference over 8 steps {rel_diff(fsdp, ddp):.2e}")
    assert rel_diff(fsdp, ddp) < REL, (fsdp, ddp)
    assert_weights_close(weights(runs[f"{algo}_fsdp"], 8), weights(runs[f"{algo}_ddp"], 8))


def test_checkpoints_cross_between_fsdp_and_ddp(runs):
    """Both wrappings save one layout (full tensors, the same optimizer state), so each resumes the other's."""
    ref = runs["dspark_ddp"]
    for folder in (runs["fsdp_then_ddp"], runs["ddp_then_fsdp"]):
        assert_weights_close(weights(folder, 4), weights(ref, 4))
        saved, want = load_training_state(folder / "step_4"), load_training_state(ref / "step_4")
        shapes = lambda s: json.dumps(  # noqa: E731 - the optimizer state's structure, tensors as shapes
            s["optimizer"], default=lambda t: list(t.shape) if isinstance(t, torch.Tensor) else str(t), sort_keys=True
        )
        assert shapes(saved) == shapes(want)
        assert [r["step"] for r in records(folder)] == list(range(1, 9))
        assert rel_diff(losses(folder), losses(ref)) < REL, (losses(folder), losses(ref))
        assert_weights_close(weights(folder, 8), weights(ref, 8))


def test_flex_falls_back_to_sdpa_under_ddp_and_fsdp(runs):
    """On CPU flex attention has no backward: the first step fails, is run again with SDPA, and the run is the
    SDPA run exactly; metrics.jsonl says which kernel every step used."""
    for strategy, ref in (("no_shard", "eagle3_ddp"), ("full_shard", "eagle3_fsdp")):
        got = records(runs[f"eagle3_{strategy}_flex"])
        assert {(r["attention_backend"], r["compiled"]) for r in got} == {("sdpa", False)}
        assert [r["loss"] for r in got] == losses(runs[ref])
