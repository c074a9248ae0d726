"""Serve's proxy hints a client may not send (:mod:`deployments.edge.proxy_headers`), named exactly as Ray 2.60's
proxy reads them."""

import pytest
from ray.serve._private.constants import SERVE_HTTP_REQUEST_DISCONNECT_DISABLED_HEADER, SERVE_HTTP_REQUEST_TIMEOUT_S_HEADER

from deployments.edge.proxy_headers import PROXY_HINT_HEADERS, proxy_hint_in

pytestmark = pytest.mark.unit


def test_the_refused_headers_are_the_ones_rays_proxy_obeys():
    assert set(PROXY_HINT_HEADERS) == {SERVE_HTTP_REQUEST_TIMEOUT_S_HEADER, SERVE_HTTP_REQUEST_DISCONNECT_DISABLED_HEADER}


def test_a_request_with_either_hint_is_named_and_one_without_is_not():
    assert proxy_hint_in(["host", "x-request-timeout-seconds"]) == "x-request-timeout-seconds"
    assert proxy_hint_in(["x-request-disconnect-disabled", "content-type"]) == "x-request-disconnect-disabled"
    assert proxy_hint_in(["host", "x-request-id", "x-request-timeout"]) is None
