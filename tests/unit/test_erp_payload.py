"""What leaves the ledger for the ERP and the feed (``erp_payload``), and how the delivery
worker reads the ERP's answers (``erp_client.retry_after_s``, ``erp_delivery._named``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from midshift.host_tools.ledger.erp_client import retry_after_s
from midshift.host_tools.ledger.erp_delivery import ErpConfig, _named
from midshift.host_tools.ledger.erp_payload import payload


def _row(tenders: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    txn = {"type": "sale", "till": "t1", "till_seq": 7, "business_day": "2026-11-27",
           "cashier": "ann", "currency": "EUR", "tenders": tenders,
           "lines": [{"sku": "S1", "qty_milli": 2000, "unit_price": 500, "discount": 0,
                      "note": "stays home"}], **extra}
    body = json.dumps({"v": 1, "k": "txn", "t": 1, "d": {"key": "k", "txn": txn}})
    return {"gateway": "gw", "epoch": "00000000000000ff", "seq": 3, "store": "s1", "till": "t1",
            "till_seq": 7, "business_day": "2026-11-27", "type": "sale", "currency": "EUR",
            "receipt": "R", "offline": 1, "accepted_ms": 1, "ledger_ms": 2, "total": 1000,
            "cash": 0, "card": 1000, "voucher": 0, "original": None, "tz": "UTC",
            "cashier": "ann", "tries": 0, "body": body}


def test_lines_level_keeps_masked_pans_and_drops_anything_else_of_a_card() -> None:
    doc = payload(_row([{"kind": "card", "amount": 600, "pan": "411111******1111",
                         "scheme": "visa", "auth": "approved", "track2": "x"},
                        {"kind": "card", "amount": 400, "pan": "4111111111111111",
                         "scheme": "visa", "auth": "approved"}]))
    assert doc["idempotency_key"] == "gw/00000000000000ff/3"
    assert doc["tenders"] == [
        {"kind": "card", "amount": 600, "scheme": "visa", "auth": "approved",
         "pan": "411111******1111"},
        {"kind": "card", "amount": 400, "scheme": "visa", "auth": "approved"}]
    assert doc["lines"] == [{"sku": "S1", "qty_milli": 2000, "unit_price": 500, "discount": 0}]
    assert "4111111111111111" not in json.dumps(doc) and "cashier" not in doc
    assert doc["offline"] is True


def test_totals_level_has_totals_per_tender_only() -> None:
    doc = payload(_row([{"kind": "card", "amount": 1000, "pan": "411111******1111"}]), "totals")
    assert doc["tenders"] == {"cash": 0, "card": 1000, "voucher": 0}
    assert "lines" not in doc and "pan" not in json.dumps(doc)


@pytest.mark.parametrize(("header", "want"), [
    ("3", 3.0), (" 0 ", 0.0), ("100000", 600.0), (None, None), ("", None), ("soon", None),
    ("Sun, 06 Dec 2026 04:00:10 GMT", 10.0),
])
def test_retry_after_reads_seconds_and_http_dates(header: str | None, want: float | None) -> None:
    now = 1796529600.0  # Sun, 06 Dec 2026 04:00:00 GMT
    assert retry_after_s(header, now) == want


def test_named_refusals_are_read_from_the_erps_body() -> None:
    text = json.dumps({"errors": [{"idempotency_key": "gw/00ff/3", "error": "bad sku"},
                                  {"idempotency_key": "junk"}, "x"]})
    assert _named(text) == {("gw", "00ff", 3)}
    assert _named("not json") == set() and _named("[1]") == set()


@pytest.mark.parametrize(("kw", "says"), [
    ({"url": "erp:80"}, "--erp-url: 'erp:80' is not http(s)://HOST[:PORT]/PATH"),
    ({"url": "http://erp:99999/x"}, "--erp-url: 'http://erp:99999/x': the port is not a number"),
    ({"sanitize": "all"}, "--erp-sanitize all: expected one of lines, totals"),
    ({"lease_s": 5, "timeout_s": 10}, "--erp-lease-s 5: must exceed --erp-timeout-s 10"),
    ({"concurrency": 0}, "--erp-concurrency 0: expected 1..32"),
])
def test_bad_erp_settings_say_which_and_what_is_expected(kw: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError) as err:
        ErpConfig(**({"url": "http://erp/x"} | kw))
    assert str(err.value).startswith(says)
