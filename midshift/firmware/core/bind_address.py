"""``HOST:PORT`` where a server listens (the metrics endpoint): one parser for the agent's
``[metrics] bind`` and the ledger's ``--metrics``. An IPv6 host goes in brackets
(``[::1]:9108``); port 0 asks the kernel for a free one (tests)."""

BIND_FORM = 'HOST:PORT, e.g. "127.0.0.1:9108" or "[::1]:9108" (port 0 to 65535)'


def parse_bind(text):
    """(host, port) from ``HOST:PORT``; ValueError saying what is wrong."""
    if not isinstance(text, str) or ":" not in text:
        raise ValueError("%r is not HOST:PORT" % (text,))
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("%r: an IPv6 host goes in brackets" % (text,))
    if not host:
        raise ValueError("%r has no host" % (text,))
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("%r: port %r is not 0 to 65535" % (text, port))
    return host, int(port)


def is_loopback(host):
    """True for an address only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    return host == "localhost" or host == "::1" or host.startswith("127.")
