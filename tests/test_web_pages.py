"""The page's static files and thumbnails, without a server."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from deployments.edge.web_pages import CONTENT_SECURITY_POLICY, STATIC_FILES, WEB_DIR, page_response, static_response
from models.media.thumbnails import frame_thumbnails

pytestmark = pytest.mark.unit


def test_every_static_file_and_page_exists_and_only_listed_names_are_served():
    for name in STATIC_FILES:
        assert (WEB_DIR / name).is_file()
    assert static_response("index.html") is None  # pages have routes of their own
    assert static_response("../ingress.py") is None  # a real file beside the page's folder
    response = static_response("ask.js")
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"


def test_a_page_links_under_its_route_prefix_and_escapes_it():
    at_root = page_response("ask", "").body.decode()
    assert 'src="/ui/static/ask.js"' in at_root and 'content=""' in at_root
    prefixed = page_response("memory", "/vd/").body.decode()
    assert 'src="/vd/ui/static/memory.js"' in prefixed and 'href="/vd/"' in prefixed
    hostile = page_response("ask", '/a"><script>').body.decode()
    assert '"><script>' not in hostile and "&quot;&gt;&lt;script&gt;" in hostile
    assert "{root}" not in hostile


def test_no_page_or_script_writes_html_from_data():
    for name in [*STATIC_FILES, "index.html", "memory.html"]:
        text = (WEB_DIR / name).read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, f"{name} uses {sink}"
    assert "<script>" not in (WEB_DIR / "index.html").read_text()


def test_thumbnails_are_small_jpegs_of_each_frame_in_its_aspect():
    frames = np.zeros((3, 120, 200, 3), dtype=np.uint8)
    frames[1, :, :, 0] = 255  # the second frame is red

    urls = frame_thumbnails(frames)

    assert len(urls) == 3
    images = [Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) for url in urls]
    assert all(image.format == "JPEG" and image.size == (160, 96) for image in images)
    assert images[1].getpixel((80, 48))[0] > 240 and images[0].getpixel((80, 48))[0] < 15
    small = frame_thumbnails(np.zeros((1, 40, 30, 3), dtype=np.uint8))
    assert Image.open(io.BytesIO(base64.b64decode(small[0].split(",", 1)[1]))).size == (30, 40)  # never enlarged
