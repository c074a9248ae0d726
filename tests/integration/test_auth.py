"""API keys on a real deployment: 401 without a valid key on every route but /healthz."""

import httpx
import media_factory
import openai
import pytest
from polling import wait_for_condition
from ray import serve

from integration.conftest import deploy

pytestmark = pytest.mark.integration

KEY = "vd-test-key-0123456789"
ADMIN_KEY = "vd-test-admin-key-9876543210"


@pytest.fixture(scope="module")
def secured_url(http_port, test_root):
    keys_file = test_root / "api-keys"
    keys_file.write_text(f"# keys for the auth tests\n{KEY}\n")
    admin_file = test_root / "admin-keys"
    admin_file.write_text(f"{ADMIN_KEY}\n")
    url = deploy(
        {"gpu_group": {"enabled": False}, "cpu_group": {"num_cpus": 0.5}, "auth": {"api_keys_file": str(keys_file), "admin_keys_file": str(admin_file), "memory_view_networks": []},
         "ingress": {"api_docs": True, "allowed_hosts": ["127.0.0.1", "*.example.com"], "readiness_cache_s": 30}},
        http_port,
        name="secured",
        route_prefix="/secured",
    )
    # Ready before the tests: its readiness is cached 30 s (ingress.readiness_cache_s), a read before the CPU group
    # is up would answer 503 for that long.
    wait_for_condition(lambda: httpx.get(f"{url}/health", timeout=10).status_code == 200, timeout_s=180, interval_s=1)
    yield url
    serve.delete("secured")


CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/chat/completions"), ("POST", "/v1/analyze"), ("GET", "/v1/models"), ("GET", "/readyz"), ("GET", "/v1/memory"),
     ("GET", "/openapi.json")],
)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-key", "Basic dXNlcjpwYXNz"])
def test_every_route_but_healthz_wants_a_valid_key(secured_url, method, path, authorization):
    headers = {"Authorization": authorization} if authorization else {}

    response = httpx.request(method, f"{secured_url}{path}", json=CHAT if method == "POST" else None, headers=headers, timeout=60)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert KEY not in response.text


@pytest.mark.parametrize("path", ["/healthz", "/health", "/version"])
def test_the_probe_routes_need_no_key(secured_url, path):
    response = httpx.get(f"{secured_url}{path}", timeout=30)

    assert response.status_code == 200
    assert "groups" not in response.json()  # /health's status alone, without the replicas' reasons


def test_the_files_routes_want_a_key(secured_url):
    assert httpx.get(f"{secured_url}/v1/files", timeout=30).status_code == 401
    assert httpx.post(f"{secured_url}/v1/files", files={"file": ("a", b"x")}, data={"purpose": "vision"},
                      timeout=30).status_code == 401


def test_the_openai_client_with_the_key_is_served(secured_url):
    client = openai.OpenAI(base_url=f"{secured_url}/v1", api_key=KEY, max_retries=0, timeout=60)

    completion = client.chat.completions.create(model="tiny-qwen2-vl", max_tokens=2, messages=CHAT["messages"])

    assert completion.usage.completion_tokens >= 1


def test_the_openai_client_with_a_wrong_key_gets_an_authentication_error(secured_url):
    client = openai.OpenAI(base_url=f"{secured_url}/v1", api_key="wrong", max_retries=0, timeout=60)

    with pytest.raises(openai.AuthenticationError, match="Invalid API key"):
        client.chat.completions.create(model="tiny-qwen2-vl", max_tokens=2, messages=CHAT["messages"])


def test_an_upload_with_the_key_is_served_and_without_it_is_refused_before_it_is_read(secured_url):
    files = {"video": ("clip.mp4", media_factory.video_bytes("mp4"), "video/mp4")}
    data = {"question": "What is it?", "max_tokens": "2"}

    served = httpx.post(f"{secured_url}/v1/analyze", data=data, files=files, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    refused = httpx.post(f"{secured_url}/v1/analyze", data=data, files=files, headers={"Authorization": "Bearer nope"}, timeout=60)

    assert served.status_code == 200, served.text
    assert served.json()["frames"]["count"] == 8
    assert refused.status_code == 401


def test_the_api_description_when_on_needs_a_key_and_its_page_runs_only_its_cdn_scripts(secured_url):
    schema = httpx.get(f"{secured_url}/openapi.json", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    page = httpx.get(f"{secured_url}/docs", timeout=30)

    assert schema.status_code == 200 and "/v1/chat/completions" in schema.json()["paths"]
    assert page.status_code == 200 and "/secured/openapi.json" in page.text
    assert "script-src https://cdn.jsdelivr.net" in page.headers["content-security-policy"]


@pytest.mark.parametrize(("host", "status"), [("evil.example", 400), ("127.0.0.1.evil.example", 400), ("example.com", 400),
                                              ("media.example.com", 200), ("127.0.0.1:8000", 200)])
def test_only_the_allowed_hosts_are_answered(secured_url, host, status):
    response = httpx.get(f"{secured_url}/healthz", headers={"Host": host}, timeout=30)

    assert response.status_code == status
    if status == 400:
        assert response.json()["error"]["code"] == "host_not_allowed" and "allowed_hosts" in response.text


def test_health_answers_from_one_readiness_read_within_the_cache_window(secured_url):
    first, second = (httpx.get(f"{secured_url}/health", timeout=30) for _ in range(2))

    assert first.headers["x-readiness-read-at"] == second.headers["x-readiness-read-at"]  # readiness_cache_s: 30
    assert first.json() == second.json()


def test_the_memory_view_is_for_admin_keys_and_the_allowed_networks_only(secured_url):
    user = httpx.get(f"{secured_url}/v1/memory", headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    admin = httpx.get(f"{secured_url}/v1/memory", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60)
    chat = httpx.post(f"{secured_url}/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60)

    assert user.status_code == 403 and user.json()["error"]["code"] == "admin_only"  # no network listed: loopback too
    assert "node_ip" not in user.text
    assert admin.status_code == 200 and "cpu" in admin.json()["groups"]
    assert chat.status_code == 200  # an admin key is an API key too


@pytest.fixture(scope="module")
def keyless_url(http_port):
    url = deploy(
        {"gpu_group": {"enabled": False}, "cpu_group": {"num_cpus": 0.5},
         "auth": {"api_keys_env": None, "anonymous_networks": ["127.0.0.1/32"]}},
        http_port, name="keyless", route_prefix="/keyless",
    )
    yield url
    serve.delete("keyless")


def test_without_keys_only_the_anonymous_networks_are_answered(keyless_url):
    # 127.0.0.2 is this machine too, but not in the network this app lets call without a key.
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=60) as elsewhere:
        refused = elsewhere.post(f"{keyless_url}/v1/chat/completions", json=CHAT)
        probe = elsewhere.get(f"{keyless_url}/healthz")
    answered = httpx.post(f"{keyless_url}/v1/chat/completions", json=CHAT, timeout=60)

    assert refused.status_code == 401 and "127.0.0.2" in refused.json()["error"]["message"]
    assert "VIDEO_DETECTIVE_API_KEYS" in refused.json()["error"]["message"]
    assert probe.status_code == 200  # the probes need no key, from anywhere
    assert answered.status_code == 200


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({"Host": "attacker.example"}, 400, "host_not_allowed"),  # a DNS-rebinding page names its own host
        ({"Host": "localhost.attacker.example:8000"}, 400, "host_not_allowed"),
        ({"Host": "10.1.2.3"}, 400, "host_not_allowed"),  # an address outside auth.anonymous_networks
        ({"Origin": "https://attacker.example"}, 403, "cross_site_refused"),
        ({"Origin": "null"}, 403, "cross_site_refused"),
        ({"Sec-Fetch-Site": "cross-site"}, 403, "cross_site_refused"),
        ({"Host": "localhost"}, 200, None),
        ({"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-origin"}, 200, None),
    ],
)
def test_a_keyless_server_is_loopback_in_every_sense(keyless_url, headers, status, code):
    before = httpx.get(f"{keyless_url}/v1/files", timeout=30).json()["data"]
    listed = httpx.get(f"{keyless_url}/v1/files", headers=headers, timeout=30)
    # A cross-site form POST (no preflight) is refused before its body is read, and stores nothing.
    posted = httpx.post(f"{keyless_url}/v1/files", headers=headers, data={"purpose": "vision"},
                        files={"file": ("a.png", media_factory.image_bytes("PNG"), "image/png")}, timeout=30)

    assert listed.status_code == status, listed.text
    if code is not None:
        assert listed.json()["error"]["code"] == code and posted.json()["error"]["code"] == code
        assert posted.status_code == status
        assert httpx.get(f"{keyless_url}/v1/files", timeout=30).json()["data"] == before
    else:
        assert posted.status_code == 200, posted.text
        assert httpx.delete(f"{keyless_url}/v1/files/{posted.json()['id']}", timeout=30).status_code == 200
    # The probes answer whatever the Host: an orchestrator asks by the pod's address.
    assert httpx.get(f"{keyless_url}/healthz", headers=headers, timeout=30).status_code == 200
