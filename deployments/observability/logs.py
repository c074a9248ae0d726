"""Send this application's log lines through Ray Serve's replica logger, so they carry the request id.

Serve configures only the ``ray.serve`` logger in a replica: its handlers write the replica's log file
(and stderr) in Serve's format, with the replica and the request id of the request being served. Our
packages log under their own names (``deployments``, ``models``, ``memory``), which would otherwise
reach no handler at INFO. Attaching Serve's handlers to them puts every line of ours next to Serve's
for the same request, tagged with the same ``x-request-id``.
"""

import logging

PACKAGES = ("deployments", "models", "memory")


def route_logs_through_serve(level: int = logging.INFO) -> None:
    """Call once per replica process, after Serve set its logger up (any replica constructor is)."""
    serve_handlers = logging.getLogger("ray.serve").handlers
    for name in PACKAGES:
        package_logger = logging.getLogger(name)
        package_logger.setLevel(level)
        for handler in serve_handlers:
            if handler not in package_logger.handlers:
                package_logger.addHandler(handler)
        package_logger.propagate = False  # the root logger's handlers (if any) would print each line twice
