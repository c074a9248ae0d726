"""Application config: the ``args`` of ``serve_config.yaml`` as written, validated at start-up.

:mod:`deployments.config.app_config` holds :class:`AppConfig` and ``load_app_config``; its sections live
beside it: ``limits`` (what one request may ask for and cost), ``groups`` (the replica groups and their
autoscaling), ``ingress`` (the HTTP edge and its auth). What the config comes to on a cluster (``num_gpus:
auto`` planned, chains parsed, the floor replicas' settings built, the adapter chosen) is the resolved plan,
:mod:`deployments.plan`. No validator here imports torch or transformers: the ingress validates this config too.

Every model rejects unknown keys, so a typo fails when the application is built, with the key's path and
what to change, not later at request time.
"""
