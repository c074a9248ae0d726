import pathlib

import yaml

from deployments.config.app_config import load_app_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_the_rayservice_embeds_the_same_applications_as_serve_config_yaml():
    rayservice = yaml.safe_load((REPO / "deploy" / "rayservice.yaml").read_text())
    serve_config = yaml.safe_load((REPO / "serve_config.yaml").read_text())

    embedded = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    args = embedded["applications"][0]["args"]
    placement = {section: args[section].pop("node_labels") for section in ("cpu_group", "ingress")}
    engine = {key: args["gpu_group"].pop(key) for key in ("engine", "vllm_python")}

    assert rayservice["kind"] == "RayService"
    assert embedded["applications"] == serve_config["applications"]
    assert placement == {"cpu_group": {"vd-node": "cpu"}, "ingress": {"vd-node": "head"}}
    assert engine == {"engine": "auto", "vllm_python": "/opt/vllm/bin/python"}
    assert rayservice["spec"]["rayClusterConfig"]["rayVersion"] == "2.60.0"
    (application,) = embedded["applications"]
    load_app_config(application["args"])  # and it validates


def test_the_cluster_has_gpu_workers_for_the_gpu_group_whose_image_carries_vllm():
    rayservice = yaml.safe_load((REPO / "deploy" / "rayservice.yaml").read_text())
    groups = {group["groupName"]: group for group in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]}

    container = groups["gpu-workers"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"] == "video-detective-vllm:0.1.0"
    assert groups["cpu-workers"]["template"]["spec"]["containers"][0]["image"] == "video-detective:0.1.0"


def test_the_vllm_config_is_serve_config_yaml_with_both_groups_on_vllm():
    serve_config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    on_vllm = yaml.safe_load((REPO / "deploy" / "serve_config_vllm.yaml").read_text())
    args = on_vllm["applications"][0]["args"]

    engines = {group: args[group].pop("engine") for group in ("gpu_group", "cpu_group")}

    assert engines == {"gpu_group": "vllm", "cpu_group": "vllm"}
    assert on_vllm == serve_config
    config = load_app_config(yaml.safe_load((REPO / "deploy" / "serve_config_vllm.yaml").read_text())["applications"][0]["args"])
    assert [link.name for link in config.cpu_group.vllm_strategies()] == ["vllm-fp32"]


def test_each_group_lands_on_its_worker_group_and_the_ingress_fits_the_head():
    rayservice = yaml.safe_load((REPO / "deploy" / "rayservice.yaml").read_text())
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = {group["groupName"]: group for group in cluster["workerGroupSpecs"]}
    args = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]["args"]

    labels = dict(item.split("=") for item in groups["cpu-workers"]["rayStartParams"]["labels"].split(","))
    assert args["cpu_group"]["node_labels"].items() <= labels.items()  # the CPU group's selector matches cpu-workers only
    gpu_labels = dict(item.split("=") for item in groups["gpu-workers"]["rayStartParams"]["labels"].split(","))
    assert not args["cpu_group"]["node_labels"].items() <= gpu_labels.items()
    assert "nvidia.com/gpu" not in groups["cpu-workers"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert cluster["headGroupSpec"]["rayStartParams"]["labels"] == "vd-node=head" and args["ingress"]["node_labels"] == {"vd-node": "head"}
    assert args["ingress"]["num_cpus"] == 0  # so it can run on the head, which takes no replica group
    assert yaml.safe_load(rayservice["spec"]["serveConfigV2"])["proxy_location"] == "EveryNode"


def test_the_ingress_node_reads_its_keys_from_a_kubernetes_secret():
    rayservice = yaml.safe_load((REPO / "deploy" / "rayservice.yaml").read_text())
    (head,) = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"]
    env = {item["name"]: item["valueFrom"]["secretKeyRef"] for item in head["env"]}
    auth = load_app_config({}).auth

    assert env[auth.api_keys_env] == {"name": "video-detective-keys", "key": "api-keys"}  # required: no key, no pod
    assert env[auth.admin_keys_env]["key"] == "admin-keys"
