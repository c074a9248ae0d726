import pytest

from deployments.config.app_config import ConfigError, load_app_config
from deployments.config.ingress import AuthSettings
from deployments.edge.auth import check_bearer, load_api_keys
from deployments.errors import ApiError

pytestmark = pytest.mark.unit


def test_keys_come_from_the_environment_and_a_file(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# team keys\nfile-key-1\n\n  file-key-2  \n")

    keys = load_api_keys(AuthSettings(api_keys_env="KEYS", api_keys_file=str(keys_file)), {"KEYS": "env-a, env-b,"})

    assert keys == ("env-a", "env-b", "file-key-1", "file-key-2")


def test_no_keys_means_auth_is_off():
    check_bearer(None, ())


@pytest.mark.parametrize(
    ("header", "message"),
    [(None, "Missing API key"), ("Basic abc", "Missing API key"), ("Bearer ", "Missing API key"), ("Bearer nope", "Invalid API key")],
)
def test_a_missing_or_wrong_key_is_a_401_with_a_bearer_challenge(header, message):
    with pytest.raises(ApiError, match=message) as raised:
        check_bearer(header, ("right",))

    assert raised.value.status_code == 401
    assert raised.value.headers == {"WWW-Authenticate": "Bearer"}


def test_the_right_key_passes():
    check_bearer("Bearer right", ("other", "right"))
    check_bearer("bearer right", ("right",))


def test_a_keys_file_that_does_not_exist_fails_at_start(tmp_path):
    with pytest.raises(ConfigError, match="auth.api_keys_file .* does not exist"):
        load_app_config({"auth": {"api_keys_file": str(tmp_path / "absent")}})
