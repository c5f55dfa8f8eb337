"""Which uplink carries the batches: the failover policy, with the clock handed in.

Uplinks are ordered by preference (Ethernet before LTE). The edges report health changes
(``report(name, healthy, now_ms)``: a connection made, a ping answered or missed, a socket
error); ``select(now_ms)`` returns the uplink to use and the change, if any:

- the active uplink stays while it is healthy;
- when it fails, the most preferred healthy uplink takes over at once (failover);
- a more preferred uplink takes the traffic back only after it has been healthy without
  interruption for ``hold_ms`` (fail-back), so a flapping primary does not drag the
  traffic back and forth; one that has never failed (at start-up the LTE modem may
  connect a few milliseconds before the Ethernet) takes it at once, as a fail-back;
- with nothing healthy, there is no active uplink and batches wait in the journal;
- ``demote(name, now_ms)``: the active uplink is answering through others' hedges (it
  is failing, though its keepalive has not noticed yet): the most preferred other healthy
  uplink takes over at once, and the demoted one may take the traffic back only after
  ``hold_ms``, like any fail-back.

A metered uplink carries only ``txn`` records (``carries(name, cls)``).
"""

from midshift.firmware.core.record import TXN


class UplinkSelector:
    def __init__(self, names, hold_ms=30000, metered=()):
        if not names:
            raise ValueError("at least one uplink is needed")
        self.names = list(names)
        self.hold_ms = hold_ms
        self.metered = set(metered)
        self._healthy_since = {}  # name -> ms it last became healthy; absent: unhealthy
        self._failed = set()  # names that were healthy once and then failed
        self.active = None
        self.failovers = 0
        self.failbacks = 0
        self.demotions = 0

    def report(self, name, healthy, now_ms):
        if name not in self.names:
            raise ValueError("unknown uplink %r" % (name,))
        if healthy:
            if name not in self._healthy_since:
                self._healthy_since[name] = now_ms
        elif self._healthy_since.pop(name, None) is not None:
            self._failed.add(name)

    def healthy(self, name):
        return name in self._healthy_since

    def select(self, now_ms):
        """(active name or None, change or None); change is ("failover", old, new),
        ("failback", old, new), ("up", None, new) or ("down", old, None)."""
        old = self.active
        new = old
        if old is None or not self.healthy(old):
            new = None
            for name in self.names:
                if self.healthy(name):
                    new = name
                    break
        else:
            rank = self.names.index(old)
            for name in self.names[:rank]:
                since = self._healthy_since.get(name)
                if since is not None and (now_ms - since >= self.hold_ms
                                          or name not in self._failed):
                    new = name
                    break
        if new == old:
            return new, None
        self.active = new
        if old is None:
            return new, ("up", None, new)
        if new is None:
            return None, ("down", old, None)
        if self.names.index(new) < self.names.index(old):
            self.failbacks += 1
            return new, ("failback", old, new)
        self.failovers += 1
        return new, ("failover", old, new)

    def demote(self, name, now_ms):
        """(active name, change or None): as ``select``, change ("failover", name, new)."""
        if name is None or name != self.active:
            return self.active, None
        new = None
        for other in self.names:
            if other != name and self.healthy(other):
                new = other
                break
        if new is None:
            return self.active, None
        self._failed.add(name)
        self._healthy_since[name] = now_ms  # healthy, but the hold time starts again
        self.active = new
        self.failovers += 1
        self.demotions += 1
        return new, ("failover", name, new)

    def carries(self, name, cls):
        return name not in self.metered or cls == TXN

    def next_failback_ms(self, now_ms):
        """When a fail-back could next happen (for a timer), or None."""
        if self.active is None:
            return None
        best = None
        for name in self.names[:self.names.index(self.active)]:
            since = self._healthy_since.get(name)
            if since is not None:
                at = since + self.hold_ms if name in self._failed else now_ms
                best = at if best is None else min(best, at)
        return best
