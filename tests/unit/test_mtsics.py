"""MT-SICS reply parsing, bytes in and replies out: each reply the driver relies on, byte
for byte, and line splitting. Arbitrary bytes: test_mtsics_props.py (hypothesis)."""

from firmware.core.mtsics import MAX_LINE, MtSicsReader, command, parse_reply
from tests.unit.portable import cases

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
