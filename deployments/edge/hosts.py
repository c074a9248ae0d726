"""The ``Host`` check (``ingress.allowed_hosts``): a request naming a host the operator did not list is refused.

A page on ``evil.example`` whose DNS name is rebound to 127.0.0.1 reaches a server on loopback from the
victim's browser, but its requests still say ``Host: evil.example``; listing the names the server is
reached by closes that door. Entries are host names or addresses (compared without the port, case
aside), or ``*.example.com`` for any subdomain of ``example.com``.
"""


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
