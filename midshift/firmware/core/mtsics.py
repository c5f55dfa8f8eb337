"""MT-SICS replies (Mettler Toledo Standard Interface Command Set): bytes in, replies out.

``MtSicsReader.feed(data)`` splits what the port returned into reply lines (CR LF, a bare
LF accepted) and returns one ``MtReply`` per line; ``parse_reply(line)`` parses one line.
No I/O and no clock: the driver stamps a reply with the time it read it.

Reply kinds (``MtReply.kind``):

- ``weight``: ``S S <value> <unit>`` (stable) or ``S D <value> <unit>`` (dynamic), the
  reply to ``S``, ``SI`` and each line of ``SIR`` (MT-SICS level 0). The value is a
  right-aligned 10-character field with its sign; a sign set apart from the digits
  (``S S -    12.5 g``) is accepted too. ``weight`` is a float in ``unit``;
  ``value_text`` is the value exactly as shown, for comparing readings without float
  rounding.
- ``overload`` (``S +``) and ``underload`` (``S -``): out of the weighing range.
- ``not_executable`` (``S I``): understood, but no stable weight within the scale's
  timeout, or busy.
- ``error``: ``ES`` (syntax), ``ET`` (transmission), ``EL`` (logical), ``S L`` (the
  command cannot be carried out with these parameters); ``code`` says which.
- ``other``: a reply to another command (``Z A``, ``I4 A "..."``): printable, starting
  with a command name (upper-case letters and digits); ``text``.
- ``malformed``: anything else: non-ASCII bytes, an unknown unit, a value that is not a
  decimal number, a line over ``MAX_LINE`` bytes. Never a weight. ``text`` is None.

Above the reader, the scale's session, the same on both runtimes (``ScaleSession``):
when a request is due, what a reply means for the device's state and counters, and which
readings become ``weight`` events. Its config check is ``mtsics_config.py``. The gateway's
``midshift/firmware/edges/scale.py`` and the node's ``midshift/firmware/mpy/uart_scale.py`` only move bytes
and keep the state.

Units accepted: ``UNITS``. Not modelled: level 2 and 3 replies with more fields (``SU``,
``SIX1``), tare replies, custom units, and the ``S I`` variants some models send with
a value; those read as ``other`` or ``malformed`` and are counted, not guessed.
"""

from midshift.firmware.core.event import Event

UNITS = ("g", "kg", "mg", "t", "lb", "oz", "ozt", "ct", "dwt", "GN")
ERROR_CODES = ("ES", "ET", "EL")
MAX_LINE = 64  # longest level 0/1 reply is ~30 bytes; anything far longer is not SICS
MAX_VALUE = 11  # the 10-character field, plus a sign set apart


class MtReply:
    __slots__ = ("kind", "status", "weight", "value_text", "unit", "code", "text")

    def __init__(self, kind, status=None, weight=None, value_text=None, unit=None, code=None,
                 text=None):
        self.kind = kind
        self.status = status  # "S" stable or "D" dynamic, for a weight
        self.weight = weight
        self.value_text = value_text
        self.unit = unit
        self.code = code  # ES, ET, EL or "S L", for an error
        self.text = text

    @property
    def stable(self):
        return self.kind == "weight" and self.status == "S"

    def __repr__(self):
        if self.kind == "weight":
            return "MtReply(weight %s %s %s)" % (self.status, self.value_text, self.unit)
        return "MtReply(%s %r)" % (self.kind, self.code or self.text)


MALFORMED = MtReply("malformed")


def command(name):
    """The bytes that send command ``name`` (``"SI"``, ``"S"``, ``"SIR"``, ``"@"``)."""
    return name.encode() + b"\r\n"


def _printable(line):
    for b in line:
        if b < 0x20 or b > 0x7E:
            return False
    return True


def _decimal(text):
    """True if ``text`` is an optional sign, digits and at most one point (a digit at least)."""
    digits = 0
    points = 0
    for i in range(len(text)):
        ch = text[i]
        if "0" <= ch <= "9":
            digits += 1
        elif ch == ".":
            points += 1
        elif ch in "+-" and i == 0:
            pass
        else:
            return False
    return digits > 0 and points <= 1


def _command_id(token):
    """An MT-SICS command name: an upper-case letter, then upper-case letters or digits."""
    if len(token) > 5 or not "A" <= token[0] <= "Z":
        return False
    for ch in token:
        if not ("A" <= ch <= "Z" or "0" <= ch <= "9"):
            return False
    return True


def parse_reply(line):
    """One reply line (CR LF already removed, or not) to an ``MtReply``; never raises."""
    line = bytes(line)
    while line and line[-1] in (0x0A, 0x0D):
        line = line[:-1]
    if not line or len(line) > MAX_LINE or not _printable(line):
        return MALFORMED
    text = line.decode()
    tokens = [t for t in text.split(" ") if t]
    if not tokens:
        return MALFORMED
    if len(tokens) == 1 and tokens[0] in ERROR_CODES:
        return MtReply("error", code=tokens[0])
    if tokens[0] != "S":
        if _command_id(tokens[0]):
            return MtReply("other", text=text.strip())
        return MALFORMED
    if len(tokens) == 2:
        status = tokens[1]
        if status == "+":
            return MtReply("overload")
        if status == "-":
            return MtReply("underload")
        if status == "I":
            return MtReply("not_executable")
        if status == "L":
            return MtReply("error", code="S L")
        return MALFORMED
    if len(tokens) not in (4, 5) or tokens[1] not in ("S", "D"):
        return MALFORMED
    value = "".join(tokens[2:-1])
    if len(tokens) == 5 and tokens[2] not in ("+", "-"):
        return MALFORMED  # two numbers, not a sign set apart
    unit = tokens[-1]
    if unit not in UNITS or len(value) > MAX_VALUE or not _decimal(value):
        return MALFORMED
    try:
        weight = float(value)
    except ValueError:
        return MALFORMED
    return MtReply("weight", status=tokens[1], weight=weight, value_text=value, unit=unit)


class MtSicsReader:
    """Splits a byte stream into reply lines and parses each; keeps at most one line."""

    def __init__(self):
        self._buf = b""
        self._discarding = False

    def feed(self, data):
        out = []
        if not data:
            return out
        buf = self._buf + bytes(data)
        start = 0
        while True:
            i = buf.find(b"\n", start)
            if i < 0:
                break
            line = buf[start:i]
            start = i + 1
            if self._discarding:
                self._discarding = False
                out.append(MALFORMED)
            elif line and line != b"\r":
                out.append(parse_reply(line))
        rest = buf[start:]
        if len(rest) > MAX_LINE + 1:
            self._discarding = True
            rest = b""
        self._buf = rest
        return out

    def reset(self):
        """Drop a partial line (the port was closed or the scale went quiet)."""
        self._buf = b""
        self._discarding = False


# -- the scale's session, shared by midshift/firmware/edges/scale.py and midshift/firmware/mpy/uart_scale.py

ERROR_TEXT = {"ES": "syntax error", "ET": "transmission error", "EL": "logical error",
              "S L": "command not executable with these parameters"}


class DeviceState:
    """What a reply says about the scale: ``state`` ok or error, and why (``error``)."""

    __slots__ = ("state", "error")

    def __init__(self, state, error=None):
        self.state = state
        self.error = error

    def __repr__(self):
        return "DeviceState(%s, %r)" % (self.state, self.error)


OK = DeviceState("ok")


class ScaleSession:
    """One scale's conversation: requests by the clock, replies to states and events.

    ``opened(mono_ms)`` when the port (re)opens and ``due(mono_ms)`` on every turn of the
    loop return the bytes to send now, or None; ``feed(data, mono_ms, wall_ms)`` returns
    ``DeviceState`` and ``Event`` items in reply order. Counters go to ``count(name)``:
    ``timeouts``, ``not_stable``, ``overloads``, ``underloads``, ``errors_es`` (``_et``,
    ``_el``, ``_sl``), ``rejected_malformed``, ``other_replies``, ``dynamic_readings``,
    ``repeated_readings``, ``zero_readings``.

    The rule that makes one placed item one event: a stable reading (``S S``) is an
    event when its shown value or unit differs from the previous stable reading (emitted
    or not), and only above zero; polling a settled load again emits nothing, taking it
    off (a zero reading) and putting it back emits it again. The memory survives silence,
    faults and re-opened ports (an item still on the pan is not a new item), not a new
    session object. Dynamic readings (``S D``) are events only with ``stable_only``
    false, each distinct from the previous dynamic one, with ``"stable": false``.
    Staleness and re-opening are the runtime's: it reads ``last_reply_ms``.
    """

    def __init__(self, source, settings, count):
        self.source = source
        self.count = count
        self.poll_mode = settings["mode"] == "poll"
        self.request = command(settings["poll_command"] if self.poll_mode else "SIR")
        self.poll_ms = settings["poll_ms"]
        self.timeout_ms = settings["timeout_ms"]
        self.stable_only = settings["stable_only"]
        self.reader = MtSicsReader()
        self.awaiting_since = None  # monotonic ms of the request without a reply yet
        self.next_poll_ms = None  # set by opened()
        self.last_reply_ms = None
        self._last_stable = None
        self._last_dynamic = None

    def opened(self, mono_ms):
        """A port opened: polls start now; in listen mode ``SIR`` goes out at once."""
        self.reader.reset()
        self.awaiting_since = None
        self.next_poll_ms = mono_ms
        self.last_reply_ms = None
        return None if self.poll_mode else self.request

    def due(self, mono_ms):
        """The poll to send now, or None; a request unanswered for ``timeout_ms`` counts
        ``timeouts`` and is given up (a half reply, if any, will not be completed)."""
        out = None
        if self.poll_mode and self.awaiting_since is None and mono_ms >= self.next_poll_ms:
            out = self.request
            self.awaiting_since = mono_ms
            self.next_poll_ms = max(self.next_poll_ms + self.poll_ms, mono_ms)
        if self.awaiting_since is not None and mono_ms - self.awaiting_since >= self.timeout_ms:
            self.count("timeouts")
            self.awaiting_since = None
            self.reader.reset()
        return out

    def resend(self, mono_ms):
        """Listen mode, the stream stopped: ask for it again; silence counts from now."""
        self.last_reply_ms = mono_ms
        return self.request

    def deadline_ms(self):
        """When ``due`` next has something to do by the clock (a poll or a timeout)."""
        if self.awaiting_since is not None:
            return self.awaiting_since + self.timeout_ms
        return self.next_poll_ms if self.poll_mode else None

    def feed(self, data, mono_ms, wall_ms):
        """States and events from the replies ``data`` completes; ``wall_ms`` is the time
        of the read that brought them, the events' ``read_ms``."""
        out = []
        replies = self.reader.feed(data)
        if replies:
            self.last_reply_ms = mono_ms
            self.awaiting_since = None
        for reply in replies:
            self._reply(reply, wall_ms, out)
        return out

    def _reply(self, reply, wall_ms, out):
        kind = reply.kind
        if kind == "weight":
            out.append(OK)
            event = self._weight(reply, wall_ms)
            if event is not None:
                out.append(event)
        elif kind == "not_executable":
            self.count("not_stable")
            out.append(OK)
        elif kind == "overload":
            self.count("overloads")
            out.append(DeviceState("error", "overload (S +): load above the weighing range"))
        elif kind == "underload":
            self.count("underloads")
            out.append(DeviceState("error", "underload (S -): pan missing or load below zero "
                                   "range"))
        elif kind == "error":
            code = str(reply.code)
            self.count("errors_" + code.replace(" ", "").lower())
            out.append(DeviceState("error", "scale replied %s (%s)" % (
                code, ERROR_TEXT.get(code, ""))))
        elif kind == "malformed":
            self.count("rejected_malformed")
            out.append(DeviceState("error", "malformed reply (wrong baud rate or not MT-SICS?)"))
        else:
            self.count("other_replies")

    def _weight(self, reply, wall_ms):
        key = (reply.value_text, reply.unit)
        if reply.stable:
            if key == self._last_stable:
                self.count("repeated_readings")
                return None
            self._last_stable = key
            if reply.weight is None or reply.weight <= 0:
                self.count("zero_readings")
                return None
        else:
            self.count("dynamic_readings")
            if self.stable_only or key == self._last_dynamic:
                return None
            self._last_dynamic = key
        return Event(self.source, "weight", wall_ms,
                     {"weight": reply.weight, "unit": reply.unit, "stable": reply.stable})
