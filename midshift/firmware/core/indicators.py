"""What the status LEDs show, and when the alarm counts as acknowledged.

Pure policy: fed a plain snapshot of the agent's state, it returns what each LED should
do; the GPIO edge (``midshift/firmware/edges/gpio.py``) and the MicroPython node drive the pins.
The snapshot is a dict (missing keys read as "all quiet")::

    {"uplink": "primary" | "secondary" | "none",
     "backlog_records": int,            # records not yet acknowledged by the ledger
     "journal_refusing_txn": bool,      # the journal is full for transactions
     "devices_in_error": int or [names],
     "devices": [{"name": ..., "state": ...}, ...],   # optional, see active_faults
     "devices_down": [names],           # not ok for longer than their stale time
     "alarm_acknowledged": bool}        # filled in from FaultAlarm by the edge

The LEDs (``desired_leds`` returns name -> ``"on"``, ``"off"`` or ``"blink"``):

- ``uplink``: on while the primary uplink carries the batches; slow blink on a secondary
  (working, degraded, maybe metered); off with no uplink (batches wait in the journal).
- ``backlog_amber``: on while records wait for the ledger's acknowledgement.
- ``backlog_red``: on while the journal refuses transactions. Steady, never acknowledged:
  it is a condition to fix, not an event; it goes out when a transaction is taken again
  or the ledger's acks free the room.
- ``fault``: off with no device in error or down; fast blink while a device is in error
  (or down: not ok for longer than its stale time, ``core/health.py``) that nobody has
  acknowledged; on (steady) when every such device was acknowledged.

The alarm rule (``FaultAlarm``): a button press acknowledges the set of faults present at
that moment. A fault that appears later, on another device or on the same device after it
recovered, is new and raises the alarm again (fast blink) until the next press. A
pressed button with no fault present acknowledges nothing, so it cannot pre-acknowledge a
future fault. A fault that clears leaves the acknowledged set at once, so a flapping
device re-raises the alarm each time it fails again: on a factory floor, being told
twice beats never being told.

Not modelled: LED brightness or colour mixing, a lamp test at start, acknowledging the
red (journal) LED, and alarms other than device faults (clock offset, uplink loss: those
have their own LED or only reach the status message).
"""

LED_NAMES = ("uplink", "backlog_amber", "backlog_red", "fault")

ON = "on"
OFF = "off"
BLINK = "blink"
LED_STATES = (ON, OFF, BLINK)

UPLINKS = ("primary", "secondary", "none")

# (on_s, off_s) for each LED that blinks. The uplink blinks slowly: on a secondary the
# gateway works, degraded. An unacknowledged fault blinks fast (4 Hz), to call a person.
UPLINK_BLINK_S = (0.5, 0.5)
FAULT_BLINK_S = (0.125, 0.125)
BLINK_TIMES_S = {"uplink": UPLINK_BLINK_S, "fault": FAULT_BLINK_S}
DEFAULT_BLINK_S = (0.5, 0.5)


def blink_times_s(name):
    """``(on_s, off_s)`` for LED ``name`` when it blinks."""
    return BLINK_TIMES_S.get(name, DEFAULT_BLINK_S)


def active_faults(snapshot):
    """The set of faults present in ``snapshot``, as names.

    ``devices_in_error`` as a list (or set) names the devices. As a count, the agent's
    ``devices`` list (``{"name", "state"}`` dicts) supplies the names of those in
    ``"error"`` when present, so that one device recovering while another fails between two
    snapshots still counts as a new fault; without it a count ``n`` reads as the faults
    ``#1`` .. ``#n``, and only a rise in the count is new.
    """
    value = snapshot.get("devices_in_error", 0)
    if isinstance(value, (list, tuple, set, frozenset)):
        return frozenset(str(name) for name in value)
    devices = snapshot.get("devices")
    if isinstance(devices, (list, tuple)):
        names = [str(d.get("name")) for d in devices
                 if isinstance(d, dict) and d.get("state") == "error"]
        names.extend(str(n) for n in snapshot.get("devices_down") or ())
        if names or not value:
            return frozenset(names)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("devices_in_error must be a count or a list of names, not %r" % (value,))
    return frozenset("#%d" % (i + 1) for i in range(max(0, value)))


def desired_leds(snapshot):
    """LED name -> ``"on"`` | ``"off"`` | ``"blink"`` for ``snapshot`` (see the module doc).

    Raises ValueError for an uplink value other than primary, secondary or none: the agent
    only makes those three, so another is a bug to find, not a state to show.
    """
    uplink = snapshot.get("uplink", "none")
    if uplink is None:
        uplink = "none"
    if uplink not in UPLINKS:
        raise ValueError("uplink must be one of %s, not %r" % (", ".join(UPLINKS), uplink))
    if uplink == "primary":
        uplink_led = ON
    elif uplink == "secondary":
        uplink_led = BLINK
    else:
        uplink_led = OFF
    if active_faults(snapshot):
        fault_led = ON if snapshot.get("alarm_acknowledged", False) else BLINK
    else:
        fault_led = OFF
    return {
        "uplink": uplink_led,
        "backlog_amber": ON if snapshot.get("backlog_records", 0) > 0 else OFF,
        "backlog_red": ON if snapshot.get("journal_refusing_txn", False) else OFF,
        "fault": fault_led,
    }


class FaultAlarm:
    """The acknowledge rule: which faults a person has seen.

    ``update(faults)`` with the current fault set returns True when every present fault
    is acknowledged (also when there is none); ``acknowledge()`` (the button) marks the
    present faults seen. Counters: ``raised`` (times the alarm went from quiet or
    acknowledged to unacknowledged), ``acknowledged_count`` (presses that acknowledged
    at least one fault).
    """

    def __init__(self):
        self.faults = frozenset()
        self.seen = frozenset()
        self.raised = 0
        self.acknowledged_count = 0

    @property
    def acknowledged(self):
        return self.faults <= self.seen

    def update(self, faults):
        """Take the current fault set; True if all of it is acknowledged."""
        faults = frozenset(faults)
        was_acknowledged = self.acknowledged
        self.faults = faults
        # A fault that cleared is forgotten: if it comes back, it is new.
        self.seen = self.seen & faults
        if was_acknowledged and not self.acknowledged:
            self.raised += 1
        return self.acknowledged

    def new_faults(self):
        """The present faults nobody has acknowledged, sorted."""
        return sorted(self.faults - self.seen)

    def acknowledge(self):
        """Mark the present faults seen; returns the faults newly acknowledged, sorted."""
        newly = self.new_faults()
        self.seen = self.faults
        if newly:
            self.acknowledged_count += 1
        return newly
