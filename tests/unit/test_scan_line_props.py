"""Scanner line framer properties (hypothesis, CPython only): arbitrary bytes never raise
and what comes out as a scan was on the wire whole; good lines survive junk."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from midshift.firmware.core.scan_charset import charset_table
from midshift.firmware.core.scan_line import REASONS
from midshift.firmware.core.scan_line_config import TERMINATORS
from tests.unit.test_scan_line import T, framer

CONFIGS = st.fixed_dictionaries({
    "terminator": st.sampled_from(list(TERMINATORS.values())),
    "prefix": st.sampled_from([b"", b"\x02", b"SCN:", b"\xaa"]),
    "suffix": st.sampled_from([b"", b"\x03", b"#"]),
    "min_length": st.integers(1, 4),
    "max_length": st.integers(4, 20),
    "charset": st.sampled_from(["digits", "alphanumeric", "ascii_printable", "gs1", "chars:0-9"]),
    "aim_id": st.booleans(),
})


def well_formed(r, cfg):
    code = r.code
    table = charset_table(cfg["charset"])
    return (isinstance(code, str) and cfg["min_length"] <= len(code) <= cfg["max_length"]
            and all(ord(c) < 128 and table[ord(c)] for c in code)
            and (r.symbology is None) == (not cfg["aim_id"])
            and (r.symbology is None or (len(r.symbology) == 3 and r.symbology[0] == "]")))


@settings(max_examples=300, deadline=None)
@given(cfg=CONFIGS, chunks=st.lists(st.tuples(st.binary(max_size=40), st.integers(0, 500)),
                                    max_size=20))
def test_arbitrary_bytes_never_raise_and_scans_are_well_formed(cfg, chunks):
    f = framer(**cfg)
    now = 0
    stream = b""
    for data, gap in chunks:
        now += gap
        stream += data
        out = f.feed(data, now) + f.expire(now + gap // 2)
        for r in out:
            if r.ok:
                assert well_formed(r, cfg), r
                framed = (cfg["prefix"] + (r.symbology or "").encode() + r.code.encode()
                          + cfg["suffix"] + cfg["terminator"])
                assert framed in stream  # it was on the wire, whole
            else:
                assert r.reason in REASONS and r.code is None
        assert len(f._buf) <= f.limit + len(cfg["terminator"])  # memory stays bounded


@settings(max_examples=200, deadline=None)
@given(cfg=CONFIGS, items=st.lists(st.one_of(
    st.tuples(st.just("scan"), st.text(alphabet="0123456789", min_size=4, max_size=20)),
    st.tuples(st.just("junk"), st.binary(min_size=1, max_size=60))), max_size=12))
def test_good_lines_survive_junk_separated_by_silence(cfg, items):
    """Each scan comes whole after junk that was followed by silence: every scan comes
    out, in order, and junk never turns a good scan into a bad one."""
    cfg = dict(cfg, charset="digits", max_length=20, min_length=4)
    f = framer(**cfg)
    now = 0
    sent, got = [], []
    for kind, value in items:
        if kind == "scan":
            aim = b"]E0" if cfg["aim_id"] else b""
            data = cfg["prefix"] + aim + value.encode() + cfg["suffix"] + cfg["terminator"]
            sent.append(value)
        else:
            data = value
        out = f.feed(data, now) + f.expire(now + T + 1)
        got += [r.code for r in out if r.ok]
        now += T + 2
    # Junk may itself contain framed digit lines; the scans are still all there, in order.
    it = iter(got)
    assert all(any(g == s for g in it) for s in sent), (sent, got)
