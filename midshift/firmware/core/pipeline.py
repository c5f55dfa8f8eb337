"""From a driver's Event to the bytes the journal stores: validate, redact, encode.

The pipeline decides the record class from the device's config (``txn`` or
``telemetry``); identity (gateway, epoch, seq) and the HLC are stamped by the journal
append itself, under one lock, so HLC order and seq order agree. Nothing here touches the
journal or the clock: ``prepare`` returns ``(body, cls)`` or raises ``InvalidEvent``.

Validation is what keeps garbage out of the ledger: a source the config does not know, an
empty kind, a read time that is not a plausible epoch millisecond, data that is not a JSON
object, an integer that could be a card number (redaction masks strings, not numbers), or
a body over the journal's record limit. Each refusal says which and is counted per reason.
"""

from midshift.firmware.core import record as rec
from midshift.firmware.core.errors import MidshiftError
from midshift.firmware.core.event import encode_body
from midshift.firmware.core.redact import luhn_ok, redact_data

# 2001-09-09 .. 2286-11-20: an epoch millisecond with 13 digits; anything else is a
# clock that was never set (1970) or a unit mistake (seconds, microseconds).
MIN_READ_MS = 1000000000000
MAX_READ_MS = 9999999999999
MAX_SAFE_INT = (1 << 53) - 1  # what every JSON reader on the ledger side keeps exactly
PRODUCT_SYMBOLOGIES = ("]E",)  # AIM ids of EAN/UPC: their 13-digit codes are GTINs


class InvalidEvent(MidshiftError):
    code = "invalid_event"

    def __init__(self, reason, text):
        super().__init__(text)
        self.reason = reason


class Pipeline:
    def __init__(self, classes, max_body):
        """``classes``: device name -> "txn" or "telemetry"; ``max_body``: the journal's
        record limit in bytes."""
        self.classes = {}
        for name, cls in classes.items():
            self.classes[name] = rec.class_code(cls)
        self.max_body = max_body
        self.masked = 0       # card numbers masked
        self.accepted = 0
        self.invalid = {}     # reason -> count

    def prepare(self, event):
        """(body bytes, class code) for ``event``; raises InvalidEvent."""
        try:
            return self._prepare(event)
        except InvalidEvent as exc:
            self.invalid[exc.reason] = self.invalid.get(exc.reason, 0) + 1
            raise

    def _prepare(self, event):
        cls = self.classes.get(event.source)
        if cls is None:
            raise InvalidEvent("unknown_source", "event from %r: no such device in the config" % (
                event.source,))
        if not isinstance(event.kind, str) or not event.kind:
            raise InvalidEvent("bad_kind", "event from %s: kind %r is not a name" % (
                event.source, event.kind))
        t = event.read_ms
        if isinstance(t, bool) or not isinstance(t, int) or not MIN_READ_MS <= t <= MAX_READ_MS:
            raise InvalidEvent("bad_time", "event from %s: read time %r is not epoch milliseconds "
                               "(clock not set?)" % (event.source, t))
        if not isinstance(event.data, dict):
            raise InvalidEvent("bad_data", "event from %s: data is %s, not an object" % (
                event.source, type(event.data).__name__))
        problem = _unsafe(event.data)
        if problem:
            raise InvalidEvent("bad_data", "event from %s: %s" % (event.source, problem))
        sym = event.data.get("symbology")
        product = isinstance(sym, str) and sym[:2] in PRODUCT_SYMBOLOGIES
        data, masked = redact_data(event.data, product)
        body = encode_body(event.source, event.kind, t, data)
        if len(body) > self.max_body:
            raise InvalidEvent("too_large", "event from %s: %d bytes, the limit is %d" % (
                event.source, len(body), self.max_body))
        self.masked += masked
        self.accepted += 1
        return body, cls

    def stats(self):
        return {"accepted": self.accepted, "masked": self.masked, "invalid": dict(self.invalid)}


def _unsafe(value, depth=0):
    """Why ``value`` cannot go into a body as is, or None."""
    if depth > 8:
        return "data nested deeper than 8 levels"
    if value is None or isinstance(value, (bool, str)):
        return None
    if isinstance(value, int):
        if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            return "integer %d is too long (send long codes as strings)" % value
        digits = str(abs(value))
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            return "integer with 13+ digits passes the card-number check (send codes as strings)"
        return None
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return "number %r is not finite" % value
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                return "key %r is not a string" % (k,)
            p = _unsafe(v, depth + 1)
            if p:
                return p
        return None
    if isinstance(value, (list, tuple)):
        for v in value:
            p = _unsafe(v, depth + 1)
            if p:
                return p
        return None
    return "value of type %s cannot be stored" % type(value).__name__
