"""The ``Host`` check (``ingress.allowed_hosts``): a request naming a host the operator did not list is refused.

A page on ``evil.example`` whose DNS name is rebound to 127.0.0.1 reaches a server on loopback from the
victim's browser, but its requests still say ``Host: evil.example``; listing the names the server is
reached by closes that door. Entries are host names or addresses (compared without the port, case
aside), or ``*.example.com`` for any subdomain of ``example.com``.

A server with no API keys (:func:`keyless_refusal`) is loopback in every sense, whatever ``allowed_hosts`` says:
its ``Host`` must be a loopback name (``localhost``) or an address in ``auth.anonymous_networks`` (a rebinding
page can only name its own host, never an address), and a request a browser sends for another site (an
``Origin`` that is not such a host, ``Origin: null``, or ``Sec-Fetch-Site: cross-site``) is refused: any page
could otherwise POST a form to ``/v1/files`` or ``/v1/analyze`` on the victim's loopback.
"""

import ipaddress
import urllib.parse


def host_name(header: str) -> str:
    """The host of a ``Host`` header, without its port: ``[::1]:8000`` -> ``::1``, ``A.example:80`` -> ``a.example``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def host_allowed(header: str, allowed: tuple[str, ...]) -> bool:
    host = host_name(header)
    if not host:
        return False
    for entry in allowed:
        entry = entry.strip().lower()
        if entry.startswith("*.") and host.endswith(entry[1:]) and host != entry[2:]:
            return True
        if host == entry:
            return True
    return False


def local_host(host: str, networks: tuple[str, ...]) -> bool:
    """``localhost`` (or a name under ``.localhost``, which resolves to loopback), or an address in ``networks``."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(network) for network in networks)


def keyless_refusal(host_header: str, origin: str | None, fetch_site: str | None,
                    networks: tuple[str, ...]) -> tuple[int, str, str, str] | None:
    """Why a keyless server refuses this request head, as (status, message, param, code); ``None`` to answer it."""
    if not local_host(host_name(host_header), networks):
        return (400, f"Host {host_header[:100]!r}: this server has no API keys, so it answers only to localhost and "
                "the addresses of auth.anonymous_networks (a page that rebinds its DNS name to this server names "
                "its own host); call it by address, or configure API keys", "host", "host_not_allowed")
    if fetch_site is not None and fetch_site.strip().lower() == "cross-site":
        return (403, "Sec-Fetch-Site: cross-site: a page of another site sent this request; a server with no API keys "
                "takes requests only from its own pages and from programs", "sec-fetch-site", "cross_site_refused")
    if origin is not None:
        origin_host = urllib.parse.urlsplit(origin.strip()).hostname if origin.strip() != "null" else None
        if origin_host is None or not local_host(origin_host.lower(), networks):
            return (403, f"Origin {origin[:100]!r}: a page of another site sent this request; a server with no API keys "
                    "takes requests only from its own pages and from programs", "origin", "cross_site_refused")
    return None
