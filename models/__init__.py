"""What runs: model adapters, the engines that serve them, and turning a request's media into model inputs.

Its rooms: ``engines/`` (the engine contract, the registry, one folder per engine), ``adapters/`` (model families,
the tiny models, the chat template), ``media/`` (decoding, sampling, budgets, thumbnails), ``decoding/`` (sampling,
stops, grammars, the compile server); at the top the request and answer types, the errors, the checkpoint's source
and the weight cache.

Knows nothing of Ray or HTTP. Most modules import torch and transformers; the ones in
:data:`TORCH_FREE_MODULES` never do, because the ingress (a small process on every node) uses them:
the request and answer types, the errors a request ends with, media decoding and video sampling.
``tests/test_layering.py`` imports each of them with torch refused, and checks that the torch-free
rooms of ``deployments/`` import nothing else from here.
"""

TORCH_FREE_MODULES = frozenset(
    {
        "models.adapters",
        "models.adapters.chat_template",
        "models.adapters.names",
        "models.cache_dir",
        "models.checkpoint_source",
        "models.decoding",
        "models.engines",
        "models.engines.contract",
        "models.engines.spec",
        "models.engines.transformers.batch_policy",
        "models.errors",
        "models.media",
        "models.media.decode_budget",
        "models.media.identity",
        "models.media.inputs",
        "models.media.media_cache",
        "models.media.remote",
        "models.media.request_shrink",
        "models.media.thumbnails",
        "models.media.video",
        "models.media.visual_tokens",
        "models.requests",
    }
)
