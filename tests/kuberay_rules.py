"""What KubeRay v1.7.0 checks before it accepts a RayService, for the manifest's tests.

Two layers, each from the release's own source (``git show v1.7.0:<path>`` in ray-project/kuberay, commit
59d663aeec13760646da3db9c1cf8cfe883e30b7):

- **the API server's schema check**: the RayService CRD's ``openAPIV3Schema``
  (``ray-operator/config/crd/bases/ray.io_rayservices.yaml``, stored gzipped in ``tests/data/kuberay/``).
  Kubernetes rejects a field the schema does not know (``kubectl apply``'s strict field validation) unless the
  schema says ``x-kubernetes-preserve-unknown-fields``; ``x-kubernetes-int-or-string`` takes either type.
  :func:`crd_schema_problems` turns it into a JSON schema with those meanings and validates with ``jsonschema``.
- **the operator's validation** (``ray-operator/controllers/ray/utils/validation.go``): the rules a manifest of
  ours can break, ported one function each with its Go name, and its messages kept word for word.
"""

import gzip
import pathlib
import re
from typing import Any

import jsonschema
import yaml

KUBERAY_VERSION = "v1.7.0"
KUBERAY_COMMIT = "59d663aeec13760646da3db9c1cf8cfe883e30b7"
CRD_PATH = pathlib.Path(__file__).parent / "data" / "kuberay" / f"ray.io_rayservices-{KUBERAY_VERSION}.yaml.gz"

MAX_RAY_CLUSTER_NAME_LENGTH = 53  # utils/constant.go
MAX_RAY_SERVICE_NAME_LENGTH = MAX_RAY_CLUSTER_NAME_LENGTH - 6

# k8s.io/apimachinery/pkg/util/validation: the label and name grammars the operator calls.
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


# -- the CRD's schema ------------------------------------------------------------------------------


def rayservice_schema() -> dict[str, Any]:
    crd = yaml.safe_load(gzip.decompress(CRD_PATH.read_bytes()))
    (version,) = [version for version in crd["spec"]["versions"] if version["name"] == "v1"]
    return _as_json_schema(version["schema"]["openAPIV3Schema"])


def _as_json_schema(node: Any) -> Any:
    """The structural schema as a JSON schema: unknown fields refused, int-or-string either, extensions dropped."""
    if isinstance(node, list):
        return [_as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    schema = {key: _as_json_schema(value) for key, value in node.items() if not key.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        schema.pop("type", None)
        schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    return schema


def crd_schema_problems(manifest: dict[str, Any]) -> list[str]:
    """Every place ``manifest`` breaks the CRD's schema, as ``path: message``."""
    validator = jsonschema.Draft7Validator(rayservice_schema())
    return sorted(
        f"{'.'.join(str(part) for part in error.absolute_path) or '(top level)'}: {error.message}"
        for error in validator.iter_errors(manifest)
    )


# -- the operator's rules --------------------------------------------------------------------------


def _is_qualified_name(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_QUALIFIED_NAME_PART.match(name))


def _is_valid_label_value(value: str) -> bool:
    return len(value) <= 63 and bool(_LABEL_VALUE.match(value))


def validate_ray_group_resources(group_name: str, ray_start_params: dict[str, str], resources: dict[str, str]) -> None:
    """``validateRayGroupResources``."""
    in_start_params = any(ray_start_params.get(key) for key in ("num-cpus", "num-gpus", "memory", "resources"))
    if in_start_params and resources:
        raise ValueError(
            f"resource fields should not be set in both rayStartParams and Resources for {group_name} group; "
            "please use only one"
        )


def validate_ray_group_labels(group_name: str, ray_start_params: dict[str, str], labels: dict[str, str]) -> None:
    """``validateRayGroupLabels``."""
    if "labels" in ray_start_params:
        raise ValueError(
            f"rayStartParams['labels'] is not supported for {group_name} group; please use the top-level Labels field instead"
        )
    problems = [
        f"invalid label key for {group_name} group: '{key}'" for key in labels if not _is_qualified_name(key)
    ] + [
        f"invalid label value for key '{key}' in {group_name} group: '{value}'"
        for key, value in labels.items()
        if not _is_valid_label_value(str(value))
    ]
    if problems:
        raise ValueError("; ".join(problems))


def validate_ray_cluster_spec(spec: dict[str, Any]) -> None:
    """``ValidateRayClusterSpec``: the parts a manifest of ours can reach (no GCS fault tolerance, suspension,
    history server, network policy or TLS options are set, and the test checks they stay unset)."""
    head = spec["headGroupSpec"]
    if not head["template"]["spec"].get("containers"):
        raise ValueError("headGroupSpec should have at least one container")
    validate_ray_group_resources("Head", head.get("rayStartParams", {}), head.get("resources", {}))
    validate_ray_group_labels("Head", head.get("rayStartParams", {}), head.get("labels", {}))
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))
    for group in spec.get("workerGroupSpecs", []):
        name = group["groupName"]
        if not group["template"]["spec"].get("containers"):
            raise ValueError("workerGroupSpec should have at least one container")
        low, high = group.get("minReplicas"), group.get("maxReplicas")
        if not autoscaling and (low is None or high is None):
            raise ValueError(f"worker group {name} must set both minReplicas and maxReplicas when autoscaling is disabled")
        if low is not None and low < 0:
            raise ValueError(f"worker group {name} has negative minReplicas {low}")
        if high is not None and high < 0:
            raise ValueError(f"worker group {name} has negative maxReplicas {high}")
        if low is not None and high is not None and low > high:
            raise ValueError(f"worker group {name} has minReplicas {low} greater than maxReplicas {high}")
        validate_ray_group_resources(name, group.get("rayStartParams", {}), group.get("resources", {}))
        validate_ray_group_labels(name, group.get("rayStartParams", {}), group.get("labels", {}))
    if spec.get("authOptions", {}).get("mode") == "token":
        version = tuple(int(part) for part in spec.get("rayVersion", "0").split(".")[:3])
        if version < (2, 52, 0):
            raise ValueError(f"authOptions.mode is 'token' but minimum Ray version is 2.52.0, got {spec.get('rayVersion')}")
        if spec["authOptions"].get("enableK8sTokenAuth"):
            raise ValueError("The RayService spec is invalid: K8s token auth mode is currently not supported for RayService")


def validate_ray_service(manifest: dict[str, Any]) -> None:
    """``ValidateRayServiceMetadata`` and ``ValidateRayServiceSpec``; raises ``ValueError`` with the operator's words."""
    name = manifest["metadata"]["name"]
    if len(name) > MAX_RAY_SERVICE_NAME_LENGTH:
        raise ValueError(f"RayService name should be no more than {MAX_RAY_SERVICE_NAME_LENGTH} characters")
    if not _DNS1035_LABEL.match(name):
        raise ValueError("RayService name should be a valid DNS1035 label")
    spec = manifest["spec"]
    validate_ray_cluster_spec(spec["rayClusterConfig"])
    head_service = spec["rayClusterConfig"]["headGroupSpec"].get("headService") or {}
    if head_service.get("metadata", {}).get("name"):
        raise ValueError("spec.rayClusterConfig.headGroupSpec.headService.metadata.name should not be set")


def group_names_problem(spec: dict[str, Any]) -> str | None:
    """Worker group names must be distinct DNS-1123 labels: KubeRay names pods and (with a network policy) policies
    after them, and tells groups apart by name (``raycluster_types.go``)."""
    names = [group["groupName"] for group in spec.get("workerGroupSpecs", [])]
    if len(set(names)) != len(names):
        return f"worker group names repeat: {names}"
    bad = [name for name in names if len(name) > 63 or not _DNS1123_LABEL.match(name)]
    return f"worker group names that are not DNS-1123 labels: {bad}" if bad else None
