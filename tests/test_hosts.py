import pytest

from deployments.edge.hosts import host_allowed, host_name


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
