"""Where the tests find vLLM: the interpreter of .venv-vllm (or DEEPSPEC_VLLM_PYTHON), skipped or failed."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL_HINT = "install it with `bash scripts/data/setup_vllm_env.sh` (or point DEEPSPEC_VLLM_PYTHON at one)"


def skip_or_fail(message: str) -> None:
    """Skip with ``message``; under DEEPSPEC_REQUIRE_VLLM=1 (CI, scripts/test.sh) a missing vLLM is a failure."""
    if os.environ.get("DEEPSPEC_REQUIRE_VLLM") == "1":
        pytest.fail(f"{message} (DEEPSPEC_REQUIRE_VLLM=1, so this is an error, not a skip)")
    pytest.skip(message)


def vllm_interpreter() -> str:
    """The vLLM environment's python, or a skip / failure that says how to install it."""
    py = os.environ.get("DEEPSPEC_VLLM_PYTHON") or str(ROOT / ".venv-vllm" / "bin" / "python")
    if not Path(py).exists():
        skip_or_fail(f"no vLLM interpreter at {py}; {INSTALL_HINT}")
    return py
