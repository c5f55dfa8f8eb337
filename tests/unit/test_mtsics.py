"""MT-SICS reply parsing, bytes in and replies out: each reply the driver relies on, byte
for byte, and line splitting. Arbitrary bytes: test_mtsics_props.py (hypothesis)."""

from midshift.firmware.core.errors import ConfigError
from midshift.firmware.core.mtsics import MAX_LINE, MtSicsReader, command, parse_reply
from tests.unit.portable import cases, raises

PORTABLE = True  # tests/micropython runs these cases under MicroPython too


@cases(("line", "status", "weight", "text", "unit"), [
    (b"S S     123.45 g", "S", 123.45, "123.45", "g"),
    (b"S D     123.47 g", "D", 123.47, "123.47", "g"),
    (b"S S    -100.00 g", "S", -100.0, "-100.00", "g"),
    (b"S S      1.234 kg", "S", 1.234, "1.234", "kg"),
    (b"S S       0.00 g", "S", 0.0, "0.00", "g"),
    (b"S S -    12.5 lb", "S", -12.5, "-12.5", "lb"),  # sign set apart from the digits
    (b"S S 7 g\r\n", "S", 7.0, "7", "g"),
])
def test_weight_replies(line, status, weight, text, unit):
    r = parse_reply(line)
    assert (r.kind, r.status, r.weight, r.value_text, r.unit) == ("weight", status, weight, text,
                                                                  unit)
    assert r.stable == (status == "S")


@cases(("line", "kind", "code"), [
    (b"S +", "overload", None),
    (b"S -", "underload", None),
    (b"S I", "not_executable", None),
    (b"S L", "error", "S L"),
    (b"ES", "error", "ES"),
    (b"ET", "error", "ET"),
    (b"EL", "error", "EL"),
    (b"Z A", "other", None),
    (b'I4 A "0123456789"', "other", None),
])
def test_status_replies(line, kind, code):
    r = parse_reply(line)
    assert (r.kind, r.code) == (kind, code)
    assert r.weight is None and not r.stable


@cases("line", [
    b"", b"   ", b"S", b"S X", b"S S", b"S S 12.0", b"S S 12.0 furlong", b"S S abc g",
    b"S S 1.2.3 g", b"S S - g", b"S S 12 13 g", b"S S 1e5 g", b"S S nan g", b"S S inf g",
    b"S S 12.0 g extra", b"S S \xff12 g", b"S S 12\x00 g", b"S Q 12.0 g",
    b"S S " + b"1" * 20 + b" g", b"X" * (MAX_LINE + 1), b"3.00 g", b"z A", b"@ x",
])
def test_malformed(line):
    r = parse_reply(line)
    assert r.kind == "malformed" and r.weight is None and r.text is None


def test_reader_splits_crlf_and_lf_over_reads():
    reader = MtSicsReader()
    out = reader.feed(b"S S     1") + reader.feed(b"2.50 g\r") + reader.feed(b"\nS +\n\r\nES\r\n")
    assert [(r.kind, r.value_text) for r in out] == [("weight", "12.50"), ("overload", None),
                                                    ("error", None)]


def test_reader_drops_an_overlong_line_once():
    reader = MtSicsReader()
    assert reader.feed(b"S" * 500) == []
    out = reader.feed(b"S" * 500 + b"\r\nS S 1.00 g\r\n")
    assert [r.kind for r in out] == ["malformed", "weight"]


def test_reader_reset_drops_a_half_reply():
    reader = MtSicsReader()
    reader.feed(b"S S   12")
    reader.reset()
    out = reader.feed(b"3.00 g\r\nS S 4.00 g\r\n")
    assert [(r.kind, r.value_text) for r in out] == [("malformed", None), ("weight", "4.00")]


def test_command_bytes():
    assert command("SI") == b"SI\r\n" and command("SIR") == b"SIR\r\n"


def test_mtsics_replies():
    r = parse_reply(b"S S     100.00 g\r\n")
    assert (r.kind, r.status, r.weight, r.unit) == ("weight", "S", 100.0, "g")
    assert parse_reply(b"S D      12.5 kg").status == "D"
    assert parse_reply(b"S +").kind == "overload" and parse_reply(b"S -").kind == "underload"
    assert parse_reply(b"\xff\xfe").kind == "malformed" and parse_reply(b"S").kind != "weight"


# -- the scale's session (shared by the gateway's driver and the MicroPython node) --------

def session(**settings):
    from midshift.firmware.core.mtsics import ScaleSession
    counts = {}

    def count(name):
        counts[name] = counts.get(name, 0) + 1
    cfg = {"mode": "poll", "poll_command": "SI", "poll_ms": 250, "timeout_ms": 1000,
           "stable_only": True}
    cfg.update(settings)
    return ScaleSession("scale1", cfg, count), counts


def events(items):
    from midshift.firmware.core.event import Event
    return [(e.kind, e.read_ms, e.data) for e in items if isinstance(e, Event)]


def test_session_polls_on_the_clock_and_gives_up_on_a_silent_scale():
    s, counts = session()
    assert s.opened(0) is None  # poll mode: nothing until the first poll is due
    assert s.due(0) == b"SI\r\n"
    assert s.due(100) is None and s.deadline_ms() == 1000  # one request at a time
    assert s.due(1000) is None and counts == {"timeouts": 1}
    assert s.due(1000) == b"SI\r\n"  # overdue polls are not caught up: one goes now
    s.feed(b"S S     1.00 g\r\n", 1050, 1_700_000_000_000)
    assert s.awaiting_since is None and s.last_reply_ms == 1050
    assert s.due(1050) == b"SI\r\n"  # the one due at 1000, held back by the request
    s.feed(b"S S     1.00 g\r\n", 1100, 1_700_000_000_000)
    assert s.due(1200) is None and s.due(1250) == b"SI\r\n"


def test_session_listen_mode_sends_sir_on_open_and_again_on_resend():
    s, _ = session(mode="listen")
    assert s.opened(0) == b"SIR\r\n" and s.due(5000) is None and s.deadline_ms() is None
    assert s.resend(6000) == b"SIR\r\n" and s.last_reply_ms == 6000


def test_one_settled_load_is_one_event():
    s, counts = session()
    s.opened(0)
    wall = 1_700_000_000_000
    got = []
    for i, line in enumerate((b"S D     120.00 g", b"S S     250.00 g", b"S S     250.00 g",
                              b"S S       0.00 g", b"S S     250.00 g", b"S S     -3.00 g")):
        got += events(s.feed(line + b"\r\n", i, wall + i))
    assert got == [("weight", wall + 1, {"weight": 250.0, "unit": "g", "stable": True}),
                   ("weight", wall + 4, {"weight": 250.0, "unit": "g", "stable": True})]
    assert counts == {"dynamic_readings": 1, "repeated_readings": 1, "zero_readings": 2}
    s.opened(100)  # a re-opened port: the item still on the pan is not a new item
    assert events(s.feed(b"S S     -3.00 g\r\n", 101, wall)) == []


def test_dynamic_readings_are_events_only_when_asked_for():
    s, _ = session(stable_only=False)
    s.opened(0)
    got = events(s.feed(b"S D     120.00 g\r\nS D     120.00 g\r\nS D     121.00 g\r\n", 1, 5))
    assert [d["weight"] for _, _, d in got] == [120.0, 121.0]
    assert not got[0][2]["stable"]


def test_replies_set_the_state_and_count_per_kind():
    from midshift.firmware.core.mtsics import DeviceState
    s, counts = session()
    s.opened(0)
    got = s.feed(b"S +\r\nS -\r\nES\r\nS L\r\nS I\r\n\xff\xfe\r\nZ A\r\n", 1, 2)
    states = [(x.state, x.error) for x in got if isinstance(x, DeviceState)]
    assert [st for st, _ in states] == ["error", "error", "error", "error", "ok", "error"]
    assert "overload (S +)" in states[0][1] and "scale replied ES (syntax error)" == states[2][1]
    assert counts == {"overloads": 1, "underloads": 1, "errors_es": 1, "errors_sl": 1,
                      "not_stable": 1, "rejected_malformed": 1, "other_replies": 1}


def test_scale_config_is_checked_with_the_runtimes_port_rule():
    from midshift.firmware.core.config_fields import field
    from midshift.firmware.core.mtsics_config import check_config

    def port(table, path):
        return field(table, "port", path, str, choices=("uart0",))
    cfg = check_config({"port": "uart0"}, "devices.s", port)
    assert (cfg["mode"], cfg["poll_ms"], cfg["stale_s"], cfg["baudrate"]) == ("poll", 250, 5.0,
                                                                              9600)
    for table, key in (({"port": "uart9"}, "port"), ({"port": "uart0", "mode": "x"}, "mode"),
                       ({"port": "uart0", "stale_s": 0.5}, "stale_s"),
                       ({"port": "uart0", "parity": "E"}, "parity")):
        with raises(ConfigError) as err:
            check_config(table, "devices.s", port)
        assert err.value.key == "devices.s." + key
