"""The engines are one registry (``models/engines/__init__.py``) and one folder each: outside its folder, no code
names an engine that is not the base one, and every engine declares what the rest of the project reads."""

import ast
import pathlib

import pytest

from deployments.config.app_config import ConfigError, load_app_config
from memory.strategy import PRECISIONS
from models.engines import AUTO, BASE_ENGINE, ENGINE_NAMES, ENGINES, engine_named, engines_tried

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _code_words(path: pathlib.Path) -> set[str]:
    """Names, attributes, imported modules and one-word string constants (no prose: descriptions may say whose
setting a field mirrors), lower-cased."""
    tree = ast.parse(path.read_text())
    words = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.add(node.id)
        elif isinstance(node, ast.Attribute):
            words.add(node.attr)
        elif isinstance(node, ast.alias):
            words.add(node.name)
        elif isinstance(node, ast.ImportFrom) and node.module:
            words.add(node.module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and not any(c.isspace() for c in node.value):
            words.add(node.value)
    return {word.lower() for word in words}


@pytest.mark.parametrize("engine", [spec.name for spec in ENGINES if spec is not BASE_ENGINE])
def test_no_code_outside_an_engines_folder_names_it(engine):
    folder, registry = ROOT / "models" / "engines" / engine, ROOT / "models" / "engines" / "__init__.py"
    sources = [path for package in ("deployments", "memory", "models") for path in (ROOT / package).rglob("*.py")
               if folder not in path.parents and path != registry]

    offenders = sorted(str(path.relative_to(ROOT)) for path in sources if any(engine in word for word in _code_words(path)))

    assert offenders == []


@pytest.mark.parametrize("spec", ENGINES, ids=ENGINE_NAMES)
def test_every_engine_declares_what_the_project_reads(spec):
    assert spec.name == spec.links_module.split(".")[2]  # its links live in its own folder
    assert (ROOT / "models" / "engines" / spec.name / "__init__.py").is_file()
    assert set(spec.precisions) <= set(PRECISIONS)
    assert set(spec.default_chains) == {"cuda", "cpu"}
    assert all(set(chain) <= set(spec.precisions) for chain in spec.default_chains.values())
    assert 1 <= spec.max_batch_size <= spec.max_ongoing_requests
    assert engine_named(spec.name) is spec


def test_a_group_tries_its_engine_then_the_base_one_and_auto_tries_them_all():
    assert engines_tried(AUTO) == ENGINES
    assert engines_tried(BASE_ENGINE.name) == (BASE_ENGINE,)
    for spec in ENGINES[:-1]:
        assert engines_tried(spec.name) == (spec, BASE_ENGINE)
    with pytest.raises(ValueError, match="Unknown engine 'tensorrt'"):
        engines_tried("tensorrt")


def test_a_groups_limits_default_to_its_first_engines():
    for name in (*ENGINE_NAMES, AUTO):
        first = engines_tried(name)[0]
        group = load_app_config({"cpu_group": {"engine": name}}).cpu_group
        assert (group.max_batch_size, group.max_ongoing_requests) == (first.max_batch_size, first.max_ongoing_requests)
    with pytest.raises(ConfigError, match="engine"):
        load_app_config({"cpu_group": {"engine": "tensorrt"}})


def test_a_groups_python_is_its_first_engines_environment_that_is_there(caplog):
    from deployments.plan import replica_python
    from models.engines.vllm import DEFAULT_VLLM_PYTHON

    def python_for(group: dict) -> str | None:
        return replica_python("cpu", load_app_config({"cpu_group": group}).cpu_group)

    assert python_for({}) is None  # transformers: the project's own
    assert python_for({"engine": "vllm", "vllm_python": "/opt/vllm/bin/python"}) == "/opt/vllm/bin/python"
    built = str(DEFAULT_VLLM_PYTHON) if DEFAULT_VLLM_PYTHON.is_file() else None
    def ours() -> list:  # a library imported for the first time here (bitsandbytes) may warn of its own
        return [record for record in caplog.records if record.name.startswith(("deployments", "models"))]

    with caplog.at_level("WARNING"):
        assert python_for({"engine": "auto"}) == built  # auto: vLLM's where it was built, else ours, quietly
        assert not ours()
        assert python_for({"engine": "vllm"}) == built
    assert bool(ours()) is (built is None)  # named and missing: said
