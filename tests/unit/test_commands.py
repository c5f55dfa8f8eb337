"""Host commands: signed, fresh and known, or rejected with a reason."""

from firmware.core.commands import CommandGate, CommandRejected, sign_command
from firmware.core.signing import Signer

PORTABLE = True  # tests/micropython runs these cases under MicroPython too


def test_commands_signed_fresh_or_rejected():
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
