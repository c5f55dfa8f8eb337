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

Units accepted: ``UNITS``. Not modelled: level 2 and 3 replies with more fields (``SU``,
``SIX1``), tare replies, custom units, and the ``S I`` variants some models send with
a value; those read as ``other`` or ``malformed`` and are counted, not guessed.
"""

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
