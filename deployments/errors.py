"""Errors that reach HTTP clients: a status, a message a person can act on, no traceback.

The body follows OpenAI's shape so the official client surfaces the message:
``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}``.
"""

from typing import Any


class ApiError(Exception):
    """An error answered to the client as-is."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self, request_id: str) -> dict[str, Any]:
        return error_body(self.message, self.error_type, param=self.param, code=self.code, request_id=request_id)


def error_body(
    message: str, error_type: str, *, param: str | None = None, code: str | None = None, request_id: str
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": error_type,
            "param": param,
            "code": code,
            "request_id": request_id,
        }
    }


def describe_validation_errors(errors: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Pydantic errors -> ``(param, message)`` pairs a person can read.

    ``messages.0.content.list[tagged-union[...]].0`` becomes
    ``messages[0].content[0]``, and the "should be a string" error of the
    ``str | list`` content union is dropped when the client sent a list.
    """
    described: list[tuple[str, str]] = []
    for item in errors:
        if item.get("type") == "string_type" and isinstance(item.get("input"), list):
            continue
        param = ""
        for part in item.get("loc", ()):
            if isinstance(part, int):
                param += f"[{part}]"
            elif part in {"body", "str"} or "[" in part:
                continue
            else:
                param += f".{part}" if param else part
        pair = (param or "body", str(item.get("msg")))
        if pair not in described:
            described.append(pair)
    return described
