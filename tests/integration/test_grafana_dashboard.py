"""Every panel of ``deploy/grafana/video-detective.json`` returns data from a real Prometheus.

Prometheus scrapes the test cluster's metrics endpoint every second while an app serves traffic: its GPU
group runs its chain on the CPU against a probe file (the hardware boundary: a device's total, free and
allocator figures) and runs out of memory on large requests (the out-of-memory drill), so every metric
the dashboard charts exists. Each panel's PromQL is evaluated through Prometheus's HTTP API; a typo in a
metric or label name returns nothing and fails.
"""

import base64
import json
import pathlib

import httpx
import media_factory
import pytest
import ray
from polling import wait_for_condition
from prometheus_server import prometheus_server, query
from ray import serve

from integration.conftest import deploy, oom_drill_args
from memory.probe import FileGpu

pytestmark = pytest.mark.integration

DASHBOARD = pathlib.Path(__file__).parents[2] / "deploy" / "grafana" / "video-detective.json"
GIB = 1024**3
APP = "dashboard"


def _panels() -> list[dict]:
    return [panel for panel in json.loads(DASHBOARD.read_text())["panels"] if panel["type"] != "row"]


def _as_promql(expression: str) -> str:
    """Grafana's variables as a Prometheus query needs them: this app, and a rate window of 30 s."""
    return expression.replace("$application", APP).replace("$__rate_interval", "30s")


def test_the_dashboard_charts_every_metric_the_issue_names():
    expressions = " ".join(target["expr"] for panel in _panels() for target in panel["targets"])
    for metric in (
        "ray_vd_gpu_allocated_bytes", "ray_vd_gpu_reserved_bytes", "ray_vd_gpu_free_bytes", "ray_vd_gpu_fragmentation_ratio",
        "ray_vd_process_rss_bytes", "ray_vd_replica_precision", "ray_vd_fallbacks_total", "ray_vd_request_out_of_memory_total",
        "ray_vd_load_attempts_total", "ray_vd_batch_waiting_requests", "ray_vd_admitted_bytes",
        "ray_serve_num_http_requests_total", "ray_serve_http_request_latency_ms_bucket",
    ):
        assert metric in expressions, f"no panel charts {metric}"
    every_panel = json.loads(DASHBOARD.read_text())["panels"]
    assert len({panel["id"] for panel in every_panel}) == len(every_panel)


@pytest.fixture(scope="module")
def prometheus(test_root, ray_instance):
    metrics_port = ray._private.worker.global_worker.node.metrics_export_port
    with prometheus_server(test_root / "prometheus", [f"127.0.0.1:{metrics_port}"]) as url:
        yield url


@pytest.fixture(scope="module")
def dashboard_url(http_port, test_root):
    probe = test_root / "gpu-probe-dashboard.json"
    allocator = {
        "allocated_bytes": 3 * GIB, "reserved_bytes": 4 * GIB, "peak_allocated_bytes": 3 * GIB,
        "inactive_split_bytes": 0, "num_alloc_retries": 0, "num_ooms": 0,
    }
    FileGpu.write(probe, total_bytes=16 * GIB, free_bytes=12 * GIB, torch=allocator)
    args = oom_drill_args(probe, cpu_group_cpus=0.5)
    url = deploy(args, http_port, name=APP, route_prefix=f"/{APP}")
    yield url
    serve.delete(APP)


def _traffic(url: str) -> None:
    """Text on the GPU group, and images too large for it: out-of-memory retries, then a hand-off (a fallback)."""
    image = "data:image/png;base64," + base64.b64encode(media_factory.image_bytes("PNG", width=64, height=48)).decode()
    large = [{"type": "image_url", "image_url": {"url": image}} for _ in range(6)] + [{"type": "text", "text": "Same?"}]
    with httpx.Client(base_url=url, timeout=60) as client:
        for content in ("hi", large, "again", large):
            response = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}], "max_tokens": 2})
            assert response.status_code == 200, response.text


@pytest.mark.parametrize("panel", _panels(), ids=lambda panel: panel["title"])
def test_every_panel_returns_data_from_prometheus(panel, prometheus, dashboard_url):
    _traffic(dashboard_url)
    for target in panel["targets"]:
        expression = _as_promql(target["expr"])
        result = wait_for_condition(lambda: query(prometheus, expression), timeout_s=90, interval_s=1)
        if "group" in target["legendFormat"]:
            assert {sample["metric"].get("group") for sample in result} & {"gpu", "cpu"}, (panel["title"], result)


def test_the_gpu_figures_are_the_probes(prometheus, dashboard_url):
    allocated = wait_for_condition(
        lambda: query(prometheus, f'ray_vd_gpu_allocated_bytes{{application="{APP}",group="gpu"}}'), timeout_s=90, interval_s=1
    )
    assert float(allocated[0]["value"][1]) == 3 * GIB
    fragmentation = query(prometheus, f'ray_vd_gpu_fragmentation_ratio{{application="{APP}",group="gpu"}}')
    assert float(fragmentation[0]["value"][1]) == pytest.approx(0.25)
    mix = wait_for_condition(
        lambda: query(prometheus, f'sum by (group, precision) (ray_vd_replica_precision{{application="{APP}"}}) > 0'),
        timeout_s=90, interval_s=1,
    )
    assert {(sample["metric"]["group"], sample["metric"]["precision"]) for sample in mix} >= {("gpu", "bf16")}


def test_a_typo_in_a_metric_name_returns_nothing(prometheus, dashboard_url):
    wait_for_condition(lambda: query(prometheus, f'ray_vd_process_rss_bytes{{application="{APP}"}}'), timeout_s=90, interval_s=1)
    assert query(prometheus, f'ray_vd_proces_rss_bytes{{application="{APP}"}}') == []
