"""torch.compile on CPU (inductor, C++ through gcc) and the explicit fallbacks.

train.torch_compile=True trains DSpark, DFlash and Eagle3 with the eager losses (1e-4 relative over 8 fp32
steps), compiling one graph at the first step and nothing after it (dynamo's counters). A compile failure at
the first step (forced: a backend that raises, in the forward or in the backward graph) and flex attention
failing (for real: torch has no CPU backward for it) each fall back once, said in one stderr line naming what
runs instead; the step is run again, so the losses are the eager / SDPA run's exactly, and metrics.jsonl
records attention_backend and compiled on every line. One worker, in this process (dynamo's counters)."""

import functools

import pytest
import torch
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.aot_autograd import make_boxed_func

from deepspec.launch import DistInfo
from deepspec.training.fast_paths import StepPaths, fallback
from deepspec.training.metrics import read_metrics
from deepspec.training.trainer import Trainer
from gpu_paths import compiled_graphs, train_config
from tinyrun import tiny_run

CPU = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("compile"), layers=[-1, 1], n=48, batch_size=16)


def train(setup, cfg, **kwargs) -> list[dict]:
    Trainer(cfg=cfg, cache_dir=setup["cache"], info=CPU, progress=False, **kwargs).fit()
    return read_metrics(f"{cfg.logging.checkpoint_dir}/metrics.jsonl")


def rel_diff(a: list[dict], b: list[dict]) -> float:
    return max(abs(x["loss"] - y["loss"]) / abs(y["loss"]) for x, y in zip(a, b, strict=True))


# Eagle3 with 2 TTT steps: one graph holds the whole unroll (each step's key length is a shape inside it), and
# each step more is more C++ to build on 2 cores.
EXTRA = {"dspark": (), "dflash": (), "eagle3": ("model.ttt_length=2",)}


@pytest.mark.parametrize("algo", ["dspark", "dflash", "eagle3"])
def test_compiled_training_equals_eager_and_compiles_once(setup, tmp_path, algo):
    eager = train(setup, train_config(setup, algo, tmp_path / "eager", *EXTRA[algo]))
    torch._dynamo.reset()
    before, after_step = compiled_graphs(), []
    compiled = train(
        setup,
        train_config(setup, algo, tmp_path / "compiled", "train.torch_compile=True", *EXTRA[algo]),
        on_step_end=lambda step: after_step.append(tuple(n - b for n, b in zip(compiled_graphs(), before))),
    )
    print(
        f"{algo}: compiled vs eager, max relative loss difference over 8 steps {rel_diff(compiled, eager):.2e}; "
        f"dynamo (graphs, frames) after each step {after_step}"
    )
    assert [(r["compiled"], r["attention_backend"]) for r in compiled] == [(True, "sdpa")] * 8
    assert [r["compiled"] for r in eager] == [False] * 8
    assert rel_diff(compiled, eager) < 1e-4
    assert after_step[0][0] >= 1, "nothing was compiled"
    # the sequence length is marked dynamic, so a new batch length never recompiles: nothing after step 1
    assert after_step[1:] == [after_step[0]] * 7, after_step


# -- explicit fallbacks ------------------------------------------------------------------------------------


def raise_compiler_error(*args):
    raise RuntimeError("simulated: the C++ compiler failed")


FAILING = {
    "forward": raise_compiler_error,  # the whole graph's compile fails at the first call
    "backward": aot_autograd(  # the forward compiles; the backward graph fails when the first backward builds it
        fw_compiler=lambda gm, example_inputs: make_boxed_func(gm.forward), bw_compiler=raise_compiler_error
    ),
}


@pytest.fixture(scope="module")
def eager_run(setup, tmp_path_factory):
    """Three eager SDPA steps of DSpark: what every fallback must reproduce exactly."""
    return train(setup, train_config(setup, "dspark", tmp_path_factory.mktemp("eager")), stop_after_step=3)


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_compile_failure_falls_back_to_eager_once(setup, eager_run, tmp_path, monkeypatch, capsys, where):
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=FAILING[where]))
    torch._dynamo.reset()
    got = train(setup, train_config(setup, "dspark", tmp_path, "train.torch_compile=True"), stop_after_step=3)
    said = [line for line in capsys.readouterr().err.splitlines() if "failed at the first step" in line]
    assert len(said) == 1, said
    assert said[0].startswith("[train] warning: torch.compile failed at the first step (")
    assert "RuntimeError: simulated: the C++ compiler failed)" in said[0]  # dynamo wraps it in the forward
    assert "running the eager model from here on" in said[0]
    assert [(r["compiled"], r["attention_backend"]) for r in got] == [(False, "sdpa")] * 3
    assert [r["loss"] for r in got] == [r["loss"] for r in eager_run]  # the failed attempt left nothing behind


def test_flex_failure_falls_back_to_sdpa_once(setup, eager_run, tmp_path, capsys):
    got = train(setup, train_config(setup, "dspark", tmp_path, "model.attention_backend=flex"), stop_after_step=3)
    said = [line for line in capsys.readouterr().err.splitlines() if "failed at the first step" in line]
    assert len(said) == 1, said
    assert said[0].startswith(
        "[train] warning: flex attention failed at the first step (NotImplementedError: FlexAttention does not "
        "support backward on CPU."
    )
    assert "running SDPA with the same mask" in said[0]
    assert [(r["compiled"], r["attention_backend"]) for r in got] == [(False, "sdpa")] * 3
    assert [r["loss"] for r in got] == [r["loss"] for r in eager_run]


def test_fallback_order():
    """flex gives way to SDPA first (the fragile kernel), then the compiled model to the eager one; then nothing."""
    paths, seen = StepPaths(compiled=True, attention_backend="flex"), []
    while (step := fallback(paths, RuntimeError("boom\nsecond line"))) is not None:
        assert "(RuntimeError: boom)" in step.message
        paths = step.paths
        seen.append(paths)
    assert seen == [StepPaths(True, "sdpa"), StepPaths(False, "sdpa")]
    assert fallback(StepPaths(compiled=False, attention_backend="eager"), RuntimeError("x")) is None
