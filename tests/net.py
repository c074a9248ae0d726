"""A free loopback port for a server a test starts (the Serve proxy, moto's S3 server, bin/serve)."""

import socket


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
