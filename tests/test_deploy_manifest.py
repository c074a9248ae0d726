import pathlib

import yaml

from deployments.config import load_app_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_the_rayservice_embeds_the_same_applications_as_serve_config_yaml():
    rayservice = yaml.safe_load((REPO / "deploy" / "rayservice.yaml").read_text())
    serve_config = yaml.safe_load((REPO / "serve_config.yaml").read_text())

    embedded = yaml.safe_load(rayservice["spec"]["serveConfigV2"])

    assert rayservice["kind"] == "RayService"
    assert embedded["applications"] == serve_config["applications"]
    assert rayservice["spec"]["rayClusterConfig"]["rayVersion"] == "2.60.0"
    (application,) = embedded["applications"]
    load_app_config(application["args"])  # and it validates


def test_the_cluster_has_gpu_workers_for_the_gpu_group():
    rayservice = yaml.safe_load((REPO / "deploy" / "rayservice.yaml").read_text())
    groups = {group["groupName"]: group for group in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]}

    limits = groups["gpu-workers"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
