"""Lets PyPI's torchvision import beside the CPU build of torch in vLLM's environment, without changing its files.

The only torchvision 0.28.0 on PyPI for x86_64 is a CUDA build: its C library needs ``libtorch_cuda.so``, which
torch 2.13.0+cpu does not have, so it does not load, and ``import torchvision`` then fails in
``torchvision/_meta_registrations.py`` with "operator torchvision::nms does not exist" (it registers fake
kernels for ``nms`` and ``qnms`` whether or not the C library loaded). Qwen2-VL's processors use only
torchvision's transforms, which are Python.

:func:`install` (run at start-up by a ``.pth`` file that ``bin/ensure-vllm-venv`` writes) puts a finder in
front of the import system. The first time ``torchvision`` is imported, it tries to load torchvision's C
library; where that fails, it defines the two operators' schemas (no kernels: calling them still fails, with
torch's own message) and lets the real import go on. No torch is imported until torchvision is.
"""

import importlib.abc
import importlib.util
import logging
import pathlib
import sys

logger = logging.getLogger(__name__)

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_libraries: list[object] = []  # the torch.library.Library holding the schemas lives as long as the process


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):  # noqa: ANN001 - the finder protocol's signature
        if name == "torchvision":
            sys.meta_path.remove(self)
            define_missing_operators()
        return None  # the import system's own finders import the module


def define_missing_operators() -> bool:
    """Define ``torchvision::nms`` and ``qnms`` when torchvision's C library cannot load; True if it did."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    import torch

    folder = pathlib.Path(next(iter(spec.submodule_search_locations)))
    try:
        for library in sorted(folder.glob("_C*.so")):
            torch.ops.load_library(str(library))
        return False
    except OSError as error:
        reason = str(error).splitlines()[0]
    library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        library.define(schema)
    _libraries.append(library)
    logger.debug("torchvision's C library does not load here (%s); defined its nms and qnms schemas", reason)
    return True


def install() -> None:
    if not any(isinstance(finder, _BeforeTorchvision) for finder in sys.meta_path) and "torchvision" not in sys.modules:
        sys.meta_path.insert(0, _BeforeTorchvision())
