"""What runs: model adapters, the engines that serve them, and turning a request's media into model inputs.

Knows nothing of Ray or HTTP. Most modules import torch and transformers; the ones in
:data:`TORCH_FREE_MODULES` never do, because the ingress (a small process on every node) uses them:
the request and answer types, the errors a request ends with, media decoding and video sampling.
``tests/test_layering.py`` imports each of them with torch refused, and checks that the torch-free
rooms of ``deployments/`` import nothing else from here.
"""

TORCH_FREE_MODULES = frozenset(
    {
        "models.adapter_names",
        "models.batch_policy",
        "models.cache_dir",
        "models.checkpoint_source",
        "models.chat_template",
        "models.decode_budget",
        "models.engine",
        "models.errors",
        "models.media",
        "models.remote_media",
        "models.request_shrink",
        "models.requests",
        "models.thumbnails",
        "models.video",
        "models.visual_tokens",
    }
)
