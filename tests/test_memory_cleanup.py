import gc

import pytest
import torch

from memory.cleanup import release_memory

pytestmark = pytest.mark.unit


def test_cleanup_frees_what_only_a_collection_can_reach_and_says_how_much():
    gc.collect()
    size_bytes = 200 * 1024**2
    cycle: dict = {"tensor": torch.ones(size_bytes // 4, dtype=torch.float32)}
    cycle["self"] = cycle  # a reference cycle: freed only by the garbage collector
    del cycle
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        result = release_memory()
    finally:
        if gc_was_enabled:
            gc.enable()

    assert result.collected_objects >= 2
    assert result.process_rss_freed_bytes >= 0.8 * size_bytes
    assert result.gpu_reserved_freed_bytes == 0  # no CUDA here
