"""The scanner line framer, bytes in and results out: framing, every rejection reason,
split reads and the inter-character timeout. Properties over arbitrary bytes:
test_scan_line_props.py (hypothesis)."""

from midshift.firmware.core.scan_charset import charset_table
from midshift.firmware.core.scan_line import REASONS, ScanLineFramer
from midshift.firmware.core.scan_line_config import TERMINATORS
from tests.unit.portable import cases, raises

PORTABLE = True  # tests/micropython runs these cases under MicroPython too

T = 200  # inter-character timeout (ms) used throughout


def codes(results):
    return [(r.code, r.symbology) for r in results if r.ok]


def reasons(results):
    return [r.reason for r in results if not r.ok]


def framer(**kw):
    kw.setdefault("inter_char_timeout_ms", T)
    return ScanLineFramer(**kw)


@cases("name", ["CR", "LF", "CRLF"])
def test_lines_with_each_terminator(name):
    term = TERMINATORS[name]
    f = framer(terminator=term)
    out = f.feed(b"4006381333931" + term + b"ABC-123" + term, 0)
    assert codes(out) == [("4006381333931", None), ("ABC-123", None)]
    assert not f.pending()


def test_prefix_suffix_and_aim_are_stripped():
    f = framer(terminator=b"\r\n", prefix=b"\x02", suffix=b"\x03", aim_id=True, charset="digits")
    out = f.feed(b"\x02]E04006381333931\x03\r\n", 0)
    assert codes(out) == [("4006381333931", "]E0")]


def test_one_line_split_over_many_reads():
    f = framer(terminator=b"\r\n")
    line = b"SCN]C0MS1234-00000001\r\n"
    out = []
    for i in range(len(line)):  # one byte per read, the CR and LF in different reads
        out += f.feed(line[i:i + 1], i)
    assert codes(out) == [("SCN]C0MS1234-00000001", None)]


@cases(("cfg", "line", "reason"), [
    ({}, b"", "empty"),
    ({"max_length": 8}, b"123456789", "overlong"),
    ({"charset": "digits"}, b"12a4", "charset"),
    ({"charset": "chars:0123456789-"}, b"12 34", "charset"),
    ({}, b"12\x0034", "noise"),
    ({}, b"\xff\xfe\x80", "noise"),
    ({"prefix": b">"}, b"1234", "prefix"),
    ({"prefix": b">"}, b"\xff\x00", "noise"),
    ({"suffix": b"<"}, b"1234", "suffix"),
    ({"prefix": b"ab", "suffix": b"ab"}, b"ab", "suffix"),
    ({"aim_id": True}, b"1234", "aim"),
    ({"aim_id": True}, b"]E", "aim"),
    ({"aim_id": True}, b"]0E1234", "aim"),
    ({"min_length": 8}, b"1234567", "short"),
    ({"aim_id": True}, b"]E0", "short"),
])
def test_rejections(cfg, line, reason):
    f = framer(**cfg)
    out = f.feed(line + b"\r", 0)
    assert [(r.reason, r.length) for r in out] == [(reason, len(line))]
    assert reason in REASONS
    good = (cfg.get("prefix", b"") + (b"]E0" if cfg.get("aim_id") else b"") + b"12345678"
            + cfg.get("suffix", b"") + b"\r")
    assert codes(f.feed(good, 1)) == [("12345678", "]E0" if cfg.get("aim_id") else None)]


def test_rejected_line_keeps_no_bytes():
    f = framer(charset="digits")
    [r] = f.feed(b"4111 1111 1111 1111\r", 0)  # a card number with spaces: rejected
    assert r.reason == "charset" and r.code is None and "4111" not in repr(r)


def test_overlong_line_is_dropped_while_it_arrives():
    f = framer(max_length=10)
    out = f.feed(b"X" * 100, 0)
    assert out == [] and f.pending()
    assert len(f._buf) == 0  # nothing buffered past the limit
    out = f.feed(b"Y" * 1000 + b"\r1234\r", 1)
    assert reasons(out) == ["overlong"] and out[0].length == 1100
    assert codes(out) == [("1234", None)]


def test_overlong_then_crlf_split_between_reads():
    f = framer(max_length=4, terminator=b"\r\n")
    out = f.feed(b"123456789\r", 0) + f.feed(b"\n42\r\n", 1)
    assert reasons(out) == ["overlong"] and codes(out) == [("42", None)]


def test_partial_line_expires_and_is_not_glued():
    f = framer()
    assert f.feed(b"40063", 0) == []
    assert f.deadline_ms() == T
    assert f.expire(T) == []  # not yet: the timeout is strictly exceeded
    [r] = f.expire(T + 1)
    assert (r.reason, r.length) == ("partial", 5)
    assert codes(f.feed(b"1234\r", T + 50)) == [("1234", None)]


def test_partial_line_dropped_when_next_bytes_come_late():
    f = framer()
    f.feed(b"40063", 0)
    out = f.feed(b"1234\r", T + 1)  # nobody called expire(): feed does it first
    assert reasons(out) == ["partial"] and codes(out) == [("1234", None)]


def test_wrong_baud_noise_without_terminator_expires_as_noise():
    f = framer()
    f.feed(b"\x00\x00\xff\xff\x93\xa1", 0)
    assert reasons(f.expire(T + 1)) == ["noise"]


def test_reset_reports_the_cut_line():
    f = framer()
    f.feed(b"123", 0)
    assert reasons(f.reset()) == ["partial"]
    assert f.reset() == []


def test_bytes_within_the_timeout_are_one_line():
    f = framer()
    out = []
    for i, b in enumerate(b"1234567\r"):
        out += f.feed(bytes([b]), i * (T - 1))
    assert codes(out) == [("1234567", None)]


@cases(("spec", "yes", "no"), [
    ("digits", "0189", "a /"),
    ("alphanumeric", "09azAZ", " -_"),
    ("ascii_printable", " ~A", "\x1d\x7f"),
    ("gs1", " ~\x1d", "\x1e\x7f"),
    ("chars:AB-", "AB-", "Ca"),
])
def test_charsets(spec, yes, no):
    table = charset_table(spec)
    assert all(table[ord(c)] for c in yes)
    assert not any(table[ord(c)] for c in no)


@cases("spec", ["", "hex", "chars:", "chars:\u00e9", "chars:a\r", 5])
def test_bad_charsets(spec):
    with raises(ValueError):
        charset_table(spec)


def test_prefix_with_the_terminator_is_refused():
    with raises(ValueError):
        ScanLineFramer(terminator=b"\n", prefix=b"a\n")


def test_scan_line_framing_and_rejections():
    f = ScanLineFramer(terminator=b"\r", prefix=b"<", suffix=b">", max_length=16)
    out = f.feed(b"<12345>\r<99", 0) + f.feed(b"9>\r\x00\xff\r" + b"7" * 40 + b"\r", 5)
    assert [(r.code, r.reason) for r in out] == [("12345", None), ("999", None),
                                                 (None, "noise"), (None, "overlong")]
    assert f.feed(b"<12", 10) == []
    late = f.feed(b"3>\r", 10000)  # the partial line went stale: dropped, not glued
    assert [r.reason for r in late][0] == "partial"


# -- the scanner's session (shared by the gateway's driver and the MicroPython node) ------

def test_take_makes_a_scan_event_or_counts_a_rejection():
    from midshift.firmware.core.scan_line import rejection_text, take
    from midshift.firmware.core.scan_line_config import framer_for
    counts = []
    settings = {"terminator": "CR", "prefix": "\u0002", "suffix": "", "min_length": 1,
                "max_length": 8, "charset": "digits", "aim_id": True,
                "inter_char_timeout_ms": 200}
    lines = framer_for(settings).feed(b"\x02]E01234\r\x02]E0123456789\r", 0)
    good = take(lines[0], "scan1", 1_700_000_000_000, counts.append)
    assert (good.source, good.kind, good.read_ms, good.data) == (
        "scan1", "scan", 1_700_000_000_000, {"code": "1234", "symbology": "]E0"})
    assert take(lines[1], "scan1", 1, counts.append) is None
    assert counts == ["scans", "rejected", "rejected_overlong"]
    assert rejection_text(lines[1]) == "line rejected: overlong (13 bytes)"


def test_scanner_config_is_checked_with_the_runtimes_port_rule():
    from midshift.firmware.core.config_fields import field
    from midshift.firmware.core.errors import ConfigError
    from midshift.firmware.core.scan_line_config import check_config

    def port(table, path):
        return field(table, "port", path, str)
    cfg = check_config({"port": "p", "charset": "digits"}, "devices.s", port)
    assert (cfg["terminator"], cfg["charset"], cfg["max_length"]) == ("CR", "digits", 64)
    assert "stale_s" not in cfg
    with raises(ConfigError) as err:
        check_config({"port": "p", "stale_s": 5}, "devices.s", port)
    assert err.value.key == "devices.s.stale_s"  # the node has no stale_s; the gateway adds it
    assert check_config({"port": "p", "stale_s": 5}, "devices.s", port, ("stale_s",))["port"] == "p"
    with raises(ConfigError) as err:
        check_config({"port": "p", "suffix": "a\r"}, "devices.s", port)
    assert err.value.key == "devices.s.suffix" and "terminator" in str(err.value)
