"""Run Python code in a fresh interpreter where importing torch, transformers, bitsandbytes or accelerate fails."""

import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parent.parent
_REFUSE = textwrap.dedent(
    """
    import sys

    class Refuse:
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("torch", "transformers", "bitsandbytes", "accelerate"):
                raise ImportError(f"imported {name}")

    sys.meta_path.insert(0, Refuse())
    """
)


def run_without_torch(code: str, *args: str) -> subprocess.CompletedProcess:
    """``code`` (dedented) after the import guard, with ``args`` in ``sys.argv[1:]``, from the repository root."""
    script = _REFUSE + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
