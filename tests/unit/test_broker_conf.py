"""The generated broker config binds client ids to certificates only when asked: two
uplinks of one gateway reaching the same broker would otherwise share one id."""

from pathlib import Path

from midshift.host_tools.provision.acl import render_broker_conf


def _conf(**kw: object) -> list[str]:
    d = Path("/site")
    return render_broker_conf(d, d / "broker/server.crt", d / "broker/server.key",
                              **kw).splitlines()  # type: ignore[arg-type]


def test_client_ids_are_bound_to_the_certificate_only_when_asked() -> None:
    assert "use_username_as_clientid true" not in _conf()
    bound = _conf(bind_client_ids=True)
    gateways = bound.index("listener 8883")
    ledger = bound.index("listener 8884 127.0.0.1")
    assert gateways < bound.index("use_username_as_clientid true") < ledger


def test_no_anonymous_listener_unless_asked() -> None:
    assert "allow_anonymous false" in _conf()
    assert not any(line.startswith("listener 1883") for line in _conf())
    assert "listener 1883 127.0.0.1" in _conf(anonymous_port=1883)
