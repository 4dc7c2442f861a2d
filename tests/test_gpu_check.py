"""bench/gpu_check.py: its correctness checks on a GPU (marked ``gpu``, skipped without CUDA), and the whole
script on CPU with ``--small`` (every section written, every check with a status, the cost table loadable)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


BENCH = ROOT / "bench"
if str(BENCH) not in sys.path:  # bench/ is scripts, not a package: its modules import each other by name
    sys.path.insert(0, str(BENCH))

import gpu_check  # noqa: E402
import gpu_check_common as common  # noqa: E402
import gpu_check_correctness as gc  # noqa: E402

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
ALGOS = list(common.CONFIGS)


def run(fn, **kwargs):
    try:
        return fn(**kwargs)
    except common.Skip as exc:
        pytest.skip(str(exc))


# ----------------------------------------------------------------------------- on a GPU


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
def test_dspark_flex_attention_equals_the_eager_path(backward):
    out = run(gc.check_dspark_flex, device="cuda", backward=backward)
    assert set(out["errors"]) == {"sdpa_fp32", "flex_fp32", "sdpa_bf16", "flex_bf16"}


@pytest.mark.gpu
@needs_cuda
def test_eagle3_ttt_on_gpu_equals_cpu():
    run(gc.check_eagle3_device_vs_cpu, device="cuda")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("algo", ALGOS)
def test_one_bf16_training_step_on_gpu(algo, tmp_path):
    out = run(gc.check_train_step, algo=algo, device="cuda", workdir=tmp_path)
    assert out["precision"] == "bf16"


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("algo", ALGOS)
def test_fsdp_compiled_training_step_does_not_recompile(algo, tmp_path, single_node_env):
    out = run(gc.check_train_step, algo=algo, device="cuda", workdir=tmp_path, fsdp_compile=True, steps=4)
    assert out["sharding"] == "full_shard" and out["torch_compile"]


@pytest.mark.gpu
@needs_cuda
def test_greedy_speculative_decoding_on_gpu_equals_generate():
    run(gc.check_greedy_decoding, device="cuda")


# ----------------------------------------------------------------------------- on CPU (CI)


def _numbers(obj, where="$"):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{where}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield where, obj


def test_help_explains_every_flag():
    parser = gpu_check.build_parser()
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help text"
    text = parser.format_help()
    for flag in ("--device", "--small", "--output-dir", "--sections", "--work-dir", "--cache-gb", "--train-steps"):
        assert flag in text


@pytest.mark.slow
def test_cpu_small_run_writes_every_section(tmp_path):
    from deepspec.decoding.scheduler import CostTable  # what scripts/eval/simulate_serving.py --cost-table loads

    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--device", "cpu", "--small", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert (out / "gpu_check.log").read_text().strip()
    assert set(report["sections"]) == set(common.SECTIONS)
    for name, section in report["sections"].items():
        assert section["status"] == "ok", f"{name}: {section['status']}"

    checks = report["sections"]["checks"]["checks"]
    expected = set(gc.correctness_checks("cpu", workdir=tmp_path))
    assert set(checks) == expected
    for name, check in checks.items():
        assert check["status"] == "pass" or check["status"].startswith("skipped: "), f"{name}: {check['status']}"
    for name in ("train_step_dspark", "train_step_dflash", "train_step_eagle3", "greedy_decoding_equals_generate"):
        assert checks[name]["status"] == "pass", name  # these run on any device
    for algo in ALGOS:
        assert checks[f"train_step_{algo}_fsdp_compile"]["status"].startswith("skipped: CUDA only")
    assert checks["eagle3_ttt_device_equals_cpu"]["status"].startswith("skipped: CUDA only")

    train = report["sections"]["train"]
    assert "FlopCounterMode" in train["flop_formula"]
    for algo in ("dspark", "eagle3"):
        eager = train[algo]["eager"]
        assert eager["status"] == "ok" and eager["tokens_per_s"] > 0 and eager["step_seconds"] > 0
        assert 0 <= eager["data_wait_fraction"] <= 1 and eager["mfu_upper"] is None  # no peak FLOPs on CPU
        assert 0 < train[algo]["flops_per_step"]["flops_lower"] <= train[algo]["flops_per_step"]["flops_upper"]
        assert train[algo]["compiled"]["status"].startswith("skipped: ")

    decode = report["sections"]["decode"]
    sizes = common.SMALL
    assert len(decode["target_verify_grid"]) == len(sizes.requests) * len(sizes.tokens_per_request)
    assert [r["batch"] for r in decode["draft"]["rounds"]] == list(sizes.draft_batches)
    table = CostTable.from_json(out / decode["cost_table_file"])
    assert table.batch_tokens == decode["cost_table"]["batch_tokens"] and table.sps(8) > 0

    cache = report["sections"]["cache"]
    assert cache["bytes"] > 0 and cache["raw_write_bytes_per_s"] > 0 and cache["writer_from_device_bytes_per_s"] > 0

    numbers = list(_numbers(report))
    assert numbers and all(math.isfinite(v) for _, v in numbers), [w for w, v in numbers if not math.isfinite(v)]
