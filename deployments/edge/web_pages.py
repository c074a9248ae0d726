"""The static files of the page at ``/`` and the memory view at ``/ui/memory``, with their security headers.

No build step and no external resource: the files in ``deployments/edge/web/`` are served as they are, from a
fixed list (a name not on it is a 404; no path ever reaches the file system). The Content-Security-Policy
lets the pages run their own scripts and styles only, and talk to this server only; answer text is set with
``textContent`` in the scripts, never as HTML.
"""

import functools
import html
import pathlib

from starlette.responses import Response

WEB_DIR = pathlib.Path(__file__).parent / "web"

PAGES = {"ask": "index.html", "memory": "memory.html"}
STATIC_FILES = {
    "api.js": "text/javascript; charset=utf-8",
    "ask.js": "text/javascript; charset=utf-8",
    "memory.js": "text/javascript; charset=utf-8",
    "jobs.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

# img-src data: for the frame thumbnails the server sends, blob: for the images a person chose to send;
# media-src blob: for the video a person chose, played beside its job's timeline.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; media-src blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


@functools.lru_cache(maxsize=None)
def _read(name: str) -> bytes:
    """A page file's bytes, read once per ingress process (names come from the fixed lists above)."""
    return (WEB_DIR / name).read_bytes()


def page_response(page: str, root_path: str) -> Response:
    """The page, with links and API calls under the app's route prefix ``root_path`` ("" at the root)."""
    root = html.escape(root_path.rstrip("/"), quote=True)
    body = _read(PAGES[page]).decode("utf-8").replace("{root}", root)
    return Response(body, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)


def static_response(name: str) -> Response | None:
    """The named static file, or ``None`` when it is not one of the page's files."""
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        return None
    return Response(_read(name), media_type=media_type, headers=SECURITY_HEADERS)
