import json
import os
import time

import pytest
import torch

FIGURES_ENV = "VD_GPU_FIGURES"  # tests/gpu/run_all.sh points it at the one file every check's figures go to


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; the CPU twins in tests/ cover the same paths")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def record_figure(request):
    """``record_figure(name, value)``: one JSON line in ``$VD_GPU_FIGURES`` (when set), with the test's name, and
    printed as well (``pytest -s``)."""

    def record(name: str, value) -> None:
        line = json.dumps({"test": request.node.nodeid, "figure": name, "value": value, "at": time.time()}, default=str)
        print(line)
        path = os.environ.get(FIGURES_ENV)
        if path:
            with open(path, "a") as figures:
                figures.write(line + "\n")

    return record
