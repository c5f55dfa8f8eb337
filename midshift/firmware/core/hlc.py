"""Hybrid logical clock (Kulkarni et al.): wall time plus a counter, never going back.

A timestamp packs 48 bits of milliseconds since the Unix epoch and a 16-bit logical
counter into one integer, so timestamps compare as integers and fit a journal field.
The wall clock is injected (a callable returning ms); when it jumps back, the HLC keeps
its physical part and counts up; when it jumps forward, the HLC follows.
"""

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1


def pack(physical_ms, logical):
    return (physical_ms << LOGICAL_BITS) | logical


def physical_ms(ts):
    return ts >> LOGICAL_BITS


def logical(ts):
    return ts & LOGICAL_MASK


class HybridLogicalClock:
    def __init__(self, wall_ms, last=0):
        """``wall_ms``: callable returning wall time in ms; ``last``: highest timestamp
        issued before (from the journal after a reboot), so order survives restarts."""
        self._wall_ms = wall_ms
        self._phys = physical_ms(last)
        self._logical = logical(last)

    def now(self):
        """A timestamp for a local event, greater than every one issued or seen."""
        wall = int(self._wall_ms())
        if wall > self._phys:
            self._phys = wall
            self._logical = 0
        else:
            self._bump()
        return pack(self._phys, self._logical)

    def observe(self, remote):
        """Merge a timestamp received from a peer (e.g. the ledger's ack)."""
        wall = int(self._wall_ms())
        r_phys = physical_ms(remote)
        r_log = logical(remote)
        top = max(wall, self._phys, r_phys)
        if top == self._phys and top == r_phys:
            self._logical = max(self._logical, r_log)
            self._phys = top
            self._bump()
        elif top == self._phys:
            self._bump()
        elif top == r_phys:
            self._phys = top
            self._logical = r_log
            self._bump()
        else:
            self._phys = top
            self._logical = 0
        return pack(self._phys, self._logical)

    def last(self):
        return pack(self._phys, self._logical)

    def lead_ms(self):
        """How far the HLC runs ahead of the wall clock (grows after a backward jump)."""
        return self._phys - int(self._wall_ms())

    def _bump(self):
        if self._logical < LOGICAL_MASK:
            self._logical += 1
        else:  # counter exhausted within one ms: borrow the next millisecond
            self._phys += 1
            self._logical = 0
