"""The engines a replica can run, and the one registry of them.

- :mod:`~models.engines.contract`: how a replica runs a model (the only engine API a replica calls);
- :mod:`~models.engines.spec`: what an engine declares (:class:`~models.engines.spec.EngineSpec`) and the links it
  builds in a replica (:class:`~models.engines.spec.EngineLinks`);
- :mod:`~models.engines.start`: the loaded link's engine, started with the replica's limits;
- :mod:`~models.engines.warm_up`: the real generation a replica runs before it is ready;
- one folder per engine: ``transformers/`` (ours: batched and serial schedulers) and ``vllm/`` (vLLM's async engine,
  in its own environment).

Adding an engine: a folder with its ``EngineSpec`` in ``__init__.py`` (torch-free) and its ``EngineLinks`` as
``LINKS`` in the module the spec names, plus one line in :data:`ENGINES`.
"""

from models.engines.spec import EngineSpec
from models.engines.transformers import TRANSFORMERS
from models.engines.vllm import VLLM

# In the order ``engine: auto`` tries them. The last one runs wherever the others cannot, and ends every chain.
ENGINES: tuple[EngineSpec, ...] = (VLLM, TRANSFORMERS)
BASE_ENGINE = ENGINES[-1]
ENGINE_NAMES = tuple(spec.name for spec in ENGINES)
AUTO = "auto"


def engine_named(name: str) -> EngineSpec:
    for spec in ENGINES:
        if spec.name == name:
            return spec
    raise ValueError(f"Unknown engine {name!r}; use one of {', '.join(ENGINE_NAMES)} or {AUTO}")


def engines_tried(requested: str) -> tuple[EngineSpec, ...]:
    """A group's engines in the order its replicas try them: ``auto``, every engine; one named, that engine and then
    the base engine (a vLLM that cannot start hands over to transformers, as any link does)."""
    if requested == AUTO:
        return ENGINES
    spec = engine_named(requested)
    return (spec,) if spec is BASE_ENGINE else (spec, BASE_ENGINE)
