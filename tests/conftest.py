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


# Every test has exactly one kind marker (its own, its class's or its module's: one, since ``-m unit`` would select a
# component test in a module marked unit); they run in this order: the fast subset first, and the multi-node cluster
# before the session's own Ray instance starts in this process.
KINDS = ("unit", "component", "cluster", "integration", "gpu")
# Fixtures that start a real component: a test that uses one is not a unit test.
_COMPONENT_FIXTURES = {"local_ray", "ray_instance", "http_port", "base_url", "s3_endpoint"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kinds, problems = {}, []
    for item in items:
        kind = _kind(item)
        marked = sorted({marker.name for marker in item.iter_markers() if marker.name in KINDS})
        if kind is None:
            problems.append(f"{item.nodeid}: no kind; mark it (or its module, pytestmark) with one of {', '.join(KINDS)}")
        elif len(marked) > 1:
            problems.append(f"{item.nodeid}: kinds {marked}; one only (a test of another kind goes in a module of its own)")
        elif kind == "unit" and _COMPONENT_FIXTURES & set(getattr(item, "fixturenames", ())):
            problems.append(f"{item.nodeid}: marked unit, but uses {sorted(_COMPONENT_FIXTURES & set(item.fixturenames))}")
        kinds[item.nodeid] = kind
        if "browser" in getattr(item, "fixturenames", ()):  # drives chromium: -m "not browser" leaves it out
            item.add_marker(pytest.mark.browser)
    if problems:
        raise pytest.UsageError("Tests without a right kind (pyproject.toml lists the kinds):\n" + "\n".join(problems))
    items.sort(key=lambda item: KINDS.index(kinds[item.nodeid]))  # stable: a module's tests stay together and in order


def _kind(item: pytest.Item) -> str | None:
    return next((marker.name for marker in item.iter_markers() if marker.name in KINDS), None)


@pytest.fixture(autouse=True)
def _unit_tests_start_nothing(request: pytest.FixtureRequest):
    """A unit test that reached a component's fixture at run time (``request.getfixturevalue``) fails: the fast
    subset must stay fast."""
    yield
    if _kind(request.node) == "unit":
        started = _COMPONENT_FIXTURES & set(request.fixturenames)
        if started:
            pytest.fail(f"{request.node.nodeid} is marked unit but started {sorted(started)}: mark it component")


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
    from models.adapters.tiny import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model_path):
    from models.adapters.hf_adapter import HuggingFaceVisionLanguageAdapter

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
