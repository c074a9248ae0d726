"""The shipped deployment artefacts, checked like code: the RayService against KubeRay v1.7.0's own CRD schema and
operator rules (:mod:`tests.kuberay_rules`), its Serve config against Ray's own Serve schema, and both cluster
configs against ``serve_config.yaml``."""

import copy
import pathlib

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from deployments.config.app_config import load_app_config
from tests import kuberay_rules

pytestmark = pytest.mark.unit

REPO = pathlib.Path(__file__).resolve().parents[1]
STORE_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")


def _rayservice() -> dict:
    return yaml.safe_load((REPO / "deploy" / "rayservice.yaml").read_text())


def _embedded_args(rayservice: dict) -> dict:
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]["args"]


def _containers(rayservice: dict) -> dict[str, dict]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    (head,) = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    containers = {"head": head}
    for group in cluster["workerGroupSpecs"]:
        (containers[group["groupName"]],) = group["template"]["spec"]["containers"]
    return containers


def test_the_rayservice_passes_the_crd_schema_of_kuberay_v1_7_0():
    assert kuberay_rules.crd_schema_problems(_rayservice()) == []


def test_the_crd_schema_check_refuses_an_unknown_field_and_a_wrong_type():
    manifest = _rayservice()
    manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["nodeLabels"] = {"vd-node": "head"}
    manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "four"

    problems = kuberay_rules.crd_schema_problems(manifest)

    assert any("headGroupSpec" in problem and "'nodeLabels' was unexpected" in problem for problem in problems), problems
    assert any(problem.startswith("spec.rayClusterConfig.workerGroupSpecs.0.maxReplicas:") for problem in problems), problems


def test_the_rayservice_passes_the_operators_validation_rules():
    rayservice = _rayservice()
    kuberay_rules.validate_ray_service(rayservice)  # raises with the operator's message
    assert kuberay_rules.group_names_problem(rayservice["spec"]["rayClusterConfig"]) is None
    for unsupported in ("gcsFaultToleranceOptions", "networkPolicy", "tlsOptions", "historyServerOptions"):
        assert unsupported not in rayservice["spec"]["rayClusterConfig"]  # rules the port leaves out stay moot


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda spec: spec["headGroupSpec"]["rayStartParams"].update(labels="vd-node=head"),
         r"rayStartParams\['labels'\] is not supported for Head group"),
        (lambda spec: spec["workerGroupSpecs"][1]["labels"].update({"vd node": "cpu"}), "invalid label key for cpu-workers"),
        (lambda spec: spec["workerGroupSpecs"][0].update(minReplicas=5), "minReplicas 5 greater than maxReplicas 4"),
        (lambda spec: spec["headGroupSpec"].update(resources={"CPU": "0"}), "both rayStartParams and Resources for Head"),
        (lambda spec: spec.update(rayVersion="2.50.0"), "minimum Ray version is 2.52.0"),
    ],
)
def test_the_operator_rules_refuse_what_kuberay_refuses(change, message):
    rayservice = copy.deepcopy(_rayservice())
    change(rayservice["spec"]["rayClusterConfig"])
    with pytest.raises(ValueError, match=message):
        kuberay_rules.validate_ray_service(rayservice)


def test_group_names_must_be_distinct_dns_labels():
    spec = copy.deepcopy(_rayservice()["spec"]["rayClusterConfig"])
    spec["workerGroupSpecs"][1]["groupName"] = "gpu-workers"
    assert "repeat" in kuberay_rules.group_names_problem(spec)
    spec["workerGroupSpecs"][1]["groupName"] = "CPU_workers"
    assert "CPU_workers" in kuberay_rules.group_names_problem(spec)


def test_the_serve_config_parses_as_rays_own_serve_schema_and_its_args_validate():
    embedded = yaml.safe_load(_rayservice()["spec"]["serveConfigV2"])
    schema = ServeDeploySchema.model_validate(embedded)
    (application,) = schema.applications
    assert application.import_path == "deployments.app:build_app"
    assert schema.http_options.host == "0.0.0.0"  # inside the pod: the Service in front decides who reaches it
    with pytest.raises(Exception, match="proxy_location"):
        ServeDeploySchema.model_validate({**embedded, "proxy_location": "Everywhere"})
    load_app_config(application.args)


def test_the_rayservice_embeds_serve_config_yaml_but_for_what_a_cluster_needs():
    rayservice = _rayservice()
    serve_config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    embedded = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    args = embedded["applications"][0]["args"]

    placement = {section: args[section].pop("node_labels") for section in ("cpu_group", "ingress")}
    engine = {key: args["gpu_group"].pop(key) for key in ("engine", "vllm_python")}
    store = args.pop("files")
    model = args.pop("model")
    serve_args = serve_config["applications"][0]["args"]
    serve_model = serve_args.pop("model")

    assert embedded["applications"] == serve_config["applications"]
    assert placement == {"cpu_group": {"vd-node": "cpu"}, "ingress": {"vd-node": "head"}}
    assert engine == {"engine": "auto", "vllm_python": "/opt/vllm/bin/python"}
    assert serve_model == {"source": "tiny"}
    assert rayservice["spec"]["rayClusterConfig"]["rayVersion"] == "2.60.0"
    # Pods share no filesystem: files, jobs, the model and the quantized loads all come from the object store.
    assert store["store_url"].startswith("s3://")
    assert model["source"].startswith("s3://") and model["weight_cache_url"].startswith("s3://")


def test_every_pod_reads_the_object_stores_credentials_from_a_kubernetes_secret():
    for name, container in _containers(_rayservice()).items():
        env = {item["name"]: item["valueFrom"]["secretKeyRef"] for item in container.get("env", [])}
        assert {key: env[key]["name"] for key in STORE_ENV} == dict.fromkeys(STORE_ENV, "video-detective-store"), name
        assert env["AWS_ENDPOINT_URL"].get("optional") is True  # AWS itself needs no endpoint


def test_the_dashboard_is_not_exposed_outside_the_cluster_and_needs_rays_token():
    cluster = _rayservice()["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]

    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert cluster["authOptions"] == {"mode": "token"}
    # KubeRay binds the dashboard to the pod's address itself (pod.go); nothing here widens it or maps a host port.
    assert "dashboard-host" not in head["rayStartParams"]
    assert all("hostPort" not in port for container in _containers(_rayservice()).values() for port in container.get("ports", []))


def test_the_cluster_has_gpu_workers_for_the_gpu_group_whose_image_carries_vllm():
    containers = _containers(_rayservice())
    assert containers["gpu-workers"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert containers["gpu-workers"]["image"] == "video-detective-vllm:0.1.0"
    assert containers["cpu-workers"]["image"] == "video-detective:0.1.0"
    assert containers["head"]["image"] == "video-detective:0.1.0"


def test_the_vllm_config_is_serve_config_yaml_with_both_groups_on_vllm():
    serve_config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    on_vllm = yaml.safe_load((REPO / "deploy" / "serve_config_vllm.yaml").read_text())
    args = on_vllm["applications"][0]["args"]

    engines = {group: args[group].pop("engine") for group in ("gpu_group", "cpu_group")}

    assert engines == {"gpu_group": "vllm", "cpu_group": "vllm"}
    assert on_vllm == serve_config
    config = load_app_config(yaml.safe_load((REPO / "deploy" / "serve_config_vllm.yaml").read_text())["applications"][0]["args"])
    assert [link.name for link in config.cpu_group.engine_strategies()["vllm"]] == ["vllm-fp32"]


def test_each_group_lands_on_its_worker_group_and_the_ingress_fits_the_head():
    rayservice = _rayservice()
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = {group["groupName"]: group for group in cluster["workerGroupSpecs"]}
    args = _embedded_args(rayservice)

    assert args["cpu_group"]["node_labels"].items() <= groups["cpu-workers"]["labels"].items()
    assert not args["cpu_group"]["node_labels"].items() <= groups["gpu-workers"]["labels"].items()
    assert "nvidia.com/gpu" not in groups["cpu-workers"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert cluster["headGroupSpec"]["labels"] == {"vd-node": "head"} == args["ingress"]["node_labels"]
    assert args["ingress"]["num_cpus"] == 0  # so it can run on the head, which takes no replica group
    assert yaml.safe_load(rayservice["spec"]["serveConfigV2"])["proxy_location"] == "EveryNode"


def test_the_ingress_node_reads_its_keys_from_a_kubernetes_secret():
    head = _containers(_rayservice())["head"]
    env = {item["name"]: item["valueFrom"]["secretKeyRef"] for item in head["env"]}
    auth = load_app_config({}).auth

    assert env[auth.api_keys_env] == {"name": "video-detective-keys", "key": "api-keys"}  # required: no key, no pod
    assert env[auth.admin_keys_env]["key"] == "admin-keys"
