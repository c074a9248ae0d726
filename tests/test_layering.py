"""Imports point one way, between the packages and between the rooms of ``deployments/``.

- ``deployments`` on ``models`` and ``memory``, ``models`` on ``memory``, never back;
- inside ``deployments/``, each room imports only the rooms below it (:data:`ROOM_RULES`);
- the torch-free rooms (everything the ingress loads) import only the modules ``models`` and ``memory``
  declare torch-free, and each of those imports with torch refused.
"""

import ast
import pathlib

import pytest
from without_torch import run_without_torch

import memory
import models

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parent.parent
FORBIDDEN = {"memory": {"models", "deployments"}, "models": {"deployments"}}

# room -> module prefixes it must not import (a prefix ``x`` covers ``x`` and ``x.*``), and the exceptions.
ROOM_RULES: dict[str, tuple[set[str], set[str]]] = {
    "deployments.errors": ({"deployments"}, set()),
    "deployments.serve_env": ({"deployments"}, set()),  # Serve's settings: bin/serve and the tests import it before Ray
    "deployments.local_stop": ({"deployments"}, set()),  # bin/serve's stop: Ray only
    "deployments.observability": ({"deployments"}, set()),
    "deployments.config": ({"deployments"}, {"deployments.routing.groups"}),
    "deployments.files": ({"deployments"}, {"deployments.config", "deployments.errors", "deployments.files"}),
    "deployments.routing": (
        {"deployments.edge", "deployments.files", "deployments.jobs", "deployments.replica", "deployments.app", "deployments.plan"},
        {"deployments.replica.protocol"},
    ),
    "deployments.replica": ({"deployments.edge", "deployments.files", "deployments.app", "deployments.routing.router"}, set()),
    "deployments.edge": ({"deployments.replica", "deployments.app", "deployments.plan", "deployments.jobs.runner"},
                         {"deployments.replica.protocol"}),
    "deployments.jobs": (
        {"deployments.edge", "deployments.replica", "deployments.app", "deployments.plan"},
        {"deployments.replica.protocol", "deployments.replica.background"},
    ),
    "deployments.plan": ({"deployments.edge", "deployments.files", "deployments.replica", "deployments.routing", "deployments.app"},
                         {"deployments.routing.groups"}),
}
# What the ingress process loads: these import nothing from models or memory that imports torch.
TORCH_FREE_ROOMS = (
    "deployments.errors",
    "deployments.observability",
    "deployments.config",
    "deployments.files",
    "deployments.routing",
    "deployments.edge",
    "deployments.jobs",
    "deployments.replica.protocol",
    "deployments.replica.background",
)


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: pathlib.Path) -> set[str]:
    """Every absolute module an import statement names; ``from x import y`` counts as ``x.y`` too (y may be a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _covered(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _sources(package: str) -> list[pathlib.Path]:
    base = ROOT / package.replace(".", "/")
    return sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_never_imports_the_layers_above_it(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted({name.split(".")[0] for name in _imported_modules(path)} & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
        if {name.split(".")[0] for name in _imported_modules(path)} & FORBIDDEN[package]
    }

    assert offenders == {}


@pytest.mark.parametrize("room", sorted(ROOM_RULES))
def test_a_room_of_deployments_imports_only_the_rooms_below_it(room):
    forbidden, allowed = ROOM_RULES[room]
    offenders = {}
    for path in _sources(room):
        own = _module_name(path)
        bad = sorted(
            name for name in _imported_modules(path)
            if any(_covered(name, prefix) for prefix in forbidden)
            and not any(_covered(name, exception) for exception in allowed | {own})
            and not _covered(name, room)
            and (ROOT / (name.replace(".", "/") + ".py")).exists() | (ROOT / name.replace(".", "/")).is_dir()
        )
        if bad:
            offenders[str(path.relative_to(ROOT))] = bad

    assert offenders == {}


def test_every_room_of_deployments_has_a_rule():
    rooms = {
        _module_name(path) for path in (ROOT / "deployments").iterdir()
        if (path.is_dir() and (path / "__init__.py").exists()) or (path.suffix == ".py" and path.stem != "__init__")
    }

    assert rooms - set(ROOM_RULES) == {"deployments.app"}  # the top: it may import every room


@pytest.mark.parametrize("room", TORCH_FREE_ROOMS)
def test_the_torch_free_rooms_import_only_torch_free_modules(room):
    torch_free = models.TORCH_FREE_MODULES | memory.TORCH_FREE_MODULES
    offenders = {}
    for path in _sources(room):
        bad = sorted(
            name for name in _imported_modules(path)
            if name.split(".")[0] in ("models", "memory") and name not in ("models", "memory")
            and (ROOT / (name.replace(".", "/") + ".py")).exists()
            and name not in torch_free
        )
        if bad:
            offenders[str(path.relative_to(ROOT))] = bad

    assert offenders == {}


def test_the_modules_declared_torch_free_import_without_torch():
    names = sorted(models.TORCH_FREE_MODULES | memory.TORCH_FREE_MODULES)
    result = run_without_torch(
        """
        import importlib
        for name in sys.argv[1:]:
            importlib.import_module(name)
        print("ok")
        """,
        *names,
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"
