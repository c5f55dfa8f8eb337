"""Broker URLs, parsed once for the agent, the MicroPython node and the host tools.

``mqtt://HOST[:PORT]`` is plain MQTT (port 1883 when left out), ``mqtts://HOST[:PORT]``
MQTT over TLS (8883). Plain string parsing, no ``urllib`` (MicroPython has none); no
paths, users or IPv6 literals: a broker is a host name or an IPv4 address and a port.
Anything else raises ``BrokerUrlError``, a ``ValueError`` whose one line says what is
wrong and what is expected; the site config turns it into a ``ConfigError`` naming its key.
"""

PORTS = {"mqtt://": 1883, "mqtts://": 8883}
URL_FORMS = "mqtt://HOST:PORT or mqtts://HOST:PORT (PORT 1 to 65535; 1883 and 8883 if left out)"
PLAIN_URL_FORMS = "mqtt://HOST:PORT (PORT 1 to 65535; 1883 if left out)"


class BrokerUrlError(ValueError):
    """``PROBLEM; expected FORM``; ``problem`` (naming the URL) and ``expected`` apart."""

    def __init__(self, problem, expected):
        self.problem = problem
        self.expected = expected
        super().__init__("%s; expected %s" % (problem, expected))


def parse_broker_url(url, tls=True):
    """``(host, port, tls)`` of ``url``; ``tls=False`` for a client that speaks only
    plain MQTT, so that ``mqtts://`` is refused instead of sent in the clear."""
    expected = URL_FORMS if tls else PLAIN_URL_FORMS
    if url.startswith("mqtt://"):
        scheme = "mqtt://"
    elif url.startswith("mqtts://"):
        if not tls:
            raise BrokerUrlError("%r: mqtts:// (TLS) is not supported here" % url, expected)
        scheme = "mqtts://"
    else:
        raise BrokerUrlError("%r has no %s scheme" % (
            url, "mqtt:// or mqtts://" if tls else "mqtt://"), expected)
    host, _, port = url[len(scheme):].partition(":")
    if not host or "/" in host:
        raise BrokerUrlError("%r has no host" % url, expected)
    if not port:
        return host, PORTS[scheme], scheme == "mqtts://"
    try:
        n = int(port)
    except ValueError:
        raise BrokerUrlError("port %r is not a number" % port, expected)
    if not 0 < n < 65536:
        raise BrokerUrlError("port %d is out of range" % n, expected)
    return host, n, scheme == "mqtts://"
