"""The offline sell rules: what a till may still sell while the store's link is down.

A written contract, checked at the till API before a transaction is journaled: the answer
is None (sell) or the rule's name, which the till gets in a 403 body. Sans-I/O: the caller
hands the state (online or not, forced offline, what is queued, the time, since when it
is offline) and keeps it; this object only keeps the limits and the refusal counters.

Rules, in the order they are checked (``[sell_rules]`` in the site file; an absent limit
is no limit):

- ``max_queue``: transactions queued (accepted, not yet in the ledger) may not pass
  ``max_queue``. Checked online too: a ledger that never acknowledges fills the queue
  just as an outage does.
- Offline only (no uplink, or forced offline), for sales and refunds; a void cancels
  money already counted, so only ``max_queue`` applies to it:
  ``tender_not_offline`` (a tender kind not in ``offline_tenders``), ``card_floor_limit``
  (a card tender above it), ``card_offline_age`` (a card tender once the gateway has been
  offline longer than ``card_max_offline_age_s``), ``txn_cap`` (the transaction's total
  above it), ``offline_exposure_cap`` (what was taken offline and is not yet in the ledger,
  plus this one, above it).
- ``stale_reference_data`` (sales only, offline only): the gateway's prices are older than
  ``prices_max_age_s`` (seconds since the gateway last knew it held the newest version;
  a gateway that never received prices counts as too old), checked first among the
  offline rules: a sale at a stale price is wrong whatever the tender.
"""

from midshift.firmware.core.till_txn import card_tenders, lines_total, tenders_total

RULES = ("max_queue", "stale_reference_data", "tender_not_offline", "card_floor_limit", "card_offline_age", "txn_cap",
         "offline_exposure_cap")
LIMIT_KEYS = {"max_queue": "max_queue", "stale_reference_data": "prices_max_age_s",
              "card_floor_limit": "card_floor_limit",
              "card_offline_age": "card_max_offline_age_s", "txn_cap": "txn_cap",
              "offline_exposure_cap": "offline_exposure_cap"}


class SellState:
    """What the rules are checked against, as the API sees it now."""

    def __init__(self, online, queued_count=0, offline_amount=0, now_ms=0,
                 offline_since_ms=None, prices_age_s=None):
        self.online = online                    # an uplink and not forced offline
        self.queued_count = queued_count        # accepted, not yet in the ledger
        self.offline_amount = offline_amount    # of those, taken offline (minor units)
        self.now_ms = now_ms
        self.offline_since_ms = offline_since_ms
        self.prices_age_s = prices_age_s        # None: no prices ever received


class SellRules:
    def __init__(self, rules):
        """``rules``: the checked ``[sell_rules]`` table (``site_config``)."""
        self.offline_tenders = tuple(rules.get("offline_tenders", ("cash",)))
        self.limits = {}
        for rule in LIMIT_KEYS:
            self.limits[rule] = rules.get(LIMIT_KEYS[rule])
        self.refused = {}
        for rule in RULES:
            self.refused[rule] = 0

    def check(self, txn, state):
        """None (sell) or the name of the rule the transaction breaks (counted)."""
        rule = self._broken(txn, state)
        if rule is not None:
            self.refused[rule] += 1
        return rule

    def _broken(self, txn, state):
        lim = self.limits
        if lim["max_queue"] is not None and state.queued_count + 1 > lim["max_queue"]:
            return "max_queue"
        if state.online or txn["type"] == "void":
            return None
        if txn["type"] == "sale" and lim["stale_reference_data"] is not None and (
                state.prices_age_s is None or state.prices_age_s > lim["stale_reference_data"]):
            return "stale_reference_data"
        for t in txn["tenders"]:
            if t["kind"] not in self.offline_tenders:
                return "tender_not_offline"
        cards = card_tenders(txn)
        if cards and lim["card_floor_limit"] is not None:
            for t in cards:
                if t["amount"] > lim["card_floor_limit"]:
                    return "card_floor_limit"
        if cards and lim["card_offline_age"] is not None and \
                self.offline_age_s(state) > lim["card_offline_age"]:
            return "card_offline_age"
        total = amount(txn)
        if lim["txn_cap"] is not None and total > lim["txn_cap"]:
            return "txn_cap"
        if lim["offline_exposure_cap"] is not None and \
                state.offline_amount + total > lim["offline_exposure_cap"]:
            return "offline_exposure_cap"
        return None

    @staticmethod
    def offline_age_s(state):
        if state.online or state.offline_since_ms is None:
            return 0
        return max(0, state.now_ms - state.offline_since_ms) // 1000

    def headroom(self, state):
        """Per rule: its limit, what is left under it now (None: no limit) and how many
        transactions it refused."""
        lim = self.limits
        age = state.prices_age_s
        left = {"max_queue": _left(lim["max_queue"], state.queued_count),
                "stale_reference_data": None if age is None
                else _left(lim["stale_reference_data"], age),
                "tender_not_offline": None,
                "card_floor_limit": lim["card_floor_limit"],
                "card_offline_age": _left(lim["card_offline_age"], self.offline_age_s(state)),
                "txn_cap": lim["txn_cap"],
                "offline_exposure_cap": _left(lim["offline_exposure_cap"],
                                              state.offline_amount)}
        out = {}
        for rule in RULES:
            out[rule] = {"limit": list(self.offline_tenders) if rule == "tender_not_offline"
                         else lim[rule], "headroom": left[rule], "refused": self.refused[rule]}
        return out


def amount(txn):
    """What a transaction moves: the larger of its lines and its tenders (they should agree;
    when they do not, the rules take the worse)."""
    return max(lines_total(txn), tenders_total(txn))


def _left(limit, used):
    if limit is None:
        return None
    return max(0, limit - used)
