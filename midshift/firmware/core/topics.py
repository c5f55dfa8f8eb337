"""The MQTT topic layout, in one place: ``midshift/v1/<site>/<gateway>/<leaf>``.

Leaves: ``events`` (gateway to ledger, QoS 1), ``ack`` (ledger to gateway), ``status``
(retained; the last will says offline), ``cmd`` (signed downlink commands). The version
segment moves with the wire format (``docs/wire-format.md``). The gateway, the node, the
ledger, the broker ACL, the status tools and the simulator all build and read topics here.
"""

ROOT = "midshift/v1"
EVENTS = "events"
ACK = "ack"
STATUS = "status"
CMD = "cmd"
LEAVES = (EVENTS, ACK, STATUS, CMD)


def topic(site, gateway, leaf):
    """The topic of one gateway's ``leaf``; ``+`` for site or gateway makes a filter."""
    return "%s/%s/%s/%s" % (ROOT, site, gateway, leaf)


REFDATA = "refdata"  # reference data down: not a LEAF, it has a subtree (docs/reference-data.md)


def refdata_topic(site, gateway, dataset, kind, *more):
    """Reference data for one gateway: ``.../<gw>/refdata/<dataset>/latest`` (the retained
    pointer), ``.../delta/<to_version>`` (retained deltas), ``.../snapshot/<version>/<i>``
    (retained chunks). ``+`` or ``#`` in any part makes a filter."""
    parts = [ROOT, site, gateway, REFDATA, dataset, kind]
    for m in more:
        parts.append(str(m))
    return "/".join(parts)


def refdata_filter(site, gateway):
    """Everything reference-data of one gateway (``+`` for either: every one)."""
    return "%s/%s/%s/%s/#" % (ROOT, site, gateway, REFDATA)


def every(leaf):
    """The filter for ``leaf`` of every gateway at every site."""
    return topic("+", "+", leaf)


def prefix(site="+", gateway="+"):
    """Everything under one gateway (or a filter): what the broker ACL grants it."""
    return "%s/%s/%s/#" % (ROOT, site, gateway)


def split(name):
    """``(site, gateway, leaf)`` of a concrete topic, or None when it is not one of ours."""
    parts = name.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != ROOT or parts[4] not in LEAVES:
        return None
    if not parts[2] or not parts[3] or "+" in parts[2:4] or "#" in parts[2:4]:
        return None
    return parts[2], parts[3], parts[4]


def reply_to(events_topic, leaf=ACK):
    """The ``leaf`` topic of the gateway that published on ``events_topic``, or None."""
    got = split(events_topic)
    if got is None:
        return None
    return topic(got[0], got[1], leaf)


def ledger_feed(store="+"):
    """The ledger's plain-JSON feed of one store's committed till transactions (issue 20,
    ``docs/erp.md``); ``+`` makes the filter for every store. Six levels, so no
    gateway topic filter (five levels) ever matches it."""
    return "%s/ledger/feed/%s/txn" % (ROOT, store)
