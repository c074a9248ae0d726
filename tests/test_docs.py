"""The README and docs/ stay true: short, generated where they can be, every link and command pointing at something real.

The examples themselves (every ``bash`` and ``python`` block of the README and ``docs/api.md``) run against a real
server in ``tests/integration/test_doc_examples.py``.
"""

import pathlib
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"```(?:bash|sh|shell)\n(.*?)```", re.S)
INLINE = re.compile(r"`([^`\n]+)`")


def _commands(text: str) -> list[str]:
    """Shell lines from bash fences, and inline code that starts like a command of ours."""
    lines = [line.split("#", 1)[0].strip() for block in FENCE.findall(text) for line in block.splitlines()]
    inline = [code for code in INLINE.findall(text) if code.startswith(("bin/", "python -m ", ".venv/bin/python "))]
    return [line for line in lines + inline if line]


def _referenced_paths(command: str) -> list[str]:
    """What a command of ours runs: ``bin/x``, ``python -m pkg.mod``, ``some/script.py``."""
    paths = re.findall(r"(?<![\w./-])((?:bin|bench|docs|deploy|tests|\.ci)/[\w./-]+)", command)
    for module in re.findall(r"python3? -m ([\w.]+)", command):
        top = module.split(".")[0]
        if (ROOT / top).is_dir():
            base = ROOT / module.replace(".", "/")
            paths.append(str((base / "__main__.py" if base.is_dir() else base.with_suffix(".py")).relative_to(ROOT)))
    return paths


def test_the_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()

    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move detail to docs/"


def test_the_configuration_page_is_generated_from_the_config():
    result = subprocess.run(
        [sys.executable, "docs/generate_configuration.py", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stderr


def test_every_key_of_the_config_is_on_the_configuration_page():
    from deployments.config.app_config import AppConfig

    page = (ROOT / "docs" / "configuration.md").read_text()
    missing = [
        f"{section}.{key}"
        for section, field in AppConfig.model_fields.items()
        for key in field.annotation.model_fields
        if f"`{section}.{key}`" not in page and f"## `{section}.{key}`" not in page
    ]

    assert missing == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            broken.append(target)

    assert broken == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_command_runs_something_that_exists(page):
    missing = sorted({
        path for command in _commands(page.read_text()) for path in _referenced_paths(command)
        if not (ROOT / path.rstrip(".,:;")).exists()
    })

    assert missing == []


def test_the_command_check_would_catch_a_missing_script():
    assert _referenced_paths(".venv/bin/python -m bench.no_such_bench --json") == ["bench/no_such_bench.py"]
    assert _referenced_paths("bin/serve && bench/gone.py") == ["bin/serve", "bench/gone.py"]


def _walkthrough() -> str:
    page = (ROOT / "docs" / "operations.md").read_text()
    start = page.index("## From a clone to a RayService on a GPU cluster")
    end = page.find("\n## ", start + 1)
    return page[start:end if end > 0 else None]


def test_the_cluster_walkthrough_names_only_real_config_keys_and_manifest_fields():
    import yaml

    from deployments.config.app_config import AppConfig

    manifest = yaml.safe_load((ROOT / "deploy" / "rayservice.yaml").read_text())
    names = {code.split(":", 1)[0] for code in INLINE.findall(_walkthrough())}  # `gpu_group.engine: auto` names a key
    config_keys = [name for name in names if name.split(".")[0] in AppConfig.model_fields and "." in name]
    manifest_fields = [name for name in names if name.startswith("spec.")]

    def config_key_exists(name: str) -> bool:
        section, key = name.split(".", 1)
        return key in AppConfig.model_fields[section].annotation.model_fields

    def manifest_field_exists(name: str) -> bool:
        node = manifest
        for part in name.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    assert len(config_keys) >= 8 and len(manifest_fields) >= 4  # the check reads what it should
    assert [name for name in config_keys if not config_key_exists(name)] == []
    assert [name for name in manifest_fields if not manifest_field_exists(name)] == []


def test_the_cluster_walkthroughs_commands_match_the_images_the_secrets_and_the_operator():
    import yaml

    from tests.kuberay_rules import KUBERAY_VERSION

    lines = _commands(_walkthrough())
    manifest = yaml.safe_load((ROOT / "deploy" / "rayservice.yaml").read_text())
    builds = [line for line in lines if line.startswith("docker build")]
    assert len(builds) == 2
    for build in builds:
        dockerfile = ROOT / re.search(r"-f (\S+)", build).group(1)
        arguments = set(re.findall(r"^ARG (\w+)", dockerfile.read_text(), re.M))
        assert set(re.findall(r"--build-arg (\w+)=", build)) <= arguments, build
    assert "--build-arg VLLM_BUILD=cuda" in builds[1]

    created = {}
    for line in lines:
        if line.startswith("kubectl create secret generic"):
            name = line.split()[4]
            created[name] = set(re.findall(r"--from-literal=([\w-]+)=", line))
    read = {}
    cluster = manifest["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for pod in pods:
        for container in pod["template"]["spec"]["containers"]:
            for variable in container.get("env", []):
                reference = variable["valueFrom"]["secretKeyRef"]
                read.setdefault(reference["name"], set()).add(reference["key"])
    assert created == read

    helm = next(line for line in lines if line.startswith("helm install"))
    assert f"--version {KUBERAY_VERSION.removeprefix('v')}" in helm
    assert "kubectl apply -f deploy/rayservice.yaml" in lines
    assert f"kubectl get rayservice {manifest['metadata']['name']}" in lines
    assert f"kubectl port-forward svc/{manifest['metadata']['name']}-serve-svc 8000" in lines  # KubeRay's serve Service
