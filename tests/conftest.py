"""Shared test set-up: a test-owned folder for every file the tests write.

Environment variables are set here, at import, so that the Ray processes the
integration tests start inherit them.
"""

import os
import pathlib
import shutil
import sys
import tempfile

import pytest

from deployments.serve_env import apply_cluster_env

# A short path under /tmp: Ray's unix socket paths must stay under ~107 bytes.
TEST_ROOT = pathlib.Path(tempfile.mkdtemp(prefix="vd-tests-"))
os.environ["VIDEO_DETECTIVE_CACHE"] = str(TEST_ROOT / "cache")
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
apply_cluster_env()  # Serve's controller and proxies as the image and bin/serve start them

# Test helpers (media_factory, polling) import as plain modules.
sys.path.insert(0, str(pathlib.Path(__file__).parent))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(TEST_ROOT, ignore_errors=True)


@pytest.fixture(scope="session")
def test_root() -> pathlib.Path:
    return TEST_ROOT


@pytest.fixture(scope="module")
def local_ray(test_root):
    """A Ray instance's key-value store (the GCS): the session's, where the integration tests started one, else one
    of the module's own (stopped after it)."""
    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(address="local", num_cpus=1, include_dashboard=False, _temp_dir=str(test_root / "ray-gcs"),
             log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_path() -> pathlib.Path:
    from models.tiny import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model_path):
    from models.hf_adapter import HuggingFaceVisionLanguageAdapter

    adapter = HuggingFaceVisionLanguageAdapter(str(tiny_model_path))
    adapter.load()
    yield adapter
    adapter.unload()


@pytest.fixture(scope="session")
def s3_endpoint(test_root) -> str:
    """A real S3 endpoint (moto's server, a process of its own) for the whole session."""
    from s3_server import moto_s3_server

    with moto_s3_server(test_root / "moto-server.log") as url:
        yield url
