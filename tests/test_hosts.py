import pytest

from deployments.edge.hosts import host_allowed, host_name

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("header", "name"), [("A.Example.com:8000", "a.example.com"), ("[::1]:8000", "::1"), ("[::1]", "::1"),
                                              ("localhost", "localhost"), ("", "")])
def test_the_host_is_read_without_its_port(header, name):
    assert host_name(header) == name


@pytest.mark.parametrize(
    ("header", "allowed"),
    [("localhost:8000", True), ("LOCALHOST", True), ("[::1]:8000", True), ("cdn.example.com", True), ("example.com", False),
     ("evil-example.com", False), ("localhost.evil.net", False), ("", False)],
)
def test_hosts_are_matched_exactly_or_as_subdomains_of_a_wildcard(header, allowed):
    assert host_allowed(header, ("localhost", "::1", "*.example.com")) is allowed


def test_the_memory_view_answers_admin_keys_and_the_listed_networks():
    from deployments.edge.auth import check_memory_view
    from deployments.errors import ApiError

    networks = ("127.0.0.0/8", "10.213.0.0/16")
    check_memory_view("Bearer admin", "203.0.113.9", ("admin",), networks)
    check_memory_view(None, "10.213.4.1", ("admin",), networks)
    check_memory_view(None, "127.0.0.1", (), networks)
    for authorization, host in (("Bearer user", "203.0.113.9"), (None, "::1"), (None, None), ("Bearer admin2", "example.com")):
        with pytest.raises(ApiError) as refused:
            check_memory_view(authorization, host, ("admin",), networks)
        assert refused.value.status_code == 403


@pytest.mark.parametrize(
    ("host", "origin", "fetch_site", "refused"),
    [
        ("127.0.0.1:8000", None, None, None),
        ("localhost:8000", "http://localhost:3000", "same-site", None),
        ("app.localhost", None, None, None),
        ("[::1]:8000", "http://[::1]:8000", "same-origin", None),
        ("10.213.0.5:8000", None, None, None),  # an address of a listed network (a cluster's bridge)
        ("attacker.example", None, None, "host_not_allowed"),
        ("10.9.9.9", None, None, "host_not_allowed"),
        ("127.0.0.1:8000", "https://attacker.example", None, "cross_site_refused"),
        ("127.0.0.1:8000", "null", None, "cross_site_refused"),
        ("127.0.0.1:8000", None, "cross-site", "cross_site_refused"),
    ],
)
def test_a_keyless_server_answers_loopback_hosts_and_same_site_requests_only(host, origin, fetch_site, refused):
    from deployments.edge.hosts import keyless_refusal

    outcome = keyless_refusal(host, origin, fetch_site, ("127.0.0.0/8", "::1/128", "10.213.0.0/16"))
    assert (outcome[3] if outcome else None) == refused
    if outcome:
        assert outcome[0] == (400 if refused == "host_not_allowed" else 403)
