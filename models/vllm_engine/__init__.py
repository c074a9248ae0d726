"""The vLLM engine behind the engine contract (:mod:`models.engine`), in vLLM's own environment.

Only :mod:`models.vllm_engine.availability` and :mod:`models.vllm_engine.torchvision_ops` may be imported
where vLLM is not installed; the rest imports vllm.
"""
