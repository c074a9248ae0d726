"""A JSON request body read under the byte limit, with its nesting and its objects bounded.

The body is counted as it arrives and reading stops at the limit (413), chunked or not, so a body over
it never sits whole in memory. Python's parser recurses once per level and fails with
``RecursionError`` near 1000 levels (a 500 before this check). A chat request needs 6 levels; anything
deeper than :data:`MAX_JSON_DEPTH` is a 400 that says so, and the depth is counted without recursion.
The parser stops at the ``max_objects``-th object (a 400): 800,000 one-letter messages in a 26 MiB body
would be 800,000 dicts before any limit on messages could count them. A large body is parsed off the
event loop.
"""

import asyncio
import json
from typing import Any

from starlette.requests import Request

from deployments.errors import ApiError

MAX_JSON_DEPTH = 400
_PARSE_IN_THREAD_BYTES = 256 * 1024


async def read_json_body(request: Request, max_bytes: int, *, max_objects: int = 100_000) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"Request body is {int(declared)} bytes; the limit is {max_bytes} bytes")
    content_type = request.headers.get("content-type", "")
    if content_type and not content_type.split(";")[0].strip().lower().endswith("json"):
        raise ApiError(415, f"Content-Type {content_type!r} is not supported here; send application/json")
    chunks, received = [], 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise ApiError(413, f"Request body is over {max_bytes} bytes (the limit); reading stopped at {received}")
        chunks.append(chunk)
    raw = b"".join(chunks)
    del chunks
    if not raw:
        raise ApiError(400, "Request body is empty; send a JSON object")
    if len(raw) > _PARSE_IN_THREAD_BYTES:
        payload = await asyncio.to_thread(_parse, raw, max_objects)
    else:
        payload = _parse(raw, max_objects)
    depth = json_depth(payload, limit=MAX_JSON_DEPTH)
    if depth > MAX_JSON_DEPTH:
        raise ApiError(400, f"Request body nests JSON deeper than {MAX_JSON_DEPTH} levels; flatten it")
    return payload


def _parse(raw: bytes, max_objects: int) -> Any:
    objects = 0

    def count(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal objects
        objects += 1
        if objects > max_objects:
            raise _TooManyObjects
        return dict(pairs)

    try:
        return json.loads(raw, object_pairs_hook=count)
    except _TooManyObjects:
        raise ApiError(
            400, f"Request body holds more than {max_objects} JSON objects, more than any request within the limits "
            "(limits.max_messages, max_content_parts, max_schema_bytes) needs"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError(400, f"Request body is not valid JSON: {error}") from error
    except RecursionError as error:
        raise ApiError(400, f"Request body nests JSON deeper than {MAX_JSON_DEPTH} levels; flatten it") from error


class _TooManyObjects(Exception):
    pass


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
