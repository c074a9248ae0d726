"""Headers that Ray Serve's HTTP proxy obeys before the app sees a request, refused when a client sends them.

Serve's proxy (``ray/serve/_private/proxy.py``, Ray 2.60) reads two per-request hints meant for a trusted proxy in
front of it: ``x-request-timeout-seconds`` (0 or less turns off ``http_options.request_timeout_s`` for that request)
and ``x-request-disconnect-disabled: ?1`` (the request runs on after its client has gone). No Serve setting turns
either off. A client that sends them can hold an ingress slot and a replica's batch row for as long as it likes, so
the ingress answers any request carrying one with a 400 at once, before it does any work: the proxy's longer
timeout then has nothing left to wait on. A proxy of the operator's in front strips them (docs/operations.md).
"""

PROXY_HINT_HEADERS = ("x-request-timeout-seconds", "x-request-disconnect-disabled")


def proxy_hint_in(header_names: list[str]) -> str | None:
    """The first of Serve's proxy hints among ``header_names`` (lower-case, as ASGI gives them), or ``None``."""
    return next((name for name in PROXY_HINT_HEADERS if name in header_names), None)
