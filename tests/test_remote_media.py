"""Remote media URLs: refused unless under an allowed prefix; fetched over real HTTP when allowed."""

import http.server
import threading

import media_factory
import pytest

from models.media import inputs as media
from models.media.remote import RemoteUrlRefusedError, fetch_media, is_allowed

pytestmark = pytest.mark.unit

ALLOW = ("https://media.example.com/videos/",)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://media.example.com/videos/a.mp4", True),
        ("https://MEDIA.example.com:443/videos/sub/a.mp4", True),
        ("https://media.example.com/videos", False),  # the folder itself is not under it
        ("https://media.example.com/videos-private/a.mp4", False),
        ("https://media.example.com/videos/../secrets/a.mp4", False),
        ("https://media.example.com/videos/%2e%2e/secrets/a.mp4", False),
        ("http://media.example.com/videos/a.mp4", False),
        ("https://media.example.com:8443/videos/a.mp4", False),
        ("https://media.example.com.evil.net/videos/a.mp4", False),
        ("https://media.example.com@evil.net/videos/a.mp4", False),
        ("https://user:pw@media.example.com/videos/a.mp4", False),
        ("file:///videos/a.mp4", False),
        ("http://169.254.169.254/latest/meta-data/", False),
        ("https://media.example.com/videos/..;/secrets/a.mp4", False),  # Tomcat and others read ..;/ as ../
        ("https://media.example.com/videos/..%5csecrets/a.mp4", False),  # and a backslash as a slash
        ("https://media.example.com/videos/..\\secrets/a.mp4", False),
        ("https://media.exa\tmple.com/videos/a.mp4", False),  # a tab in the host (was a 500 when fetched)
        ("https://media.example.com/videos/a%0d%0aX-Injected:%201.mp4", False),
        ("https://media.example.com/videos/my%20clip.mp4", True),  # an encoded space is a name
    ],
)
def test_only_urls_under_an_allowed_prefix_pass(url, allowed):
    assert is_allowed(url, ALLOW) is allowed


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
    requested: list[str] = []

    def do_GET(self):  # noqa: N802 - the stdlib's name
        self.requested.append(self.path)
        status, headers, body = self.routes.get(self.path, (404, {}, b""))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    video = media_factory.video_bytes("mp4")
    _Handler.routes = {
        "/media/clip.mp4": (200, {"Content-Type": "video/mp4"}, video),
        "/media/page.html": (200, {"Content-Type": "text/html"}, b"<html></html>"),
        "/media/big.mp4": (200, {"Content-Type": "video/mp4"}, b"\0" * 5000),
        "/media/moved.mp4": (302, {"Location": "http://127.0.0.1:1/elsewhere.mp4"}, b""),
    }
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", video
    httpd.shutdown()


def _fetch(url: str, prefix: str, max_bytes: int = 10**6) -> media.DataUrl:
    return fetch_media(url, allow_list=(prefix,), allowed_mime_types=media.VIDEO_MIME_TYPES, max_bytes=max_bytes, timeout_s=5)


def test_an_allowed_url_is_fetched(server):
    base, video = server

    fetched = _fetch(f"{base}/media/clip.mp4", f"{base}/media/")

    assert fetched == media.DataUrl(mime_type="video/mp4", payload=video)


def test_a_url_outside_the_allow_list_is_refused_before_any_connection(server):
    base, _ = server

    with pytest.raises(RemoteUrlRefusedError, match="not under an allowed prefix"):
        _fetch(f"{base}/other/clip.mp4", f"{base}/media/")


@pytest.mark.parametrize(
    ("path", "error", "words"),
    [
        ("/media/page.html", media.UnsupportedMediaTypeError, "'text/html'"),
        ("/media/big.mp4", media.MediaTooLargeError, "5000 bytes; the limit is 1000"),
        ("/media/moved.mp4", media.MediaDecodeError, "redirects are not followed"),
        ("/media/missing.mp4", media.MediaDecodeError, "HTTP 404"),
    ],
)
def test_an_allowed_url_still_has_to_be_a_small_enough_video_without_redirects(server, path, error, words):
    base, _ = server

    with pytest.raises(error, match=words):
        _fetch(f"{base}{path}", f"{base}/media/", max_bytes=1000)


def test_the_url_fetched_is_the_normalised_one_that_was_checked(server):
    base, video = server
    _Handler.requested.clear()

    fetched = _fetch(f"{base}/media/sub/../clip.mp4", f"{base}/media/")

    assert fetched.payload == video
    assert _Handler.requested == ["/media/clip.mp4"]  # not /media/sub/../clip.mp4, which a server may read otherwise
