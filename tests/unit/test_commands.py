"""Host commands: signed for this gateway, fresh, within the id window and known, or
rejected with a reason; no shape of message gets past the gate's size and depth checks."""

from midshift.firmware.core.commands import (
    ID_WINDOW,
    MAX_COMMAND,
    CommandGate,
    CommandRejected,
    nesting,
    sign_command,
)
from midshift.firmware.core.signing import Signer

PORTABLE = True  # tests/micropython runs these cases under MicroPython too

GW = "gw-01"


def reasons_of(gate, payloads):
    out = []
    for payload in payloads:
        try:
            gate.check(payload)
            raise AssertionError("accepted " + repr(payload)[:80])
        except CommandRejected as exc:
            out.append(exc.reason)
    return out


def test_commands_signed_fresh_or_rejected():
    host = Signer(b"h" * 32)
    gate = CommandGate(host, GW, last_id=10)
    assert gate.check(sign_command(host, GW, 11, "replay-from", {"seq": 5})) == (
        11, "replay-from", {"seq": 5})
    bad = [sign_command(host, GW, 11, "ping"),                      # replayed id
           sign_command(host, GW, 9, "ping"),                       # older id
           sign_command(Signer(b"x" * 32), GW, 12, "ping"),         # wrong key
           sign_command(host, GW, 12, "format-disk"),               # unknown
           sign_command(host, GW, 12, "set-log-level", {"level": "LOUD"}),
           sign_command(host, GW, 12, "ping").replace(b'"ping"', b'"drain-now"'),  # tampered
           b"not json"]
    assert reasons_of(gate, bad) == ["replayed", "replayed", "bad_signature", "unknown",
                                     "bad_args", "bad_signature", "malformed"]
    assert gate.last_id == 11 and gate.accepted == 1
    assert gate.check(sign_command(host, GW, 12, "ping"))[1] == "ping"


def test_a_command_for_another_gateway_is_rejected():
    host = Signer(b"h" * 32)
    gate = CommandGate(host, GW)
    assert reasons_of(gate, [sign_command(host, "gw-02", 1, "drain-now")]) == ["wrong_gateway"]
    assert gate.last_id == 0 and gate.rejected == {"wrong_gateway": 1}
    assert gate.check(sign_command(host, GW, 1, "drain-now"))[0] == 1


def test_an_id_far_above_the_last_is_rejected_and_locks_nothing_out():
    host = Signer(b"h" * 32)
    gate = CommandGate(host, GW, last_id=5)
    far = [sign_command(host, GW, 2 ** 80, "ping"),
           sign_command(host, GW, 5 + ID_WINDOW + 1, "ping")]
    assert reasons_of(gate, far) == ["id_out_of_window", "id_out_of_window"]
    assert gate.last_id == 5 and gate.rejected == {"id_out_of_window": 2}
    assert gate.check(sign_command(host, GW, 6, "ping"))[0] == 6
    assert gate.check(sign_command(host, GW, 6 + ID_WINDOW, "ping"))[0] == 6 + ID_WINDOW


def test_every_shape_of_downlink_is_rejected_with_a_reason_before_it_can_hurt():
    host = Signer(b"h" * 32)
    gate = CommandGate(host, GW)
    deep = b"[" * 100000 + b"]" * 100000
    shapes = [b"[" * 3000,                                   # deep, and short enough
              b'{"v":2,"args":' + b'{"a":' * 20 + b"1" + b"}" * 21,
              deep,                                          # megabytes
              b"x" * (MAX_COMMAND + 1),
              bytes(range(256)),                             # binary
              b"\xff\xfe{}",
              b"", b"null", b"[]", b"42", b'"ping"',          # wrong types
              b'{"v":2}', b'{"v":"2","sig":"00"}',
              b'{"v":2,"sig":123}', b'{"v":2,"sig":"zz"}', b'{"v":2,"sig":[1]}',
              None, 12, "text", [1, 2]]
    reasons = reasons_of(gate, shapes)
    assert reasons == ["too_deep", "too_deep", "too_large", "too_large", "malformed",
                       "malformed", "malformed", "malformed", "malformed", "malformed",
                       "malformed", "bad_signature", "malformed", "bad_signature",
                       "bad_signature", "bad_signature", "malformed", "malformed",
                       "malformed", "malformed"]
    assert gate.accepted == 0 and gate.last_id == 0
    ok = sign_command(host, GW, 1, "ping")
    assert gate.check(memoryview(ok))[0] == 1 and gate.check(bytearray(
        sign_command(host, GW, 2, "ping")))[0] == 2


def test_nesting_counts_brackets_outside_strings():
    assert nesting(b'{"a":[1,{"b":"[[[{{{"}]}') == 3
    assert nesting(b'"\\"[["') == 0
    assert nesting(b"") == 0
