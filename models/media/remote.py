"""Fetch an image or video named by URL, only from prefixes an operator allowed (no SSRF by default).

With an empty allow-list (the default) only data URLs work. An allowed URL must match a prefix's
scheme, host and port exactly and start with its path at a segment boundary; user info in the URL
is refused, and so are control characters, ``\\`` and ``;`` anywhere in it, percent-encoded too (some
servers read ``..;/`` or ``..\\`` as ``../``), and whitespace as sent; the URL fetched is the normalised one that was
checked, never the one as sent; redirects are not followed (they could leave the allowed hosts); the
body is read up to a byte limit and its ``Content-Type`` must be an accepted media type.
"""

import posixpath
import re
import urllib.error
import urllib.parse
import urllib.request

from models.media.inputs import DataUrl, InvalidDataUrlError, MediaDecodeError, MediaTooLargeError, UnsupportedMediaTypeError

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Control characters, a backslash or a semicolon, as sent or percent-encoded (servers disagree on what they
# mean in a path), and whitespace as sent (a URL encodes it).
_REFUSED_ENCODED = re.compile(r"[\x00-\x1f\x7f\\;]")
_REFUSED_AS_SENT = re.compile(r"[\x00-\x20\x7f\\;]")
_READ_CHUNK_BYTES = 1 << 16


class RemoteUrlRefusedError(InvalidDataUrlError):
    """The URL is not under any allowed prefix."""


def allowed_url(url: str, allow_list: tuple[str, ...]) -> str | None:
    """The normalised URL to fetch when ``url`` is under an allowed prefix; ``None`` when it is not."""
    target = _normalised(url)
    if target is None:
        return None
    for prefix in allow_list:
        allowed = _normalised(prefix)
        if allowed is None or allowed[:3] != target[:3]:
            continue
        allowed_path, target_path = allowed[3], target[3]
        if target_path == allowed_path or target_path.startswith(allowed_path.rstrip("/") + "/"):
            return _unsplit(target, urllib.parse.urlsplit(url).query)
    return None


def is_allowed(url: str, allow_list: tuple[str, ...]) -> bool:
    return allowed_url(url, allow_list) is not None


def fetch_media(
    url: str, *, allow_list: tuple[str, ...], allowed_mime_types: frozenset[str], max_bytes: int, timeout_s: float
) -> DataUrl:
    checked = allowed_url(url, allow_list)
    if checked is None:
        raise RemoteUrlRefusedError(
            f"The URL {url[:100]!r} is not under an allowed prefix; this server fetches only from "
            "media.remote_url_allow_list (embed the file as a data URL instead)"
        )
    url = checked  # what was checked is what is fetched
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, method="GET"), timeout=timeout_s) as response:
            mime_type = response.headers.get_content_type().lower()
            if mime_type not in allowed_mime_types:
                raise UnsupportedMediaTypeError(
                    f"{url[:100]!r} is {mime_type!r}; use one of {sorted(allowed_mime_types)}"
                )
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise MediaTooLargeError(f"{url[:100]!r} is {int(declared)} bytes; the limit is {max_bytes} bytes")
            payload = bytearray()
            while chunk := response.read(_READ_CHUNK_BYTES):
                payload += chunk
                if len(payload) > max_bytes:
                    raise MediaTooLargeError(f"{url[:100]!r} is over the {max_bytes}-byte limit")
    except urllib.error.HTTPError as error:
        raise MediaDecodeError(f"Fetching {url[:100]!r} failed with HTTP {error.code}") from error
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        raise MediaDecodeError(f"Fetching {url[:100]!r} failed: {error}") from error
    if not payload:
        raise MediaDecodeError(f"{url[:100]!r} is empty")
    return DataUrl(mime_type=mime_type, payload=bytes(payload))


def _normalised(url: str) -> tuple[str, str, int, str] | None:
    if _REFUSED_AS_SENT.search(url) or _REFUSED_ENCODED.search(urllib.parse.unquote(url)):
        return None
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    has_user_info = parts.username is not None or parts.password is not None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or has_user_info:
        return None
    path = urllib.parse.unquote(parts.path) or "/"
    normalised_path = posixpath.normpath(path)  # "/videos/../secret" is "/secret"
    if path.endswith("/") and not normalised_path.endswith("/"):
        normalised_path += "/"
    return parts.scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[parts.scheme], normalised_path


def _unsplit(normalised: tuple[str, str, int, str], query: str) -> str:
    scheme, host, port, path = normalised
    netloc = host if port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    return urllib.parse.urlunsplit((scheme, netloc, urllib.parse.quote(path, safe="/-._~!$&'()*+,=:@"), query, ""))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise MediaDecodeError(f"{req.full_url[:100]!r} redirects (HTTP {code}); redirects are not followed")
