"""The offline sell rules: which rule refuses, headroom per rule, online lets all through."""

from midshift.firmware.core.sell_rules import RULES, SellRules, SellState
from tests.unit.portable import cases

PORTABLE = True  # tests/micropython runs these cases under MicroPython too

LIMITS = {"offline_tenders": ["cash", "card"], "card_floor_limit": 5000, "txn_cap": 20000,
          "offline_exposure_cap": 50000, "max_queue": 100, "card_max_offline_age_s": 3600}
T0 = 1_000_000_000


def txn(kind="sale", tenders=None, price=1000):
    tenders = tenders or [{"kind": "cash", "amount": price}]
    return {"type": kind, "lines": [{"sku": "A", "qty_milli": 1000, "unit_price": price,
                                     "discount": 0}], "tenders": tenders}


def card(amount):
    return [{"kind": "card", "amount": amount, "pan": "411111******1111", "scheme": "visa",
             "auth": "offline_pending"}]


def offline(**kw):
    args = {"online": False, "queued_count": 0, "offline_amount": 0, "now_ms": T0,
            "offline_since_ms": T0 - 60_000}
    args.update(kw)
    return SellState(**args)


ROWS = [
    (txn(), offline(), None),
    (txn(), offline(queued_count=100), "max_queue"),
    (txn(), SellState(True, queued_count=100), "max_queue"),
    (txn(tenders=[{"kind": "voucher", "amount": 1000}]), offline(), "tender_not_offline"),
    (txn(price=6000, tenders=card(6000)), offline(), "card_floor_limit"),
    (txn(price=4000, tenders=card(4000)), offline(offline_since_ms=T0 - 3_601_000),
     "card_offline_age"),
    (txn(price=4000, tenders=card(4000)), offline(offline_since_ms=T0 - 3_599_000), None),
    (txn(price=20001), offline(), "txn_cap"),
    (txn(price=20000), offline(offline_amount=30001), "offline_exposure_cap"),
    (txn(price=20000), offline(offline_amount=30000), None),
    (txn(price=90000, tenders=[{"kind": "voucher", "amount": 90000}]), SellState(True), None),
    (txn("void", tenders=[{"kind": "voucher", "amount": 90000}], price=90000), offline(), None),
]


@cases("t, state, rule", ROWS)
def test_each_rule(t, state, rule):
    assert SellRules(LIMITS).check(t, state) == rule


def test_no_limits_means_only_the_tender_rule():
    rules = SellRules({})
    assert rules.check(txn(price=10 ** 9), offline(queued_count=10 ** 6)) is None
    assert rules.check(txn(tenders=card(1)), offline()) == "tender_not_offline"


def test_headroom_and_counters():
    rules = SellRules(LIMITS)
    state = offline(queued_count=40, offline_amount=12000)
    rules.check(txn(price=20001), state)
    room = rules.headroom(state)
    assert sorted(room) == sorted(RULES)
    assert room["max_queue"] == {"limit": 100, "headroom": 60, "refused": 0}
    assert room["offline_exposure_cap"]["headroom"] == 38000
    assert room["txn_cap"] == {"limit": 20000, "headroom": 20000, "refused": 1}
    assert room["card_offline_age"]["headroom"] == 3540
    assert room["tender_not_offline"]["limit"] == ["cash", "card"]
    assert SellRules({}).headroom(SellState(True))["max_queue"]["headroom"] is None


def test_stale_reference_data_refuses_offline_sales_at_old_prices():
    rules = SellRules(dict(LIMITS, prices_max_age_s=600))
    assert rules.check(txn(), offline(prices_age_s=600)) is None
    assert rules.check(txn(), offline(prices_age_s=601)) == "stale_reference_data"
    assert rules.check(txn(), offline(prices_age_s=None)) == "stale_reference_data"  # never had
    assert rules.check(txn(kind="refund"), offline(prices_age_s=9999)) is None
    assert rules.check(txn(), SellState(True, now_ms=T0, prices_age_s=9999)) is None  # online
    assert rules.check(txn(), offline(prices_age_s=None)) == "stale_reference_data"
    room = rules.headroom(offline(prices_age_s=100))["stale_reference_data"]
    assert room == {"limit": 600, "headroom": 500, "refused": 3}
    assert SellRules(LIMITS).check(txn(), offline(prices_age_s=None)) is None  # no limit
