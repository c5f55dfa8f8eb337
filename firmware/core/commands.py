"""Downlink commands: signed by the host, numbered, checked before anything changes.

A command is compact JSON on ``.../cmd``::

    {"v":1,"id":42,"cmd":"replay-from","args":{"seq":1200},"sig":"<hex HMAC-SHA256>"}

The HMAC (under the host's command key, not the gateway's batch key) covers the bytes of
the same object without ``sig``, serialized with sorted keys and no spaces, so host and
gateway agree on them byte for byte. ``id`` must be greater than every id accepted
before: a recorded command replayed later is rejected. Every rejection has a reason, is
counted, and changes nothing.
"""

import binascii
import json

from firmware.core.errors import MidshiftError

VERSION = 1
COMMANDS = ("ping", "drain-now", "replay-from", "set-log-level", "reload-config")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class CommandRejected(MidshiftError):
    code = "command_rejected"

    def __init__(self, reason, text):
        super().__init__(text)
        self.reason = reason


def canonical(doc):
    """The signed bytes: the command without ``sig``, sorted keys, no spaces."""
    body = {}
    for k in doc:
        if k != "sig":
            body[k] = doc[k]
    keys = sorted(body)
    return ("{" + ",".join(json.dumps(k) + ":" + _dump(body[k]) for k in keys) + "}").encode()


def _dump(v):
    if isinstance(v, dict):
        return "{" + ",".join(json.dumps(k) + ":" + _dump(v[k]) for k in sorted(v)) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_dump(x) for x in v) + "]"
    return json.dumps(v)


def sign_command(signer, cmd_id, cmd, args=None):
    """Bytes of a signed command (the host side, and tests)."""
    doc = {"v": VERSION, "id": cmd_id, "cmd": cmd, "args": args or {}}
    doc["sig"] = binascii.hexlify(signer.sign(canonical(doc))).decode()
    return canonical(doc)[:-1] + (',"sig":"%s"}' % doc["sig"]).encode()


class CommandGate:
    """Verifies commands and remembers the highest id accepted (persist ``last_id``)."""

    def __init__(self, signer, last_id=0):
        self.signer = signer
        self.last_id = last_id
        self.accepted = 0
        self.rejected = {}

    def check(self, payload):
        """(id, cmd, args) of a valid, fresh command; raises CommandRejected."""
        try:
            return self._check(payload)
        except CommandRejected as exc:
            self.rejected[exc.reason] = self.rejected.get(exc.reason, 0) + 1
            raise

    def _check(self, payload):
        try:
            doc = json.loads(bytes(payload).decode())
        except (ValueError, UnicodeError):
            raise CommandRejected("malformed", "command is not JSON")
        if not isinstance(doc, dict) or doc.get("v") != VERSION:
            raise CommandRejected("malformed", "command version is not %d" % VERSION)
        sig = doc.get("sig")
        try:
            tag = binascii.unhexlify(sig)
        except (TypeError, ValueError):
            raise CommandRejected("bad_signature", "command signature is not hex")
        if not self.signer.verify(tag, canonical(doc)):
            raise CommandRejected("bad_signature", "command signature does not verify")
        cmd_id = doc.get("id")
        if isinstance(cmd_id, bool) or not isinstance(cmd_id, int) or cmd_id <= 0:
            raise CommandRejected("malformed", "command id %r is not a positive integer" % (
                cmd_id,))
        if cmd_id <= self.last_id:
            raise CommandRejected("replayed", "command id %d is not above %d: a replay" % (
                cmd_id, self.last_id))
        cmd = doc.get("cmd")
        args = doc.get("args")
        if cmd not in COMMANDS:
            raise CommandRejected("unknown", "command %r is not one of %s" % (
                cmd, ", ".join(COMMANDS)))
        if not isinstance(args, dict):
            raise CommandRejected("malformed", "command args are not an object")
        if cmd == "replay-from":
            seq = args.get("seq")
            if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
                raise CommandRejected("bad_args", "replay-from needs a seq >= 1")
        if cmd == "set-log-level" and args.get("level") not in LOG_LEVELS:
            raise CommandRejected("bad_args", "set-log-level needs level, one of %s" % (
                ", ".join(LOG_LEVELS)))
        self.last_id = cmd_id
        self.accepted += 1
        return cmd_id, cmd, args
