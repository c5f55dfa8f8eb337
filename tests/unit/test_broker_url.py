"""The one broker-URL parser: both schemes, default ports, and one line for every bad URL."""

from midshift.firmware.core.broker_url import BrokerUrlError, parse_broker_url


def _error(url, tls=True):
    try:
        parse_broker_url(url, tls)
    except BrokerUrlError as exc:
        assert isinstance(exc, ValueError)
        return str(exc)
    raise AssertionError(repr(url) + " was accepted")


def test_both_schemes_with_and_without_a_port():
    assert parse_broker_url("mqtt://127.0.0.1:1884") == ("127.0.0.1", 1884, False)
    assert parse_broker_url("mqtt://broker") == ("broker", 1883, False)
    assert parse_broker_url("mqtt://broker:") == ("broker", 1883, False)
    assert parse_broker_url("mqtts://ledger.example:8884") == ("ledger.example", 8884, True)
    assert parse_broker_url("mqtts://ledger.example") == ("ledger.example", 8883, True)
    assert parse_broker_url("mqtt://broker", tls=False) == ("broker", 1883, False)


def test_each_bad_url_says_what_is_wrong_and_the_expected_form_in_one_line():
    cases = [
        ("tcp://x:1", "'tcp://x:1' has no mqtt:// or mqtts:// scheme"),
        ("mqtt://", "'mqtt://' has no host"),
        ("mqtt://:1883", "'mqtt://:1883' has no host"),
        ("mqtt://h/x:1", "'mqtt://h/x:1' has no host"),
        ("mqtt://h:port", "port 'port' is not a number"),
        ("mqtt://h:1883/", "port '1883/' is not a number"),
        ("mqtt://h:0", "port 0 is out of range"),
        ("mqtts://h:65536", "port 65536 is out of range"),
    ]
    for url, problem in cases:
        text = _error(url)
        assert text.startswith(problem + "; expected mqtt://HOST:PORT or mqtts://HOST:PORT"), text
        assert "1 to 65535" in text and "\n" not in text


def test_a_plain_only_client_refuses_tls_rather_than_send_in_the_clear():
    text = _error("mqtts://h:8883", tls=False)
    assert text.startswith("'mqtts://h:8883': mqtts:// (TLS) is not supported here")
    assert "expected mqtt://HOST:PORT (" in text
    assert _error("tcp://h", tls=False).startswith("'tcp://h' has no mqtt:// scheme")
