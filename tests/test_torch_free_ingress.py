"""The ingress runs on every node; it must not pay for torch and transformers (about 700 MB of RSS)."""

import subprocess
import sys
import textwrap


def test_the_ingress_module_imports_without_torch_or_transformers():
    script = textwrap.dedent(
        """
        import sys

        class Refuse:
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in ("torch", "transformers", "bitsandbytes", "accelerate"):
                    raise ImportError(f"the ingress imported {name}")

        sys.meta_path.insert(0, Refuse())
        import deployments.edge.ingress
        from deployments.config import load_app_config
        load_app_config({})  # the default config validates without torch too
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"
