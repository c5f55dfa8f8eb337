"""The ledger reads a till API body with one regular expression (``_gateway_row``) and any
other body as JSON (``_row_of_doc``): both must give the same row, and a body the
expression is not sure of must go the JSON way."""

from __future__ import annotations

import json
from typing import Any

import pytest

from midshift.firmware.core import till_txn
from midshift.host_tools.ledger.transactions import _N, _gateway_row, _row_of_doc, row_of
from tests.till_txns import body, sale


def _validated(**over: Any) -> dict[str, Any]:
    """A transaction as the till API journals it: through ``till_txn.validate``."""
    doc = {"type": "sale", "till": "till-1", "till_seq": 7, "business_day": "2026-03-29",
           "cashier": "ann", "currency": "EUR",
           "lines": [{"sku": "4006381333931", "qty_milli": 1500, "unit_price": 333},
                     {"sku": "BREAD", "qty_milli": 2000, "unit_price": 100, "discount": 20}],
           "tenders": [{"kind": "cash", "amount": 500}, {"kind": "voucher", "amount": 180}]}
    doc.update(over)
    return till_txn.validate(doc)


CARD = {"kind": "card", "amount": 1, "pan": "411111******1111", "scheme": "visa"}
GATEWAY_BODIES = [
    body(_validated(), "k-1", 1000),
    body(_validated(till_time="2026-03-29T09:30:00+02:00"), "k-2", 1000, offline=True),
    body(_validated(tenders=[{**CARD, "auth": "declined"}, {"kind": "cash", "amount": 9}]),
         "k-3", 1000),
    body(_validated(tenders=[{**CARD, "auth": "offline_pending", "amount": 680}]), "k-4", 5),
    body(_validated(tenders=[{**CARD, "auth": "approved", "amount": 680}]), "k-5", 5),
    body(_validated(type="refund", original={"till": "till-2", "till_seq": 3}), "k-6", 5),
    body(_validated(type="void", original="a-key"), "k-7", 5, tz=""),
    body(sale(till_seq=0, amount=1), "8a5f2c1e-3b7d-4e9a-9c0f-1d2e3f4a5b6c", 0),
]


@pytest.mark.parametrize("raw", GATEWAY_BODIES)
def test_a_till_api_body_reads_the_same_either_way(raw: bytes) -> None:
    fast = _gateway_row("gw-a", "00ab", 3, raw.decode(), 99)
    slow = _row_of_doc("gw-a", "00ab", 3, raw, 99)
    assert fast is not None and slow is not None
    assert fast[:_N] == slow[:_N]
    assert row_of("gw-a", "00ab", 3, raw.decode(), 99) == row_of("gw-a", "00ab", 3, raw, 99)
    # The tenders travel with the row only when a card flag reads them.
    flagged = [t for t in slow.tenders if t.get("auth") in ("declined", "offline_pending")]
    assert [t for t in fast.tenders if t.get("auth") in ("declined", "offline_pending")] \
        == flagged


def _edit(raw: bytes, old: str, new: str) -> bytes:
    text = raw.decode()
    assert old in text
    return text.replace(old, new, 1).encode()


OTHER_BODIES = [
    _edit(GATEWAY_BODIES[0], '"cashier":"ann"', '"cashier":"Zo\\u00eb"'),  # an escape
    _edit(GATEWAY_BODIES[0], '"cashier":"ann"', '"cashier":"Zoë"'),  # not ASCII
    _edit(GATEWAY_BODIES[0], '"cashier":"ann"', '"cashier":"a\\"b"'),  # a quote inside
    _edit(GATEWAY_BODIES[0], '"till_seq":7', '"till_seq": 7'),  # whitespace
    _edit(GATEWAY_BODIES[0], '"till_seq":7', '"till_seq":7.0'),  # not an integer
    json.dumps(json.loads(GATEWAY_BODIES[0]), sort_keys=True).encode(),  # another order
    _edit(GATEWAY_BODIES[6], '"original":"a-key"', '"original":["a-key"]'),
]


@pytest.mark.parametrize("raw", OTHER_BODIES)
def test_any_other_body_is_read_as_json(raw: bytes) -> None:
    assert _gateway_row("gw-a", "00ab", 3, raw.decode(), 99) is None
    slow = _row_of_doc("gw-a", "00ab", 3, raw, 99)
    assert slow is not None and row_of("gw-a", "00ab", 3, raw, 99) == slow
    assert row_of("gw-a", "00ab", 3, raw.decode(), 99) == slow  # as the SQLite store gives it


def test_a_body_the_ledger_cannot_read_still_says_why() -> None:
    raw = _edit(GATEWAY_BODIES[0], '"business_day":"2026-03-29",', "")
    with pytest.raises(ValueError, match="business_day"):
        row_of("gw-a", "00ab", 3, raw, 99)
