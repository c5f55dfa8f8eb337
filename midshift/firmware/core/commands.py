"""Downlink commands: signed by the host for one gateway, numbered, checked before
anything changes.

A command is compact JSON on ``.../<gateway>/cmd``::

    {"v":2,"gateway":"gw-01","id":42,"cmd":"replay-from","args":{"seq":1200},"sig":"<hex>"}

The HMAC (under the gateway's own command key, ``provision`` makes one per gateway, apart
from its batch key) covers a domain tag and the same object without ``sig``, serialized
with sorted keys and no spaces, so host and gateway agree on it byte for byte.

What arrives is not trusted until the signature verifies, so the gate looks at the bytes
first: more than ``MAX_COMMAND`` bytes (``too_large``) or nesting deeper than
``MAX_DEPTH`` (``too_deep``, counted on the raw bytes: ``json.loads`` would recurse) is
refused before any parsing. Then, in order: JSON object of this version (``malformed``),
signature (``bad_signature``), addressed to this gateway (``wrong_gateway``), id above
the last one accepted (``replayed``) but at most ``ID_WINDOW`` above it
(``id_out_of_window``: one signed id of 2**80 must not lock out every later one), known
command (``unknown``) with its arguments (``bad_args``). Every rejection has a reason, is
counted, and changes nothing, the last id included.
"""

import binascii
import json

from midshift.firmware.core.errors import MidshiftError
from midshift.firmware.core.forwarder import BACKLOG, LIVE, Lane

VERSION = 2
DOMAIN = b"midshift-cmd-v2\n"
MAX_COMMAND = 4096   # bytes; a real command is under 200
MAX_DEPTH = 4        # {"args": {...}} is 2
ID_WINDOW = 1000000  # an accepted id is in (last, last + ID_WINDOW]
COMMANDS = ("ping", "drain-now", "replay-from", "set-log-level", "reload-config",
            "settle-rejected")
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
    return dump_canonical(body).encode()


def _sorted_encoder():
    """CPython's C encoder when it writes the same bytes as ``_dump_slow`` (checked once);
    MicroPython has no JSONEncoder: None."""
    try:
        enc = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
    except (AttributeError, TypeError):
        return None
    if enc({"b": 1, "a": [1.5, "\u00e9"]}) != '{"a":[1.5,"\\u00e9"],"b":1}':
        return None
    return enc


_ENCODE = _sorted_encoder()


def dump_canonical(v):
    """JSON with sorted keys and no spaces: what both ends sign and hash byte for byte."""
    if _ENCODE is not None:
        return _ENCODE(v)
    return _dump_slow(v)


def _dump_slow(v):
    if isinstance(v, dict):
        return "{" + ",".join(json.dumps(k) + ":" + _dump_slow(v[k])
                              for k in sorted(v)) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_dump_slow(x) for x in v) + "]"
    return json.dumps(v)


def sign_command(signer, gateway, cmd_id, cmd, args=None):
    """Bytes of a signed command for ``gateway`` (the host side, and tests)."""
    doc = {"v": VERSION, "gateway": gateway, "id": cmd_id, "cmd": cmd, "args": args or {}}
    sig = binascii.hexlify(signer.sign(DOMAIN, canonical(doc))).decode()
    return canonical(doc)[:-1] + (',"sig":"%s"}' % sig).encode()


def nesting(data):
    """How deep ``[`` and ``{`` nest in JSON bytes, strings skipped: a loop, no recursion."""
    depth = deepest = 0
    in_str = escaped = False
    for b in data:
        if in_str:
            if escaped:
                escaped = False
            elif b == 92:    # backslash
                escaped = True
            elif b == 34:    # closing quote
                in_str = False
        elif b == 34:
            in_str = True
        elif b == 91 or b == 123:
            depth += 1
            if depth > deepest:
                deepest = depth
        elif b == 93 or b == 125:
            depth -= 1
    return deepest


def _positive_int(v):
    return not isinstance(v, bool) and isinstance(v, int) and v > 0


class CommandGate:
    """Verifies commands for ``gateway`` and remembers the highest id accepted (persist
    ``last_id``)."""

    def __init__(self, signer, gateway, last_id=0, window=ID_WINDOW):
        self.signer = signer
        self.gateway = gateway
        self.last_id = last_id
        self.window = window
        self.accepted = 0
        self.rejected = {}

    def check(self, payload):
        """(id, cmd, args) of a valid, fresh command; raises CommandRejected."""
        try:
            return self._check(payload)
        except CommandRejected as exc:
            self.rejected[exc.reason] = self.rejected.get(exc.reason, 0) + 1
            raise

    def _parse(self, payload):
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise CommandRejected("malformed", "command is a %s, not bytes" % (
                type(payload).__name__,))
        if len(payload) > MAX_COMMAND:
            raise CommandRejected("too_large", "command of %d bytes is over %d" % (
                len(payload), MAX_COMMAND))
        data = bytes(payload)
        depth = nesting(data)
        if depth > MAX_DEPTH:
            raise CommandRejected("too_deep", "command nests %d deep, over %d" % (
                depth, MAX_DEPTH))
        try:
            doc = json.loads(data.decode())
        except (ValueError, UnicodeError):
            raise CommandRejected("malformed", "command is not JSON")
        if not isinstance(doc, dict) or doc.get("v") != VERSION:
            raise CommandRejected("malformed", "command is not an object of version %d" % (
                VERSION,))
        return doc

    def _check(self, payload):
        doc = self._parse(payload)
        sig = doc.get("sig")
        if not isinstance(sig, str):
            raise CommandRejected("bad_signature", "command is not signed")
        try:
            tag = binascii.unhexlify(sig)
        except (TypeError, ValueError):
            raise CommandRejected("bad_signature", "command signature is not hex")
        if not self.signer.verify(tag, DOMAIN, canonical(doc)):
            raise CommandRejected("bad_signature", "command signature does not verify")
        target = doc.get("gateway")
        if target != self.gateway:
            raise CommandRejected("wrong_gateway", "command is for %r, this is %r" % (
                target, self.gateway))
        cmd_id = doc.get("id")
        if not _positive_int(cmd_id):
            raise CommandRejected("malformed", "command id %r is not a positive integer" % (
                cmd_id,))
        if cmd_id <= self.last_id:
            raise CommandRejected("replayed", "command id %d is not above %d: a replay" % (
                cmd_id, self.last_id))
        if cmd_id - self.last_id > self.window:
            raise CommandRejected("id_out_of_window", "command id %d is more than %d above "
                                  "the last one, %d" % (cmd_id, self.window, self.last_id))
        cmd = doc.get("cmd")
        args = doc.get("args")
        if cmd not in COMMANDS:
            raise CommandRejected("unknown", "command %r is not one of %s" % (
                cmd, ", ".join(COMMANDS)))
        if not isinstance(args, dict):
            raise CommandRejected("malformed", "command args are not an object")
        if cmd == "replay-from" and not _positive_int(args.get("seq")):
            raise CommandRejected("bad_args", "replay-from needs a seq >= 1")
        if cmd == "settle-rejected" and not (
                _positive_int(args.get("first")) and _positive_int(args.get("last"))
                and args["first"] <= args["last"]):
            raise CommandRejected("bad_args", "settle-rejected needs first <= last, both >= 1")
        if cmd == "set-log-level" and args.get("level") not in LOG_LEVELS:
            raise CommandRejected("bad_args", "set-log-level needs level, one of %s" % (
                ", ".join(LOG_LEVELS)))
        self.last_id = cmd_id
        self.accepted += 1
        return cmd_id, cmd, args


class SetLogLevel:
    """Set the runtime's log level (command ``set-log-level``)."""

    def __init__(self, level):
        self.level = level


class Reload:
    """The ledger asked for the configuration to be read again (command ``cmd_id``); the
    runtime answers with ``command_done(session, cmd_id, result)``."""

    def __init__(self, cmd_id=0):
        self.cmd_id = cmd_id


def carry_out(session, payload, now_ms):
    """A command arrived for ``session`` (``core/session.LinkSession``, with a gate):
    checked by its gate, then done; returns the session's actions. It lives here, not in
    session.py, so a runtime without a command key (a MicroPython node without
    ``cmd.key``) never loads it; it works on the session's own state, as its method did."""
    from midshift.firmware.core.session import Note, SaveCommandId

    try:
        cmd_id, cmd, args = session.gate.check(payload)
    except CommandRejected as exc:
        session.counters["commands_rejected"] += 1
        return [Note("command_rejected", {"reason": exc.reason})]
    out = [SaveCommandId(cmd_id)]
    result = "ok"
    forwarder = session.forwarder
    if cmd == "drain-now":
        forwarder.drain_now()
    elif cmd == "replay-from":
        result = {"from_seq": replay_from(forwarder, args["seq"])}
    elif cmd == "settle-rejected":
        commit, settled = settle_rejected(forwarder, args["first"], args["last"])
        result = {"settled": settled}
        if commit is not None:
            session._pending_commit = commit
            out.extend(session._commit_if_due(now_ms, force=True))
        if not forwarder.rejected:
            out.extend(session.alarm("ledger_rejected", False))
    elif cmd == "set-log-level" and cmd in session.supports:
        out.append(SetLogLevel(args["level"]))
    elif cmd == "reload-config" and cmd in session.supports:
        out.append(Reload(cmd_id))
    elif cmd != "ping":
        result = "not supported here"
    session.last_command = {"id": cmd_id, "cmd": cmd, "result": result}
    out.append(Note("command", {"id": cmd_id, "cmd": cmd, "result": result}))
    session._status_due = now_ms  # answer (ping included) with a fresh status at once
    return out


def replay_from(forwarder, seq):
    """Command ``replay-from`` on ``forwarder`` (``core/forwarder.py``): the ledger lost
    what it acknowledged from ``seq`` on: forget those acks and send everything
    unacknowledged again from the commit point (records before ``seq`` that were never
    acked go too). Returns the first seq replayed."""
    tail_pos, tail_seq = forwarder.journal.tail()
    durable_pos, durable_seq = forwarder.journal.durable()
    start = max(seq, tail_seq)
    forwarder.inflight = []
    forwarder.acked = [a for a in forwarder.acked if a[1] < start]
    forwarder.rejected = [f for f in forwarder.rejected if f.last < start]
    forwarder.lanes = [Lane(LIVE, durable_pos, durable_seq + 1),
                       Lane(BACKLOG, tail_pos, tail_seq, durable_seq)]
    return start


def settle_rejected(forwarder, first, last):
    """Command ``settle-rejected`` on ``forwarder``: an operator has taken the rejected
    batches inside ``first..last`` off the gateway (``host_tools journal export``) and
    lets their space go: (seq, pos) to commit, or None. Returns the settled ranges too."""
    settled = [f for f in forwarder.rejected if first <= f.first and f.last <= last]
    for f in settled:
        forwarder.rejected.remove(f)
        if f.runs is not None:
            forwarder.acked.extend(f.runs)
        else:
            forwarder.acked.append((f.first, f.last, f.end_pos))
    return forwarder._advance_commit(), [[f.first, f.last] for f in settled]


def command_done(session, cmd_id, result):
    """The runtime carried out ``session``'s command ``cmd_id`` (a reload: the config
    was valid or not): its result replaces the provisional one, said at once in the
    status."""
    from midshift.firmware.core.session import Note

    if session.last_command is None or session.last_command["id"] != cmd_id:
        return []
    session.last_command = {"id": cmd_id, "cmd": session.last_command["cmd"], "result": result}
    session._status_due = 0
    return [Note("command", dict(session.last_command))]
