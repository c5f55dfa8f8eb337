"""Till transactions as the gateway journals them (contract section 1), for the ledger's and
the report's tests: the body of a ``txn`` event and signed-ready batches of them."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from midshift.firmware.core.event import encode_body
from midshift.firmware.core.wire import Batch

DAY = "2026-03-29"  # Europe/Berlin springs forward at 02:00 that day


def sale(till: str = "till-1", till_seq: int = 1, amount: int = 1234, tender: str = "cash",
         type: str = "sale", day: str = DAY, original: Any = None, auth: str = "approved",
         **extra: Any) -> dict[str, Any]:
    """One transaction of one line paid with one tender of ``amount`` minor units."""
    t: dict[str, Any] = {"kind": tender, "amount": amount}
    if tender == "card":
        t.update(pan="411111******1111", scheme="visa", auth=auth)
    txn = {"type": type, "till": till, "till_seq": till_seq, "business_day": day,
           "cashier": "ann", "currency": "EUR",
           "lines": [{"sku": "SKU-1", "qty_milli": 1000, "unit_price": amount, "discount": 0}],
           "tenders": [t]}
    if original is not None:
        txn["original"] = original
    txn.update(extra)
    return txn


def body(txn: dict[str, Any], key: str, read_ms: int, store: str = "store-1",
         tz: str = "Europe/Berlin", offline: bool = False, sha: str | None = None) -> bytes:
    canonical = json.dumps(txn, sort_keys=True, separators=(",", ":")).encode()
    data = {"key": key, "sha": sha or hashlib.sha256(canonical).hexdigest(), "store": store,
            "tz": tz, "receipt": f"R-{txn['till']}-{txn['till_seq']}", "offline": offline,
            "txn": txn}
    return encode_body(txn["till"], "txn", read_ms, data)


def incident(kind: str, read_ms: int, **data: Any) -> bytes:
    return encode_body("agent", kind, read_ms, data)


def batch(gateway: str, epoch: int, bodies: list[bytes], first_seq: int = 1,
          sent_ms: int = 0) -> Batch:
    return Batch(gateway, epoch, [(first_seq + i, 0, first_seq + i, b)
                                  for i, b in enumerate(bodies)], sent_ms)
