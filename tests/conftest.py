"""Fixtures shared by several test files (plain helpers live in tests/tinyrun.py)."""

import pytest

from deepspec.launch import LAUNCH_ENV_VARS


@pytest.fixture
def fp32_target(monkeypatch):
    """The target forward in fp32 on every CPU (``auto`` picks bf16 where the CPU has it), for comparisons with
    an fp32 reference at bf16 *storage* tolerance."""
    from deepspec import precision

    monkeypatch.setenv("DEEPSPEC_CPU_BF16", "0")
    precision.cpu_has_native_bf16.cache_clear()
    yield
    precision.cpu_has_native_bf16.cache_clear()


@pytest.fixture
def single_node_env(monkeypatch):
    """No launcher variables from the caller's shell (node ranks, torchrun's, the rendezvous address)."""
    for var in (*LAUNCH_ENV_VARS, "GLOO_SOCKET_IFNAME"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch
