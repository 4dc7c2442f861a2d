"""Compute dtype by capability: bf16 on GPUs and on CPUs with native bf16 units, fp32 elsewhere."""

import pytest

from deepspec import precision


@pytest.fixture(autouse=True)
def fresh_cache():
    precision.cpu_has_native_bf16.cache_clear()
    yield
    precision.cpu_has_native_bf16.cache_clear()


def test_auto_follows_the_cpu_flags_and_the_override(monkeypatch):
    monkeypatch.setenv("DEEPSPEC_CPU_BF16", "0")
    assert precision.resolve_precision("auto", "cpu") == "fp32"
    precision.cpu_has_native_bf16.cache_clear()
    monkeypatch.setenv("DEEPSPEC_CPU_BF16", "1")
    assert precision.resolve_precision("auto", "cpu") == "bf16"
    assert precision.resolve_precision("auto", "cuda") == "bf16"
    assert (
        precision.resolve_precision("fp32", "cuda") == "fp32" and precision.resolve_precision("bf16", "cpu") == "bf16"
    )
    with pytest.raises(ValueError, match=r"precision must be one of \('auto', 'bf16', 'fp32'\), got 'fp16'"):
        precision.resolve_precision("fp16", "cpu")


def test_cpu_flags_are_read_from_cpuinfo(monkeypatch, tmp_path):
    monkeypatch.delenv("DEEPSPEC_CPU_BF16", raising=False)
    real_open = open
    for flags, expected in (("fpu sse avx2 fma", False), ("fpu avx2 avx512f avx512_bf16", True), ("amx_bf16 x", True)):
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor : 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr("builtins.open", lambda f, *a, **k: real_open(info if f == "/proc/cpuinfo" else f, *a, **k))
        precision.cpu_has_native_bf16.cache_clear()
        assert precision.cpu_has_native_bf16() is expected, flags
