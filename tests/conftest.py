"""Fixtures shared by several test files.

Plain helpers live in helper modules, never in a test module (no test_*.py imports another): shared_targets
(the tiny targets several files share, from deepspec.tiny_models), references (the independent references the
tests compare against), tinyrun (a random tiny target with conversations and a cache), badinput (running entry
points and checking refusals), vllm_env / vllm_probe / speculators_probe (the vLLM environment). Tests import
them by bare module name (``from shared_targets import ...``): pytest puts tests/ on sys.path, and a subprocess
does the same with ``sys.path.insert(0, "tests")``.
"""

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
