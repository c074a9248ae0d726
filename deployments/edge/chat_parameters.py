"""Every chat-completions parameter is honoured or refused by name: none is ever silently ignored.

:func:`refuse_unsupported` runs on the raw JSON body, before the request model: a parameter this server
does not honour (``tools``, ``audio``, ...) or does not know is a 400 that names it. A refused parameter
sent with its "off" value (``tools: null``, ``store: false``, ``modalities: ["text"]``) passes, as some
clients send those by default.

:func:`decoding_options` turns the honoured ones into the replica's
:class:`~models.requests.DecodingOptions`, with the checks the request model cannot make alone: at most
4 non-empty ``stop`` strings, ``top_logprobs`` only with ``logprobs``, a ``json_schema`` that has a
schema, ``logit_bias`` keys that are token ids (ASCII digits, at most 300 of them).
"""

import json
import re
from typing import Any

from deployments.config.limits import LimitsSettings
from deployments.edge.json_body import json_depth
from deployments.edge.openai_schema import ChatCompletionRequest
from deployments.errors import ApiError
from models.requests import DecodingOptions, ResponseFormat

MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_STOP_CHARS = 256
MAX_LOGIT_BIAS_ENTRIES = 300  # OpenAI's limit
_TOKEN_ID = re.compile(r"0|[1-9][0-9]{0,9}")

# Parameter -> (why it is refused, the values that mean "not used" and so pass).
REFUSED: dict[str, tuple[str, tuple[Any, ...]]] = {
    "tools": ("tool calling is not supported", (None, [])),
    "tool_choice": ("tool calling is not supported", (None, "none")),
    "parallel_tool_calls": ("tool calling is not supported", (None,)),
    "functions": ("function calling is not supported", (None, [])),
    "function_call": ("function calling is not supported", (None, "none")),
    "audio": ("audio output is not supported", (None,)),
    "modalities": ("only text output is supported", (None, ["text"])),
    "prediction": ("predicted outputs are not supported", (None,)),
    "web_search_options": ("web search is not supported", (None,)),
    "reasoning_effort": ("this model has no reasoning mode", (None,)),
    "verbosity": ("this model has no verbosity setting", (None,)),
    "service_tier": ("there are no service tiers here", (None, "auto", "default")),
    "store": ("stored completions are not supported", (None, False)),
    "metadata": ("stored completions are not supported", (None, {})),
    "prompt_cache_key": ("prompt caching is not supported", (None,)),
    "safety_identifier": ("use user to tag requests in the logs", (None,)),
    "best_of": ("best_of is not supported; use n", (None, 1)),
    "use_beam_search": ("beam search is not supported", (None, False)),
}

KNOWN = frozenset(ChatCompletionRequest.model_fields)


def refuse_unsupported(payload: Any) -> dict[str, Any]:
    """The body without refused parameters sent "off"; a 400 naming the first one that is refused or unknown."""
    if not isinstance(payload, dict):
        raise ApiError(400, "The request body must be a JSON object", code="invalid_body")
    honoured = {}
    for name, value in payload.items():
        if name in KNOWN:
            honoured[name] = value
            continue
        if name in REFUSED:
            why, off_values = REFUSED[name]
            if any(value == off and type(value) is type(off) for off in off_values):
                continue
            raise ApiError(400, f"{name}: {why} by this server", param=name, code="unsupported_parameter")
        raise ApiError(
            400,
            f"{name}: unknown parameter; this server takes {', '.join(sorted(KNOWN))}",
            param=name,
            code="unknown_parameter",
        )
    return honoured


def decoding_options(chat: ChatCompletionRequest, *, max_tokens: int, limits: LimitsSettings) -> DecodingOptions:
    stop = _stop_strings(chat.stop)
    if chat.top_logprobs and not chat.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    if chat.min_tokens is not None and chat.min_tokens > max_tokens:
        raise ApiError(
            400, f"min_tokens: {chat.min_tokens} is more than max_tokens ({max_tokens})", param="min_tokens"
        )
    response_format = _response_format(chat, limits)
    if response_format is not None and chat.min_tokens:
        raise ApiError(
            400,
            "min_tokens cannot be combined with response_format: a complete answer may need fewer tokens",
            param="min_tokens",
        )
    return DecodingOptions(
        top_p=chat.top_p if chat.top_p is not None else 1.0,
        top_k=max(0, chat.top_k or 0),
        min_p=chat.min_p or 0.0,
        presence_penalty=chat.presence_penalty or 0.0,
        frequency_penalty=chat.frequency_penalty or 0.0,
        repetition_penalty=chat.repetition_penalty if chat.repetition_penalty is not None else 1.0,
        logit_bias=_logit_bias(chat.logit_bias),
        min_tokens=chat.min_tokens or 0,
        ignore_eos=bool(chat.ignore_eos),
        stop=stop,
        logprobs=bool(chat.logprobs),
        top_logprobs=chat.top_logprobs or 0,
        response_format=response_format,
    )


def _stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    strings = [stop] if isinstance(stop, str) else list(stop or [])
    if len(strings) > MAX_STOP_STRINGS:
        raise ApiError(400, f"stop: {len(strings)} strings; at most {MAX_STOP_STRINGS}", param="stop")
    for string in strings:
        if not string:
            raise ApiError(400, "stop: an empty string would end every answer before it starts", param="stop")
        if len(string) > MAX_STOP_CHARS:
            raise ApiError(400, f"stop: a string of {len(string)} characters; at most {MAX_STOP_CHARS}", param="stop")
    return tuple(strings)


def _logit_bias(bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    if bias and len(bias) > MAX_LOGIT_BIAS_ENTRIES:
        raise ApiError(400, f"logit_bias: {len(bias)} entries; at most {MAX_LOGIT_BIAS_ENTRIES}", param="logit_bias")
    pairs = []
    for key, value in (bias or {}).items():
        if not _TOKEN_ID.fullmatch(key):  # ASCII digits, written once: not "²", not "01" beside "1"
            raise ApiError(
                400, f"logit_bias: {key[:20]!r} is not a token id (a non-negative integer in ASCII digits, "
                "without leading zeros)", param="logit_bias",
            )
        if not -100.0 <= value <= 100.0:
            raise ApiError(400, f"logit_bias: {value:g} for token {key}; biases go from -100 to 100", param="logit_bias")
        pairs.append((int(key), float(value)))
    return tuple(sorted(pairs))


def _response_format(chat: ChatCompletionRequest, limits: LimitsSettings) -> ResponseFormat | None:
    response_format = chat.response_format
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return ResponseFormat(kind="json_object")
    schema = response_format.json_schema.schema_ if response_format.json_schema else None
    if not schema:
        raise ApiError(
            400,
            'response_format: type json_schema needs {"json_schema": {"name": ..., "schema": {...}}}',
            param="response_format",
        )
    schema_json = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    check_schema_size(schema, schema_json, limits)
    return ResponseFormat(kind="json_schema", schema_json=schema_json)


def check_schema_size(
    schema: Any, schema_json: str, limits: LimitsSettings, *, param: str = "response_format",
    where: str = "response_format.json_schema.schema",
) -> None:
    """A schema compiles to a grammar in the replica, in time that grows with its size, nesting and enums
    (an enum of 50,000 strings took two minutes): bounded here, each a 400 naming its limit."""
    def refuse(what: str, limit_name: str, limit: int) -> ApiError:
        return ApiError(400, f"{where}: {what}; the limit is {limit} (limits.{limit_name})",
                        param=param, code="schema_too_large")

    if len(schema_json) > limits.max_schema_bytes:
        raise refuse(f"{len(schema_json)} bytes as compact JSON", "max_schema_bytes", limits.max_schema_bytes)
    depth = json_depth(schema, limit=limits.max_schema_depth)
    if depth > limits.max_schema_depth:
        raise refuse(f"nests more than {limits.max_schema_depth} JSON levels", "max_schema_depth", limits.max_schema_depth)
    values = _enum_values(schema)
    if values > limits.max_schema_enum_values:
        raise refuse(f"{values} enum and const values", "max_schema_enum_values", limits.max_schema_enum_values)


def _enum_values(schema: Any) -> int:
    """Values listed under every ``enum`` (and each ``const``), counted without recursion."""
    count, pending = 0, [schema]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            enum = item.get("enum")
            count += len(enum) if isinstance(enum, list) else 0
            count += "const" in item
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return count
