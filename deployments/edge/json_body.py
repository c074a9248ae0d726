"""A JSON request body read under the byte limit, with its nesting bounded.

Python's parser recurses once per level and fails with ``RecursionError`` near 1000 levels (a 500
before this check). A chat request needs 6 levels; anything deeper than :data:`MAX_JSON_DEPTH` is a
400 that says so, and the depth is counted without recursion.
"""

import json
from typing import Any

from starlette.requests import Request

from deployments.errors import ApiError

MAX_JSON_DEPTH = 400


async def read_json_body(request: Request, max_bytes: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"Request body is {int(declared)} bytes; the limit is {max_bytes} bytes")
    content_type = request.headers.get("content-type", "")
    if content_type and not content_type.split(";")[0].strip().lower().endswith("json"):
        raise ApiError(415, f"Content-Type {content_type!r} is not supported here; send application/json")
    raw = await request.body()
    if len(raw) > max_bytes:
        raise ApiError(413, f"Request body is {len(raw)} bytes; the limit is {max_bytes} bytes")
    if not raw:
        raise ApiError(400, "Request body is empty; send a JSON object")
    try:
        payload = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError(400, f"Request body is not valid JSON: {error}") from error
    except RecursionError as error:
        raise ApiError(400, f"Request body nests JSON deeper than {MAX_JSON_DEPTH} levels; flatten it") from error
    depth = json_depth(payload, limit=MAX_JSON_DEPTH)
    if depth > MAX_JSON_DEPTH:
        raise ApiError(400, f"Request body nests JSON deeper than {MAX_JSON_DEPTH} levels; flatten it")
    return payload


def json_depth(value: Any, *, limit: int) -> int:
    """How deep arrays and objects nest in ``value`` (a scalar is 0), counted without recursion; stops past ``limit``."""
    deepest = 0
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        pending.extend((child, depth + 1) for child in children)
    return deepest
