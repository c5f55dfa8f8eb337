"""Barcode scanner lines: bytes in, scans and rejections out (no I/O, no clock of its own).

A serial scanner sends one line per read: ``prefix + [AIM id] + code + suffix + terminator``
(the order Honeywell and Zebra scanners use). ``ScanLineFramer.feed(data, now_ms)`` takes
whatever bytes the port returned and the monotonic time they arrived, and returns a list
of ``ScanLine`` results in wire order: a good scan (``reason`` is None) or a rejected line
with a stable ``reason`` (the driver counts ``rejected_<reason>``):

- ``overlong``: the line is longer than prefix + AIM id + ``max_length`` + suffix. The
  framer stops buffering at that limit and drops bytes up to the next terminator, so a
  stuck trigger or a 2D payload costs bounded memory and exactly one rejection.
- ``noise``: the line holds NUL or a byte with the high bit set. No scanner sends those
  in a barcode; a wrong baud rate or a loose ground does.
- ``prefix`` / ``suffix`` / ``aim``: the configured framing is not there.
- ``short``: fewer than ``min_length`` characters in the code.
- ``charset``: a character outside the configured set.
- ``empty``: a bare terminator.
- ``partial``: bytes without a terminator and then silence for longer than
  ``inter_char_timeout_ms``: a scanner that lost power or its cable mid-line. The bytes are
  dropped, never glued to the next scan. ``expire(now_ms)`` reports this during silence;
  ``feed`` also does it first when a chunk arrives after such a gap.

Character sets (``charset``), chosen without regular expressions so MicroPython needs no
``re``: ``"digits"`` (0-9), ``"alphanumeric"`` (0-9, A-Z, a-z), ``"ascii_printable"``
(0x20-0x7E), ``"gs1"`` (printable plus GS, 0x1D, the FNC1 separator of GS1-128 and
GS1 DataMatrix), or ``"chars:"`` followed by the allowed characters themselves
(``"chars:0123456789-"``). Every set is 7-bit ASCII without NUL, CR and LF, so a good
code always decodes to text on CPython and MicroPython alike.

AIM symbology identifiers (ISO/IEC 15424) are ``]`` + a letter (the symbology) + a
modifier character: ``]E0`` for EAN-13, ``]C0`` Code 128, ``]C1`` GS1-128, ``]Q1`` QR.
With ``aim_id`` on, a line without one is rejected (``aim``) and a scan carries it.

A rejected line's bytes are not kept in the result (only their count): a card swiped
through a reader on the same port must not end up in a log by way of a rejection.

Terminator matching is exact: with ``CRLF`` a lone CR is a character of the line (and
fails the charset); with ``CR`` a stray LF starts the next line. A scanner whose
terminator differs from the config shows up as rejections, not as silently altered codes.

The scanner's session, the same on both runtimes, lives here too: ``take(line, ...)``: a
framed line becomes a ``scan`` event (data ``{"code": str, "symbology": "]E0" or None}``)
or a counted rejection whose text names the reason and the length, never the bytes (a
rejected line may hold a card number). The ``[devices.NAME]`` table is checked, and made
into a framer (``framer_for``), by ``scan_line_config.py``; the character sets are made
into tables by ``scan_charset.py``: both apart so that a node can drop them after boot.
"""

from midshift.firmware.core.event import Event

REASONS = ("overlong", "noise", "prefix", "suffix", "aim", "short", "charset", "empty",
           "partial")
AIM_LENGTH = 3


class ScanLine:
    """One framed line: a scan (``reason`` None, ``code``, ``symbology``) or a rejection."""

    __slots__ = ("code", "symbology", "reason", "length")

    def __init__(self, code, symbology, reason, length):
        self.code = code
        self.symbology = symbology
        self.reason = reason
        self.length = length  # bytes in the line, terminator excluded

    @property
    def ok(self):
        return self.reason is None

    def __repr__(self):
        if self.reason is None:
            return "ScanLine(%r, %r)" % (self.code, self.symbology)
        return "ScanLine(rejected %s, %d bytes)" % (self.reason, self.length)


def _is_letter(b):
    return 0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A


def _is_modifier(b):
    return 0x30 <= b <= 0x39 or _is_letter(b)


def _has_noise(data):
    for b in data:
        if b == 0 or b >= 0x80:
            return True
    return False


class ScanLineFramer:
    """Frames and validates scanner lines; see the module docstring for the rules."""

    def __init__(self, terminator=b"\r", prefix=b"", suffix=b"", min_length=1, max_length=64,
                 charset="ascii_printable", aim_id=False, inter_char_timeout_ms=200):
        if terminator not in (b"\r", b"\n", b"\r\n"):
            raise ValueError("terminator must be CR, LF or CRLF")
        if min_length < 1 or max_length < min_length:
            raise ValueError("need 1 <= min_length <= max_length")
        for part in (prefix, suffix):
            if terminator in part:
                raise ValueError("prefix and suffix must not contain the terminator")
        self.terminator = bytes(terminator)
        self.prefix = bytes(prefix)
        self.suffix = bytes(suffix)
        self.min_length = min_length
        self.max_length = max_length
        self.aim_id = aim_id
        from midshift.firmware.core.scan_charset import charset_table  # boot-only on a node
        self.allowed = charset_table(charset)
        self.inter_char_timeout_ms = inter_char_timeout_ms
        # Longest body (terminator excluded) that can still be a good line.
        self.limit = (len(self.prefix) + (AIM_LENGTH if aim_id else 0) + max_length
                      + len(self.suffix))
        self._buf = b""
        self._discarding = False  # past the limit: dropping bytes up to the next terminator
        self._dropped = 0  # bytes dropped while discarding
        self._last_ms = 0

    def pending(self):
        """True while an unterminated line is buffered (or being discarded)."""
        return bool(self._buf) or self._discarding

    def deadline_ms(self):
        """Monotonic time at which ``expire`` will drop the pending line, or None."""
        if not self.pending():
            return None
        return self._last_ms + self.inter_char_timeout_ms

    def feed(self, data, now_ms):
        """Results for the lines that ``data`` completes (and a partial line it finds
        stale); the unterminated rest is kept for the next call."""
        out = []
        if not data:
            return out
        if self.pending() and now_ms - self._last_ms > self.inter_char_timeout_ms:
            out.append(self._drop_pending())
        self._last_ms = now_ms
        term = self.terminator
        buf = self._buf + bytes(data)
        start = 0
        while True:
            i = buf.find(term, start)
            if i < 0:
                break
            if self._discarding:
                out.append(ScanLine(None, None, "overlong", self._dropped + i - start))
                self._discarding = False
                self._dropped = 0
            else:
                out.append(self._check(buf[start:i]))
            start = i + len(term)
        rest = buf[start:]
        keep = len(term) - 1  # a CR that may be the first half of a CRLF
        if self._discarding:
            if len(rest) > keep:
                self._dropped += len(rest) - keep
                rest = rest[len(rest) - keep:] if keep else b""
        elif len(rest) > self.limit + keep:
            # Too long to be a scan whatever follows: stop buffering it.
            self._discarding = True
            self._dropped = len(rest) - keep
            rest = rest[len(rest) - keep:] if keep else b""
        self._buf = rest
        return out

    def expire(self, now_ms):
        """A ``partial`` (or ``overlong``) rejection if the pending line has been silent for
        longer than the inter-character timeout, else an empty list."""
        if self.pending() and now_ms - self._last_ms > self.inter_char_timeout_ms:
            return [self._drop_pending()]
        return []

    def reset(self):
        """Forget the pending line (the port was closed); its rejection, if there was one."""
        if not self.pending():
            return []
        return [self._drop_pending()]

    def _drop_pending(self):
        if self._discarding:
            line = ScanLine(None, None, "overlong", self._dropped + len(self._buf))
        elif _has_noise(self._buf):
            line = ScanLine(None, None, "noise", len(self._buf))
        else:
            line = ScanLine(None, None, "partial", len(self._buf))
        self._buf = b""
        self._discarding = False
        self._dropped = 0
        return line

    def _check(self, body):
        n = len(body)
        if n == 0:
            return ScanLine(None, None, "empty", 0)
        if n > self.limit:
            return ScanLine(None, None, "overlong", n)
        p, s = len(self.prefix), len(self.suffix)
        if p and body[:p] != self.prefix:
            return ScanLine(None, None, "noise" if _has_noise(body) else "prefix", n)
        if s and (n < p + s or body[n - s:] != self.suffix):
            return ScanLine(None, None, "noise" if _has_noise(body) else "suffix", n)
        code = body[p:n - s]
        if _has_noise(code):
            # Checked on the code only: a prefix or suffix may be any 8-bit byte.
            return ScanLine(None, None, "noise", n)
        symbology = None
        if self.aim_id:
            if (len(code) < AIM_LENGTH or code[0] != 0x5D or not _is_letter(code[1])
                    or not _is_modifier(code[2])):
                return ScanLine(None, None, "aim", n)
            symbology = code[:AIM_LENGTH].decode()
            code = code[AIM_LENGTH:]
        if len(code) < self.min_length:
            return ScanLine(None, None, "short", n)
        if len(code) > self.max_length:
            return ScanLine(None, None, "overlong", n)
        allowed = self.allowed
        for b in code:
            if not allowed[b]:
                return ScanLine(None, None, "charset", n)
        return ScanLine(code.decode(), symbology, None, n)


# -- the scanner's session, shared by midshift/firmware/edges/scanner.py and midshift/firmware/mpy/uart_scanner.py

def take(line, source, read_ms, count):
    """A good line's ``scan`` Event, or None for a rejection; ``count(name)`` is told
    ``scans``, or ``rejected`` and ``rejected_<reason>``."""
    if line.reason is None:
        count("scans")
        return Event(source, "scan", read_ms, {"code": line.code, "symbology": line.symbology})
    count("rejected")
    count("rejected_" + line.reason)
    return None


def rejection_text(line):
    """The last error for a rejected line: its reason and length, not its bytes."""
    return "line rejected: %s (%d bytes)" % (line.reason, line.length)
