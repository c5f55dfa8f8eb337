"""Card numbers never reach flash: mask every Luhn-valid run of 13 to 19 digits.

A primary account number (PAN) keeps its first 6 digits (the issuer) and its last 4, the
most PCI DSS allows to be shown; the digits between become ``*``. A run is a maximal
sequence of ASCII digits: a longer run is not a card number and is left alone, and so is
a run whose Luhn check fails.

One exception, because a shop floor scans product codes all day and about one EAN-13 in
ten also passes Luhn: a 13-digit run that is a valid GTIN-13 is a product code, not a
card, when the scan's symbology identifier says EAN/UPC (``]E``: no card is printed as an
EAN symbol) or when it does not start with 4 (the only brand that ever issued 13-digit
card numbers is Visa, whose numbers start with 4). A valid GTIN-13 starting with 4 and
passing Luhn, read without a symbology identifier, is masked: a wrong mask costs a
re-scan, a leaked card number costs the store its PCI compliance.
"""


def luhn_ok(digits):
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def gtin_ok(digits):
    """GS1 check digit (weights 3, 1 from the right, the check digit excluded)."""
    total = 0
    for i, ch in enumerate(reversed(digits[:-1])):
        total += (ord(ch) - 48) * (3 if i % 2 == 0 else 1)
    return (10 - total % 10) % 10 == ord(digits[-1]) - 48


def _is_digit(ch):
    return "0" <= ch <= "9"


def mask_pan(digits):
    return digits[:6] + "*" * (len(digits) - 10) + digits[-4:]


def redact_text(text, product_code_ok=False):
    """``text`` with every card number masked; returns (text, how many were masked)."""
    out = []
    masked = 0
    i, n = 0, len(text)
    while i < n:
        if not _is_digit(text[i]):
            j = i
            while j < n and not _is_digit(text[j]):
                j += 1
            out.append(text[i:j])
            i = j
            continue
        j = i
        while j < n and _is_digit(text[j]):
            j += 1
        run = text[i:j]
        if 13 <= len(run) <= 19 and luhn_ok(run) and not (
                len(run) == 13 and gtin_ok(run) and (product_code_ok or run[0] != "4")):
            out.append(mask_pan(run))
            masked += 1
        else:
            out.append(run)
        i = j
    return "".join(out), masked


def redact_data(data, product_code_ok=False):
    """A copy of an event's data (dicts, lists, strings, numbers) with card numbers masked
    in every string; returns (data, count). Numbers are left alone: a PAN stored as an
    integer is caught by the pipeline's validation, which refuses integers that long."""
    if isinstance(data, str):
        return redact_text(data, product_code_ok)
    if isinstance(data, dict):
        out, total = {}, 0
        for k, v in data.items():
            out[k], n = redact_data(v, product_code_ok)
            total += n
        return out, total
    if isinstance(data, (list, tuple)):
        out, total = [], 0
        for v in data:
            r, n = redact_data(v, product_code_ok)
            out.append(r)
            total += n
        return out, total
    return data, 0
