"""The ingress runs on every node; it must not pay for torch and transformers (about 700 MB of RSS)."""

import pytest
from without_torch import run_without_torch

pytestmark = pytest.mark.unit


def test_the_ingress_module_imports_without_torch_or_transformers():
    result = run_without_torch(
        """
        import deployments.edge.ingress
        from deployments.config.app_config import load_app_config
        load_app_config({})  # the default config validates without torch too
        print("ok")
        """
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"
