"""A till's transaction: shape checked with a field path, money in integers, card data found."""

from midshift.firmware.core.till_txn import (
    TxnInvalid,
    canonical_sha,
    card_tenders,
    find_card_data,
    line_amount,
    lines_total,
    masked_pan_ok,
    tenders_total,
    validate,
)
from tests.unit.portable import cases, raises

PORTABLE = True  # tests/micropython runs these cases under MicroPython too


def sale(**over):
    doc = {"type": "sale", "till": "till-1", "till_seq": 42, "business_day": "2026-03-29",
           "cashier": "c-7", "currency": "EUR", "till_time": "2026-03-29T09:30:00+02:00",
           "lines": [{"sku": "4006381333931", "qty_milli": 2000, "unit_price": 199},
                     {"sku": "APPLES", "qty_milli": 1250, "unit_price": 299, "discount": 50}],
           "tenders": [{"kind": "cash", "amount": 500},
                       {"kind": "card", "amount": 222, "pan": "411111******1111",
                        "scheme": "visa", "auth": "approved"}]}
    doc.update(over)
    return doc


def test_money_is_integer_minor_units_rounded_half_up():
    assert line_amount({"qty_milli": 2000, "unit_price": 199, "discount": 0}) == 398
    # 1.25 kg at 2.99 = 3.7375 -> 3.74, less 0.50
    assert line_amount({"qty_milli": 1250, "unit_price": 299, "discount": 50}) == 324
    assert line_amount({"qty_milli": 500, "unit_price": 1, "discount": 0}) == 1  # 0.5 up
    txn = validate(sale())
    assert lines_total(txn) == 722
    assert tenders_total(txn) == 722
    assert [t["kind"] for t in card_tenders(txn)] == ["card"]


def test_validate_normalizes():
    txn = validate(sale())
    assert txn["lines"][0]["discount"] == 0
    assert txn["till_time"] == "2026-03-29T09:30:00+02:00"
    assert "original" not in txn
    refund = validate(sale(type="refund", original={"till": "till-2", "till_seq": 7}))
    assert refund["original"] == {"till": "till-2", "till_seq": 7}
    void = validate(sale(type="void", original="6f1c8f5e-key"))
    assert void["original"] == "6f1c8f5e-key"


BAD = [
    ({"type": "gift"}, "type"),
    ({"till": "till 1"}, "till"),
    ({"till_seq": -1}, "till_seq"),
    ({"till_seq": True}, "till_seq"),
    ({"business_day": "2026-02-30"}, "business_day"),
    ({"currency": "eur"}, "currency"),
    ({"till_time": "09:30"}, "till_time"),
    ({"lines": []}, "lines"),
    ({"lines": [{"sku": "A", "qty_milli": 1000, "unit_price": 1.5}]}, "lines[0].unit_price"),
    ({"lines": [{"sku": "A", "qty_milli": 1000, "unit_price": 100},
                {"sku": "B", "qty_milli": 1000, "unit_price": 100, "discount": 101}]},
     "lines[1].discount"),
    ({"lines": [{"sku": "A", "qty_milli": 0, "unit_price": 1}]}, "lines[0].qty_milli"),
    ({"lines": [{"sku": "A", "qty_milli": 1000, "unit_price": 1, "colour": "red"}]},
     "lines[0].colour"),
    ({"tenders": [{"kind": "cheque", "amount": 1}]}, "tenders[0].kind"),
    ({"tenders": [{"kind": "cash", "amount": 0}]}, "tenders[0].amount"),
    ({"tenders": [{"kind": "card", "amount": 5, "pan": "4111", "scheme": "v",
                   "auth": "approved"}]}, "tenders[0].pan"),
    ({"tenders": [{"kind": "card", "amount": 5, "pan": "411111******1111", "scheme": "v",
                   "auth": "maybe"}]}, "tenders[0].auth"),
    ({"tenders": [{"kind": "cash", "amount": 5, "scheme": "v"}]}, "tenders[0].scheme"),
    ({"original": {"till": "t", "till_seq": 1}}, "original"),
    ({"type": "refund"}, "original"),
    ({"extra": 1}, "extra"),
]


@cases("over, path", BAD)
def test_invalid_bodies_name_the_field(over, path):
    with raises(TxnInvalid) as info:
        validate(sale(**over))
    assert info.value.path == path, (info.value.path, path)


def test_missing_fields_and_non_objects():
    doc = sale()
    del doc["cashier"]
    with raises(TxnInvalid) as info:
        validate(doc)
    assert info.value.path == "cashier"
    with raises(TxnInvalid) as info:
        validate([1])
    assert info.value.path == ""


def test_canonical_sha_ignores_key_order_and_whitespace():
    a = {"b": [1, {"y": "é", "x": None}], "a": True}
    b = {"a": True, "b": [1, {"x": None, "y": "é"}]}
    assert canonical_sha(a) == canonical_sha(b)
    assert len(canonical_sha(a)) == 64
    assert canonical_sha(a) != canonical_sha({"a": False, "b": [1, {"x": None, "y": "é"}]})


CARD = [
    ({"cashier": "4111111111111111"}, "cashier"),
    ({"cashier": "card 4111 1111 1111 1111 ok"}, "cashier"),
    ({"cashier": "4111-1111-1111-1111"}, "cashier"),
    ({"cashier": "2 x 4111 1111 1111 1111"}, "cashier"),
    ({"till_seq": 4111111111111111}, "till_seq"),
    ({"cvv": "123"}, "cvv"),
    ({"tenders": [{"kind": "card", "amount": 1, "PIN": "1234"}]}, "tenders[0].PIN"),
    ({"notes": {"track2": "x"}}, "notes.track2"),
    ({"notes": "%B4111111111111111^DOE/J^2512"}, "notes"),
    ({"notes": ";4111111111111111=25121010000000000?"}, "notes"),
    ({"tenders": [{"kind": "card", "amount": 1, "pan": "4111111111111111", "scheme": "v",
                   "auth": "approved"}]}, "tenders[0].pan"),
    ({"cashier": "411111******1111"}, "cashier"),  # masked, but not where a PAN belongs
    ({"lines": [{"sku": "4111111111111111", "qty_milli": 1000, "unit_price": 1}]},
     "lines[0].sku"),
]


@cases("over, path", CARD)
def test_card_data_is_found_with_its_path(over, path):
    assert find_card_data(sale(**over)) == path


def test_what_is_not_card_data():
    assert find_card_data(sale()) is None  # masked PAN in a card tender; EAN-13 sku
    assert find_card_data(sale(cashier="4111111111111112")) is None  # Luhn fails
    assert find_card_data(sale(cashier="411111111111")) is None  # 12 digits
    assert find_card_data(sale(cashier="2026-03-29 12:00")) is None
    assert find_card_data(sale(till_seq=123456789)) is None


def test_masked_pan_shape():
    assert masked_pan_ok("411111******1111")
    assert masked_pan_ok("************1111")
    assert not masked_pan_ok("4111111*****1111")  # 11 digits shown
    assert not masked_pan_ok("411111******11*1")
    assert not masked_pan_ok("4111111111111111")
