"""A till's transaction: the body of ``POST /v1/transactions``, checked, and its money.

Sans-I/O and MicroPython-shaped: the till API (``midshift/firmware/edges/till_api.py``) hands it the
parsed JSON, the ledger imports the same arithmetic, so the gateway and the ledger cannot
disagree about a total. Amounts are integers in minor units (cents); a quantity is
``qty_milli`` (1 piece = 1000, 0.25 kg = 250), so nothing here is a float.

- ``find_card_data(doc)`` runs first, on the raw document (unknown keys too): the path of
  anything that looks like card data beyond a masked PAN, or None. Such a body is refused
  and never written anywhere, so the caller must not log or echo it.
- ``validate(doc)`` returns the normalized transaction (known keys only, defaults filled)
  or raises ``TxnInvalid(path, why)`` with a JSON field path like ``lines[2].unit_price``.
- ``canonical_sha(doc)``: the fingerprint an Idempotency-Key is bound to (keys sorted, no
  whitespace), so a retry that only re-orders keys is the same request.
"""

import binascii
import hashlib
import json

from midshift.firmware.core.redact import gtin_ok, luhn_ok

TYPES = ("sale", "refund", "void")
TENDER_KINDS = ("cash", "card", "voucher")
CARD_AUTH = ("approved", "declined", "offline_pending")
MAX_LINES = 500
MAX_TENDERS = 20
MAX_AMOUNT = 10 ** 12  # minor units; far above any till, far below float trouble
MAX_TEXT = 64
CARD_KEYS = ("cvv", "cvc", "cvv2", "cvc2", "cid", "pin", "pin_block", "pinblock")
TXN_KEYS = ("type", "till", "till_seq", "business_day", "cashier", "currency", "till_time",
            "lines", "tenders", "original")
LINE_KEYS = ("sku", "qty_milli", "unit_price", "discount")
TENDER_KEYS = ("kind", "amount", "pan", "scheme", "auth")
NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"


class TxnInvalid(ValueError):
    """``path``: the JSON field path (``lines[2].unit_price``; ``""`` for the whole body);
    ``why``: what is wrong and what is allowed."""

    def __init__(self, path, why):
        super().__init__("%s: %s" % (path or "(body)", why))
        self.path = path
        self.why = why


# ---- money -----------------------------------------------------------------------------


def amount_of(qty_milli, unit_price, discount):
    """Quantity (thousandths) times unit price, rounded half up to a minor unit, less the
    discount: the one rule for a line's money (the ledger's fast body reader calls it too)."""
    return (qty_milli * unit_price + 500) // 1000 - discount


def line_amount(line):
    return amount_of(line["qty_milli"], line["unit_price"], line.get("discount", 0))


def lines_total(txn):
    total = 0
    for line in txn["lines"]:
        total += line_amount(line)
    return total


def tenders_total(txn):
    total = 0
    for t in txn["tenders"]:
        total += t["amount"]
    return total


def card_tenders(txn):
    return [t for t in txn["tenders"] if t["kind"] == "card"]


def canonical_json(value):
    """JSON with sorted keys and no whitespace, written by hand because MicroPython's
    ``json.dumps`` has no ``sort_keys``."""
    if isinstance(value, dict):
        parts = []
        for k in sorted(value):
            parts.append(json.dumps(str(k)) + ":" + canonical_json(value[k]))
        return "{" + ",".join(parts) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(canonical_json(v) for v in value) + "]"
    return json.dumps(value)


def canonical_sha(doc):
    return binascii.hexlify(hashlib.sha256(canonical_json(doc).encode()).digest()).decode()


# ---- card data ---------------------------------------------------------------------------


def _digit(ch):
    return "0" <= ch <= "9"


def _groups(text):
    """Runs of digit groups joined by one space or dash (``4111 1111-1111 1111``), each a
    list of the groups' digit strings."""
    runs, groups, i, n = [], [], 0, len(text)
    while i < n:
        if _digit(text[i]):
            j = i
            while j < n and _digit(text[j]):
                j += 1
            groups.append(text[i:j])
            i = j
            if i + 1 < n and text[i] in " -" and _digit(text[i + 1]):
                i += 1
                continue
        else:
            i += 1
        if groups:
            runs.append(groups)
            groups = []
    if groups:
        runs.append(groups)
    return runs


def _is_pan(digits, product_code_ok):
    if not 13 <= len(digits) <= 19 or not luhn_ok(digits):
        return False
    # A sku is very often an EAN-13 / GTIN-14, of which one in ten passes Luhn too.
    return not (product_code_ok and len(digits) in (13, 14) and gtin_ok(digits))


def has_pan(text, product_code_ok=False):
    """A Luhn-valid 13 to 19 digit card number in ``text``, also written in groups."""
    for groups in _groups(text):
        # Every window of whole groups: "2 x 4111 1111 1111 1111" holds a card number.
        for a in range(len(groups)):
            digits = ""
            for b in range(a, len(groups)):
                digits += groups[b]
                if len(digits) > 19:
                    break
                if _is_pan(digits, product_code_ok and a == b):
                    return True
    return False


def has_track_data(text):
    """Magnetic stripe track 1 (``%B<PAN>^``) or track 2 (``;<PAN>=``) framing."""
    i = text.find("%B")
    while i >= 0:
        if i + 2 < len(text) and _digit(text[i + 2]):
            return True
        i = text.find("%B", i + 1)
    i = text.find("=")
    while i >= 0:
        j = i
        while j > 0 and _digit(text[j - 1]):
            j -= 1
        if i - j >= 12:
            return True
        i = text.find("=", i + 1)
    return False


def masked_pan_ok(text):
    """``411111******1111``: 13 to 19 characters, digits and ``*``, at least four ``*``,
    the last four digits, no more than the first six and last four shown."""
    if not 13 <= len(text) <= 19 or text.count("*") < 4:
        return False
    shown = 0
    for ch in text:
        if ch != "*" and not _digit(ch):
            return False
        if ch != "*":
            shown += 1
    return shown <= 10 and _digit(text[-1]) and "*" not in text[-4:]


def _looks_masked(text):
    """A masked PAN inside some text: a run of 13 to 19 digits and ``*`` mixing both."""
    run = ""
    for ch in text + " ":
        if ch == "*" or _digit(ch):
            run += ch
            continue
        if 13 <= len(run) <= 19 and "*" in run and run.count("*") < len(run) - 3:
            return True
        run = ""
    return False


def _card_key(key):
    k = key.lower()
    return k in CARD_KEYS or k.startswith("track")


def find_card_data(doc, path=""):
    """The field path of the first thing that looks like card data, or None."""
    if isinstance(doc, dict):
        for key in doc:
            sub = "%s.%s" % (path, key) if path else str(key)
            if _card_key(str(key)):
                return sub
            found = find_card_data(doc[key], sub)
            if found is not None:
                return found
        return None
    if isinstance(doc, list):
        for i, item in enumerate(doc):
            found = find_card_data(item, "%s[%d]" % (path, i))
            if found is not None:
                return found
        return None
    if isinstance(doc, bool) or doc is None:
        return None
    if isinstance(doc, int):
        return path if _is_pan(str(abs(doc)), False) else None
    if isinstance(doc, float):
        return None
    text = str(doc)
    leaf = path.split(".")[-1]
    if has_pan(text, leaf == "sku") or has_track_data(text):
        return path
    if _looks_masked(text) and not (leaf == "pan" and path.startswith("tenders[")
                                    and masked_pan_ok(text)):
        return path
    return None


# ---- the transaction's shape -------------------------------------------------------------


def _obj(doc, path, keys):
    if not isinstance(doc, dict):
        raise TxnInvalid(path, "is not an object")
    for k in doc:
        if k not in keys:
            raise TxnInvalid(("%s.%s" % (path, k)) if path else k,
                             "is not a known field; allowed: %s" % ", ".join(keys))
    return doc


def _int(doc, key, path, low=0, high=MAX_AMOUNT, default=None):
    p = "%s.%s" % (path, key) if path else key
    if key not in doc:
        if default is not None:
            return default
        raise TxnInvalid(p, "is required: an integer")
    v = doc[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise TxnInvalid(p, "%r is not an integer" % (v,))
    if not low <= v <= high:
        raise TxnInvalid(p, "%d is out of range; allowed: %d to %d" % (v, low, high))
    return v


def _text(doc, key, path, choices=None, name=False, required=True):
    p = "%s.%s" % (path, key) if path else key
    if key not in doc:
        if not required:
            return None
        raise TxnInvalid(p, "is required: " + (
            "one of " + ", ".join(choices) if choices else "a string"))
    v = doc[key]
    if not isinstance(v, str):
        raise TxnInvalid(p, "is not a string")
    if choices is not None and v not in choices:
        raise TxnInvalid(p, "%r is not allowed; allowed: %s" % (v, ", ".join(choices)))
    if not 0 < len(v) <= MAX_TEXT:
        raise TxnInvalid(p, "must be 1 to %d characters" % MAX_TEXT)
    if name:
        for ch in v:
            if ch not in NAME_CHARS:
                raise TxnInvalid(p, "%r is not 1 to 32 letters, digits, '_' or '-'" % v)
        if len(v) > 32:
            raise TxnInvalid(p, "%r is longer than 32 characters" % v)
    return v


def _day_ok(text):
    if len(text) != 10 or text[4] != "-" or text[7] != "-":
        return False
    for i in (0, 1, 2, 3, 5, 6, 8, 9):
        if not _digit(text[i]):
            return False
    y, m, d = int(text[:4]), int(text[5:7]), int(text[8:])
    if not 1 <= m <= 12 or y < 2000:
        return False
    days = (31, 29 if (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)) else 28, 31, 30, 31,
            30, 31, 31, 30, 31, 30, 31)[m - 1]
    return 1 <= d <= days


def _time_ok(text):
    """ISO 8601 with an offset: ``2026-03-29T02:30:00+01:00`` or ``...Z``."""
    if len(text) < 20 or len(text) > 35 or text[10] != "T" or not _day_ok(text[:10]):
        return False
    if text.endswith("Z"):
        return True
    off = text[-6:]
    return off[0] in "+-" and off[3] == ":" and _digit(off[1]) and _digit(off[2]) and \
        _digit(off[4]) and _digit(off[5])


def _line(doc, path):
    _obj(doc, path, LINE_KEYS)
    line = {"sku": _text(doc, "sku", path),
            "qty_milli": _int(doc, "qty_milli", path, 1, 10 ** 9),
            "unit_price": _int(doc, "unit_price", path),
            "discount": _int(doc, "discount", path, default=0)}
    if line_amount(line) < 0:
        raise TxnInvalid(path + ".discount", "%d is more than the line's %d" % (
            line["discount"], line_amount(line) + line["discount"]))
    return line


def _tender(doc, path):
    _obj(doc, path, TENDER_KEYS)
    kind = _text(doc, "kind", path, TENDER_KINDS)
    t = {"kind": kind, "amount": _int(doc, "amount", path, 1)}
    if kind == "card":
        pan = _text(doc, "pan", path)
        if not masked_pan_ok(pan):
            raise TxnInvalid(path + ".pan", "is not a masked PAN; allowed: first 6 and last 4 "
                             "digits at most, the rest '*' (411111******1111)")
        t["pan"] = pan
        t["scheme"] = _text(doc, "scheme", path)
        t["auth"] = _text(doc, "auth", path, CARD_AUTH)
    else:
        for k in ("pan", "scheme", "auth"):
            if k in doc:
                raise TxnInvalid("%s.%s" % (path, k), "is only for a card tender")
    return t


def _original(doc, kind):
    if kind == "sale":
        if "original" in doc:
            raise TxnInvalid("original", "is only for a refund or a void")
        return None
    if "original" not in doc:
        raise TxnInvalid("original", "is required for a %s: {\"till\", \"till_seq\"} or the "
                         "original's Idempotency-Key" % kind)
    o = doc["original"]
    if isinstance(o, str):
        if not 0 < len(o) <= 128:
            raise TxnInvalid("original", "an Idempotency-Key of 1 to 128 characters")
        return o
    _obj(o, "original", ("till", "till_seq"))
    return {"till": _text(o, "till", "original", name=True),
            "till_seq": _int(o, "till_seq", "original")}


def _list(doc, key, most):
    if key not in doc:
        raise TxnInvalid(key, "is required: a list")
    v = doc[key]
    if not isinstance(v, list):
        raise TxnInvalid(key, "is not a list")
    if not 0 < len(v) <= most:
        raise TxnInvalid(key, "must hold 1 to %d items" % most)
    return v


def validate(doc):
    """The normalized transaction, or ``TxnInvalid(path, why)``."""
    if not isinstance(doc, dict):
        raise TxnInvalid("", "the body is not a JSON object")
    _obj(doc, "", TXN_KEYS)
    kind = _text(doc, "type", "", TYPES)
    txn = {"type": kind, "till": _text(doc, "till", "", name=True),
           "till_seq": _int(doc, "till_seq", ""),
           "business_day": _text(doc, "business_day", ""),
           "cashier": _text(doc, "cashier", ""),
           "currency": _text(doc, "currency", "")}
    if not _day_ok(txn["business_day"]):
        raise TxnInvalid("business_day", "%r is not a date; allowed: YYYY-MM-DD" %
                         txn["business_day"])
    cur = txn["currency"]
    if len(cur) != 3 or not all("A" <= c <= "Z" for c in cur):
        raise TxnInvalid("currency", "%r is not an ISO 4217 code (3 capital letters)" % cur)
    till_time = _text(doc, "till_time", "", required=False)
    if till_time is not None:
        if not _time_ok(till_time):
            raise TxnInvalid("till_time", "%r is not ISO 8601 with an offset "
                             "(2026-03-29T09:30:00+02:00)" % till_time)
        txn["till_time"] = till_time
    txn["lines"] = [_line(x, "lines[%d]" % i) for i, x in enumerate(_list(doc, "lines",
                                                                         MAX_LINES))]
    txn["tenders"] = [_tender(x, "tenders[%d]" % i)
                      for i, x in enumerate(_list(doc, "tenders", MAX_TENDERS))]
    original = _original(doc, kind)
    if original is not None:
        txn["original"] = original
    return txn
