import pydantic
import pytest

from deployments.edge.openai_schema import ChatCompletionRequest
from deployments.errors import ApiError, describe_validation_errors

pytestmark = pytest.mark.unit


def _errors(payload) -> list[tuple[str, str]]:
    with pytest.raises(pydantic.ValidationError) as raised:
        ChatCompletionRequest.model_validate(payload)
    return describe_validation_errors(raised.value.errors())


def test_missing_messages():
    assert _errors({"model": "x"}) == [("messages", "Field required")]


def test_an_unknown_part_type_is_named_at_its_position():
    described = _errors({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "audio"}]}]})

    assert len(described) == 1
    param, message = described[0]
    assert param == "messages[0].content[1]"
    assert "'audio'" in message and "'video_url'" in message


def test_a_wrong_role():
    described = _errors({"messages": [{"role": "robot", "content": "hi"}]})

    assert described[0][0] == "messages[0].role"


def test_api_error_body_has_the_openai_shape():
    error = ApiError(413, "too big", param="messages", code="limit")

    assert error.body("req-1") == {
        "error": {"message": "too big", "type": "invalid_request_error", "param": "messages", "code": "limit", "request_id": "req-1"}
    }
