"""One real Ray instance for the test session, with a fake GPU, and the app on real HTTP.

``ray.init(address="local")`` always starts a new instance owned by this
process, so shutting it down stops only what the tests started. Ray's temp
dir lives inside the test-owned folder.
"""

import httpx
import pytest
import ray
from conftest import TEST_ROOT
from net import free_port
from polling import wait_for_condition
from ray import serve

APP_NAME = "video-detective"


@pytest.fixture(scope="session")
def ray_instance(test_root, tiny_model_path):
    # tiny_model_path: build the model once here, not in racing replicas.
    ray.init(
        address="local",
        num_cpus=6,
        num_gpus=2,  # logical: GPU-group replicas get scheduled and find no CUDA
        include_dashboard=False,
        _temp_dir=str(test_root / "ray"),
        log_to_driver=False,
    )
    yield
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def http_port(ray_instance) -> int:
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return port


def deploy(args: dict, port: int, *, name: str = APP_NAME, route_prefix: str = "/") -> str:
    """Deploy the app with these args; return its base URL once /healthz answers."""
    from deployments.app import build_app

    serve.run(build_app(args), name=name, route_prefix=route_prefix)
    base_url = f"http://127.0.0.1:{port}{route_prefix.rstrip('/')}"
    wait_for_condition(lambda: httpx.get(f"{base_url}/healthz", timeout=5).status_code == 200, timeout_s=120)
    return base_url


UPLOAD_DIR = TEST_ROOT / "uploads"
UPLOAD_DIR.mkdir(parents=True, exist_ok=True)

TEST_APP_ARGS = {
    "limits": {
        "video_frames": 4,
        "max_video_frames": 8,
        "max_request_bytes": 2 * 1024 * 1024,
        "max_image_pixels": 1_000_000,
        "max_upload_bytes": 1024 * 1024,
        "max_video_duration_s": 60,
        "max_video_source_pixels": 640 * 480,
        "max_question_bytes": 2048,
        "max_prompt_tokens": 250,
        "max_request_source_pixels": 2_500_000,
        "max_tokens": 4000,
    },
    # The GPU group gets the fake GPU, finds no CUDA and waits; the CPU group serves.
    "gpu_group": {"num_cpus": 0.5, "load_retry_period_s": 1},
    "cpu_group": {"num_cpus": 1},
    "routing": {"gpu_timeout_s": 5, "breaker_cooldown_s": 2},
    "ingress": {"num_cpus": 0.5, "upload_dir": str(UPLOAD_DIR)},
    # The test folder's: the default store under the system temp dir is every default-config server's on this machine.
    "files": {"store_url": (TEST_ROOT / "files").as_uri()},
}


def oom_drill_args(probe_path, *, cpu_group_cpus: float = 1) -> dict:
    """An app whose GPU group runs its chain on the CPU against a probe file and runs out of memory above 5000
    media pixels (``VIDEO_DETECTIVE_SIMULATE_OOM_ABOVE_PIXELS``), as a full GPU would at the generate boundary."""
    from models.fault_injection import SIMULATE_OOM_ABOVE_PIXELS_ENV

    return {
        "limits": {"video_frames": 8, "max_pixels_per_frame": 64 * 48},
        "request_oom": {"min_frames": 2, "min_pixels_per_frame": 1000},
        "gpu_group": {
            "device": "cpu",
            "num_cpus": 0.5,
            "env_vars": {"VIDEO_DETECTIVE_GPU_PROBE_FILE": str(probe_path), SIMULATE_OOM_ABOVE_PIXELS_ENV: "5000"},
        },
        "cpu_group": {"num_cpus": cpu_group_cpus},
        "routing": {"gpu_timeout_s": 30, "breaker_cooldown_s": 30},
    }


@pytest.fixture(scope="session")
def base_url(http_port) -> str:
    url = deploy(TEST_APP_ARGS, http_port)
    yield url
    serve.delete(APP_NAME)


def serve_log_lines(*fragments: str) -> list[str]:
    """Lines of the Serve replica and proxy log files (in the test-owned Ray temp dir) holding every fragment."""
    logs = TEST_ROOT / "ray" / "session_latest" / "logs" / "serve"
    lines = []
    for path in logs.glob("*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if all(fragment in line for fragment in fragments):
                lines.append(line)
    return lines
