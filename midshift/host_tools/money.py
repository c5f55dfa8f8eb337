"""Money for people: integer minor units of an ISO 4217 currency to text ("EUR 1,234.56").

The ledger keeps amounts as integers in minor units (never floats); only the report turns
them into text. The number of decimals is the currency's (ISO 4217 exponent); any code
not listed here has two, which is true of most.
"""

from __future__ import annotations

EXPONENT = {"JPY": 0, "KRW": 0, "ISK": 0, "CLP": 0, "VND": 0, "HUF": 2, "BHD": 3, "KWD": 3,
            "JOD": 3, "OMR": 3, "TND": 3, "IQD": 3, "LYD": 3}


def exponent(currency: str) -> int:
    return EXPONENT.get(currency, 2)


def amount_text(minor: int, currency: str) -> str:
    """``-123456, "EUR"`` -> ``"-1,234.56"`` (no currency code)."""
    e = exponent(currency)
    sign, n = ("-" if minor < 0 else ""), abs(int(minor))
    if e == 0:
        return f"{sign}{n:,}"
    whole, frac = divmod(n, 10 ** e)
    return f"{sign}{whole:,}.{frac:0{e}d}"


def money(minor: int, currency: str) -> str:
    """``123456, "EUR"`` -> ``"EUR 1,234.56"``."""
    return f"{currency} {amount_text(minor, currency)}"
