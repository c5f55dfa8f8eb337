"""The config checker: every bad key named with what is allowed; defaults filled in."""

from __future__ import annotations

import copy

import pytest

from midshift.firmware.core.config_fields import field, no_unknown_keys
from midshift.firmware.core.errors import ConfigError
from midshift.firmware.core.site_config import DeviceType, merge, validate

BOARD = {
    "board": {"name": "test board", "pin_factory": "mock"},
    "pins": {"uplink_led": 17},
    "serial": {"scanner": "/dev/ttyACM0"},
    "interfaces": {"primary": "eth0", "secondary": "wwan0"},
    "journal": {"path": "/var/lib/midshift/journal", "segment_size": 65536, "segment_count": 8},
}
SITE = {
    "gateway": {"id": "gw-01", "site": "store-7", "key_file": "/etc/midshift/gw.key"},
    "devices": {"scan1": {"type": "scanner", "port": "scanner", "baudrate": 9600},
                "plc1": {"type": "modbus", "host": "127.0.0.1"}},
    "uplinks": {"lte": {"broker": "mqtts://ledger.example:8883", "interface": "secondary",
                        "priority": 20, "metered": True},
                "eth": {"broker": "mqtt://127.0.0.1", "interface": "primary", "priority": 10}},
}


def scanner_check(name, table, path):
    no_unknown_keys(table, path, ("port", "baudrate"))
    return {"port": field(table, "port", path, str),
            "baudrate": field(table, "baudrate", path, int, choices=(9600, 19200))}


def modbus_check(name, table, path):
    no_unknown_keys(table, path, ("host", "port"))
    return {"host": field(table, "host", path, str), "port": field(table, "port", path, int,
                                                                   default=502)}


def no_check(name, table, path):
    return table


CHECKS = {"scanner": DeviceType("txn", scanner_check),
          "modbus": DeviceType("telemetry", modbus_check)}
# The types a build has come from the runtime (the core keeps no list of them).
ALL_TYPES = {**CHECKS, "scale": DeviceType("txn", no_check),
             "opcua": DeviceType("telemetry", no_check)}


def doc(**changes):
    d = merge(copy.deepcopy(BOARD), copy.deepcopy(SITE))
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        t = d
        for p in parents:
            t = t[p]
        if value is DELETE:
            del t[key]
        else:
            t[key] = value
    return d


DELETE = object()


def test_a_good_config_is_merged_normalized_and_ordered():
    cfg = validate(doc(), CHECKS)
    assert (cfg.gateway_id, cfg.site, cfg.board["pin_factory"]) == ("gw-01", "store-7", "mock")
    scan = cfg.device("scan1")
    assert (scan.cls, scan.settings["port"], scan.settings["enabled"]) == ("txn", "/dev/ttyACM0", True)
    plc = cfg.device("plc1")
    assert (plc.cls, plc.settings["port"]) == ("telemetry", 502)
    assert [u.name for u in cfg.uplinks] == ["eth", "lte"]
    eth, lte = cfg.uplinks
    assert (eth.host, eth.port, eth.tls, eth.interface) == ("127.0.0.1", 1883, False, "eth0")
    assert (lte.port, lte.tls, lte.metered, lte.interface) == (8883, True, True, "wwan0")
    assert (cfg.journal.segment_size, cfg.journal.max_body) == (65536, 4096)


def test_the_site_overrides_the_board_key_by_key():
    merged = merge(BOARD, {"journal": {"segment_count": 4}})
    assert merged["journal"]["segment_count"] == 4
    assert merged["journal"]["segment_size"] == 65536


@pytest.mark.parametrize("changes, key, words", [
    ({"gateway__id": "gw 01"}, "gateway.id", "letters"),
    ({"gateway": DELETE}, "gateway", "required"),
    ({"gateway__colour": "red"}, "gateway.colour", "command_key_file, id, key_file, site"),
    ({"bogus": {}}, "(top level).bogus", "devices"),
    ({"board__pin_factory": "wiringpi"}, "board.pin_factory", "lgpio, rpigpio"),
    ({"journal__segment_size": 5000}, "journal.segment_size", "multiple of 512"),
    ({"journal__segment_count": 1}, "journal.segment_count", "2 to 65536"),
    ({"journal__max_body": 70000}, "journal.max_body", "segment_size - 36"),
    ({"journal__path": 7}, "journal.path", "a string"),
    ({"devices": {}}, "devices", "one [devices.NAME]"),
    ({"devices__scan1__type": "printer"}, "devices.scan1.type", "modbus, opcua, scale, scanner"),
    ({"devices__scan1__class": "gold"}, "devices.scan1.class", "txn, telemetry"),
    ({"devices__scan1__baudrate": 9601}, "devices.scan1.baudrate", "9600, 19200"),
    ({"devices__scan1__baudrate": True}, "devices.scan1.baudrate", None),
    ({"devices__scan1__parity": "E"}, "devices.scan1.parity", "baudrate, port"),
    ({"devices__scan1__enabled": "yes"}, "devices.scan1.enabled", None),
    ({"uplinks__eth__broker": "http://x"}, "uplinks.eth.broker", "mqtt://HOST:PORT"),
    ({"uplinks__eth__broker": "mqtt://x:99999"}, "uplinks.eth.broker", "1 to 65535"),
    ({"uplinks__eth__broker": "mqtt://x:abc"}, "uplinks.eth.broker", "mqtt://HOST:PORT"),
    ({"uplinks__eth__priority": -1}, "uplinks.eth.priority", "0 to 1000"),
    ({"uplinks__eth__qos": 2}, "uplinks.eth.qos", "broker"),
    ({"metrics": {"bind": "9108"}}, "metrics.bind", "HOST:PORT, e.g."),
    ({"metrics": {"bind": "::1:9108"}}, "metrics.bind", "brackets"),
    ({"metrics": {"bind": "h:99999"}}, "metrics.bind", "0 to 65535"),
    ({"metrics": {"bind": 9108}}, "metrics.bind", "HOST:PORT"),
    ({"metrics": {"port": 9108}}, "metrics.port", "bind"),
    ({"status": {"no_ack_s": 0}}, "status.no_ack_s", "1 to 86400"),
    ({"status": {"device_down_s": -1}}, "status.device_down_s", "stale_s"),
])
def test_each_bad_value_names_its_key_and_what_is_allowed(changes, key, words):
    with pytest.raises(ConfigError) as err:
        validate(doc(**changes), ALL_TYPES)
    assert err.value.key == key, str(err.value)
    text = str(err.value)
    assert text.startswith(key + ": ")
    if words:
        assert words in text


def test_a_device_type_without_a_driver_on_this_build_is_refused():
    with pytest.raises(ConfigError) as err:
        validate(doc(devices__plc1__type="opcua"), CHECKS)
    assert err.value.key == "devices.plc1.type" and "modbus, scanner" in str(err.value)


def test_the_loader_can_name_the_file():
    e = ConfigError("devices.scale.baudrate", "9601 is not allowed", "1200, 9600").in_file("site.toml")
    assert str(e) == "site.toml: devices.scale.baudrate: 9601 is not allowed; allowed: 1200, 9600"


def test_uplinks_need_the_gateway_key():
    with pytest.raises(ConfigError) as err:
        validate(doc(gateway__key_file=DELETE), CHECKS)
    assert err.value.key == "gateway.key_file"


@pytest.mark.parametrize("changes, key", [
    ({"uplinks__eth__ca": "/ca.crt"}, "uplinks.eth.ca"),  # TLS files on a plain URL
    ({"uplinks__lte__cert": "/gw.crt"}, "uplinks.lte.key"),  # a cert without its key
    ({"uplinks__lte__drain_rate": -5}, "uplinks.lte.drain_rate"),
])
def test_uplink_tls_and_rate_options_are_checked(changes, key):
    with pytest.raises(ConfigError) as err:
        validate(doc(**changes), CHECKS)
    assert err.value.key == key, str(err.value)


@pytest.mark.parametrize("changes, key, words", [
    ({"devices__plc1__stale_s": float("inf")}, "devices.plc1.stale_s", "inf is not a finite"),
    ({"status": {"period_s": float("nan")}}, "status.period_s", "nan is not a finite"),
    ({"journal__window_ms": float("-inf")}, "journal.window_ms", "-inf is not a finite"),
    ({"devices__plc1__registers": [{"scale": 1.0}, {"scale": float("nan")}]},
     "devices.plc1.registers[1].scale", "nan is not a finite"),
])
def test_inf_and_nan_are_refused_wherever_they_are(changes, key, words):
    """TOML reads inf and nan as floats: a stale_s of inf would never go stale."""
    with pytest.raises(ConfigError) as err:
        validate(doc(**changes), ALL_TYPES)
    assert err.value.key == key, str(err.value)
    assert words in str(err.value)


def test_a_number_field_refuses_inf_and_nan_itself():
    """Drivers read their tables with field(): the same rule when called directly."""
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ConfigError) as err:
            field({"stale_s": bad}, "stale_s", "devices.s", float, check=lambda v: v > 0)
        assert err.value.key == "devices.s.stale_s" and "not a finite number" in str(err.value)


def test_two_devices_on_one_serial_line_are_refused():
    second = {"type": "scanner", "port": "/dev/ttyACM0", "baudrate": 19200}
    with pytest.raises(ConfigError) as err:
        validate(doc(devices__scan2=second), CHECKS)
    assert err.value.key == "devices.scan2.port"
    assert "'/dev/ttyACM0' is also devices.scan1's" in str(err.value)
    assert "one device per serial line" in str(err.value)


def test_a_disabled_device_may_name_a_busy_line_and_tcp_ports_share_nothing():
    spare = {"type": "scanner", "port": "scanner", "baudrate": 9600, "enabled": False}
    plc2 = {"type": "modbus", "host": "127.0.0.1"}  # same host, same TCP port 502
    cfg = validate(doc(devices__spare=spare, devices__plc2=plc2), CHECKS)
    assert [d.name for d in cfg.devices] == ["scan1", "plc1", "spare", "plc2"]


def unit_check(name, table, path):
    """A multi-drop unit as a runtime's type says it (Modbus RTU's ``multidrop``)."""
    return {"port": table["port"], "multidrop": {"line": table["line"],
                                                 "address": table["unit"],
                                                 "address_key": "unit"}}


UNITS = {**CHECKS, "unit": DeviceType("telemetry", unit_check)}


@pytest.mark.parametrize("second, key, words", [
    ({"line": "19200 8E1", "unit": 2}, None, None),
    ({"line": "19200 8E1", "unit": 1}, "devices.u2.unit", "1 is also devices.u1's"),
    ({"line": "9600 8E1", "unit": 2}, "devices.u2.port", "at 19200 8E1, not 9600 8E1"),
])
def test_units_of_one_bus_share_a_line_with_one_setting_and_own_addresses(second, key, words):
    u1 = {"type": "unit", "port": "/dev/rs485", "line": "19200 8E1", "unit": 1}
    u2 = {"type": "unit", "port": "/dev/rs485", **second}
    if key is None:
        cfg = validate(doc(devices__u1=u1, devices__u2=u2), UNITS)
        assert [d.name for d in cfg.devices][-2:] == ["u1", "u2"]
        return
    with pytest.raises(ConfigError) as err:
        validate(doc(devices__u1=u1, devices__u2=u2), UNITS)
    assert err.value.key == key and words in str(err.value)


def test_a_bus_unit_and_a_plain_device_never_share_a_line():
    unit = {"type": "unit", "port": "/dev/ttyACM0", "line": "19200 8E1", "unit": 1}
    with pytest.raises(ConfigError) as err:
        validate(doc(devices__u1=unit), UNITS)
    assert err.value.key == "devices.u1.port" and "also devices.scan1's" in str(err.value)


def test_two_uplinks_with_one_priority_are_refused():
    """The later one in the file is named (lte comes first in SITE)."""
    with pytest.raises(ConfigError) as err:
        validate(doc(uplinks__eth__priority=20), CHECKS)
    assert err.value.key == "uplinks.eth.priority"
    assert str(err.value).startswith("uplinks.eth.priority: 20 is also uplinks.lte's")


def test_two_uplinks_without_a_priority_are_refused_too():
    """Both default to 100: which one is tried first would be an accident of file order."""
    with pytest.raises(ConfigError) as err:
        validate(doc(uplinks__lte__priority=DELETE, uplinks__eth__priority=DELETE), CHECKS)
    assert err.value.key == "uplinks.eth.priority", str(err.value)
    assert "100 is also uplinks.lte's" in str(err.value)


def test_metrics_are_off_unless_bound_and_the_status_limits_default():
    cfg = validate(doc(), CHECKS)
    assert (cfg.metrics_bind, cfg.no_ack_s, cfg.device_down_s) == (None, 30.0, 10.0)
    cfg = validate(doc(metrics={"bind": "[::1]:9108"}, status={"no_ack_s": 45}), CHECKS)
    assert (cfg.metrics_bind, cfg.no_ack_s) == (("::1", 9108), 45.0)
