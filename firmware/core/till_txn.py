"""A till transaction's arithmetic: the one home for how lines and tenders add up.

Amounts are integers in minor units (cents); a quantity is ``qty_milli`` (1 piece = 1000),
so a line is rounded half up to the minor unit once, then its discount taken off. The
gateway and the ledger both use these, so they cannot disagree about a total.

(The ledger branch carries only these four; the till API's branch adds ``validate`` and
``find_card_data`` beside them.)
"""


def line_amount(line):
    """One line in minor units: quantity x unit price, rounded half up, less the discount."""
    return (line["qty_milli"] * line["unit_price"] + 500) // 1000 - line.get("discount", 0)


def lines_total(txn):
    return sum([line_amount(line) for line in txn.get("lines", ())])


def tenders_total(txn):
    return sum([t["amount"] for t in txn.get("tenders", ())])


def card_tenders(txn):
    """The card tenders, in order."""
    return [t for t in txn.get("tenders", ()) if t.get("kind") == "card"]
