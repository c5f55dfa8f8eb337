"""Hedged sends, the part only a runtime with a standby uplink runs: which batches go
once more on a standby, whether an ack on a standby answers such a copy, and the
demotion of an active uplink whose batches keep being answered that way.

The rules are described where they are decided from: ``core/forwarder.py`` (the hedge
delay, which batches are hedged) and ``core/session.py`` (the conversation). The link
session loads this module only with more than one uplink; a MicroPython node has one and
never does (its bytecode would be RAM on a board loading from its filesystem).
"""

from midshift.firmware.core.forwarder import BACKLOG
from midshift.firmware.core.session import HEDGE_ALL, HEDGE_OFF, Note, Publish
from midshift.firmware.core.wire import WireError, decode_ack

DEMOTE_AFTER = 3  # hedges in a row answered on their standby: the active uplink is failing


def poll(session, active, events, now_ms):
    """The session's ``poll``, hedging: the standbys that may carry copies now, and a
    ``Publish`` (with its ``Note``) per copy due on ``events``, the batches' topic."""
    forwarder = session.forwarder
    forwarder.alternates = [
        (n, session.hedge.get(n) == HEDGE_ALL) for n in session.uplinks
        if n != active and session.connected.get(n) and session.selector.healthy(n)
        and session.hedge.get(n) != HEDGE_OFF]
    out = []
    for uplink, first, last, data in hedges(forwarder, now_ms):
        out.append(Publish(uplink, events, data))
        out.append(Note("hedged", {"first": first, "last": last, "bytes": len(data),
                                   "uplink": uplink, "from": active}))
    return out


def hedges(forwarder, now_ms):
    """Copies to publish now on an alternate uplink: [(uplink, first, last, bytes)].
    Each batch in flight on the active uplink is hedged once, when its hedge delay has
    passed, on the first alternate (``forwarder.alternates``, preferred first) that
    carries it; the copy is re-read from the journal, the original stays in flight."""
    if not forwarder.hedge_floor_ms or not forwarder.alternates or forwarder.uplink is None:
        return []
    delay = forwarder.hedge_delay_ms()
    out = []
    for f in forwarder.inflight:
        if f.hedged_on is not None or f.uplink != forwarder.uplink or f.lane == BACKLOG \
                or now_ms - f.sent_ms < delay:
            continue
        alt = None
        for name, any_class in forwarder.alternates:
            if name != f.uplink and (any_class or f.all_txn):
                alt = name
                break
        if alt is None:
            continue
        data = forwarder._reencode(f, now_ms)
        if data is None:
            continue
        f.hedged_on = alt
        forwarder.counters["hedged"] += 1
        forwarder.counters["hedge_bytes"] += len(data)
        out.append((alt, f.first, f.last, data))
    return out


def answers_a_hedge(session, uplink, payload):
    """Whether an ack heard on the standby ``uplink`` answers a copy hedged on it."""
    try:
        epoch, first, last, _, _ = decode_ack(payload, session.forwarder.signer)
    except WireError:
        return False
    f = session.forwarder.in_flight(first, last)
    return epoch == session.journal.epoch and f is not None and f.hedged_on == uplink


def learn(session, now_ms):
    """After an ack: the active uplink's batches keep being answered through their
    hedges: demote it now (a failover), rather than wait for its keepalive to notice."""
    forwarder = session.forwarder
    won = forwarder.ack_hedge_won
    if won is None:
        if forwarder.ack_sent_ms is not None:
            session._hedge_streak = 0  # a batch answered without help
        return []
    session._hedge_streak = session._hedge_streak + 1 if won else 0
    if session._hedge_streak < DEMOTE_AFTER:
        return []
    active, change = session.selector.demote(session.selector.active, now_ms)
    if change is None:
        return []
    return [Note("demoted", {"uplink": change[1], "hedges_won": session._hedge_streak})] + \
        session._switch(active, change, now_ms, now_ms)
