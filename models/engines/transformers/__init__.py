"""Our own engine on transformers: the batched scheduler (continuous batching, admission by predicted memory) and the
serial one for adapters with their own generate loop. It runs in the project's environment, loads every precision
bitsandbytes has (int8, nf4), and ends every group's chain: it runs wherever another engine cannot.

- :mod:`.scheduler`: iteration-level batching; :mod:`.batch_policy` its pure decisions; :mod:`.hf_batch_model` the
  forward passes; :mod:`.kv_batch` the running batch's KV cache;
- :mod:`.serial_scheduler`: one request at a time;
- :mod:`.links`: its chain links in a replica.

Torch-free (the config reads :data:`TRANSFORMERS`).
"""

from memory.strategy import DEFAULT_CPU_CHAIN, DEFAULT_GPU_CHAIN
from models.engines.spec import EngineSpec

# A group on our engine holds 8 requests in its batch and 16 in all: its own scheduler admits by memory.
MAX_BATCH_SIZE = 8
MAX_ONGOING_REQUESTS = 16

TRANSFORMERS = EngineSpec(
    name="transformers",
    summary="ours, in the project's environment; its links are the group's chain",
    precisions=("fp32", "bf16", "fp16", "int8", "nf4"),
    default_chains={"cuda": DEFAULT_GPU_CHAIN, "cpu": DEFAULT_CPU_CHAIN},
    chain_field="chain",
    max_batch_size=MAX_BATCH_SIZE,
    max_ongoing_requests=MAX_ONGOING_REQUESTS,
    links_module="models.engines.transformers.links",
)
