"""How a model gets into memory and stays healthy there. Knows nothing of Ray or HTTP.

The modules in :data:`TORCH_FREE_MODULES` import torch only inside the functions that measure a GPU, so
the ingress and the app builder can use them without it (checked by ``tests/test_layering.py``).
"""

TORCH_FREE_MODULES = frozenset(
    {
        "memory.admission",
        "memory.allocator",
        "memory.budget",
        "memory.cleanup",
        "memory.packing",
        "memory.probe",
        "memory.strategy",
    }
)
