"""Running a test's script in vLLM's own environment (or ours): skipped, saying how to build it, without that
environment; the script prints one JSON line last, which is what the test reads."""

import json
import os
import pathlib
import subprocess
from typing import Any

import pytest

from models.engines.vllm import DEFAULT_VLLM_PYTHON

ROOT = pathlib.Path(__file__).resolve().parent.parent  # scripts run here, so that tests.* and the project import


def need_vllm_environment() -> None:
    if not DEFAULT_VLLM_PYTHON.is_file():
        pytest.skip(f"vLLM's environment is not built ({DEFAULT_VLLM_PYTHON}): run bin/ensure-vllm-venv")


def run_script(python: str, *args: str, env: dict[str, str] | None = None, timeout_s: float = 600) -> Any:
    """``python *args`` from the repository's root; its last line of output, as JSON (a failure shows its stderr)."""
    done = subprocess.run([python, *args], capture_output=True, text=True, timeout=timeout_s, cwd=ROOT,
                          env={**os.environ, "VLLM_CPU_OMP_THREADS_BIND": "nobind", **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_in_vllm_environment(*args: str, env: dict[str, str] | None = None) -> Any:
    need_vllm_environment()
    return run_script(str(DEFAULT_VLLM_PYTHON), *args, env=env)
