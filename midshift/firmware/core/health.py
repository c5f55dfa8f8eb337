"""When a device counts as down: not ``ok`` for longer than its stale time.

A device's own state says what it is now (``ok``, ``stale``, ``error``, ``disconnected``);
an operator needs to know which have been away too long to be a blip. ``DeviceWatch`` is
fed the runtime's device list (``{"name", "state"}`` dicts) with a monotonic time every
status tick and remembers when each was last seen ``ok``; one not ``ok`` for longer than
its limit (its ``stale_s`` from the config, else the ``[status] device_down_s`` default)
is down. A device never seen ``ok`` counts from when the watch started, so one that never
connects goes down too. Sans-I/O and MicroPython-shaped: both runtimes use it.

Sampled, not event-driven: a device that was ``ok`` only between two ticks is not seen
so; with a tick of a second and limits of several seconds that costs at most one tick.
"""


class DeviceWatch:
    def __init__(self, limits_ms, default_ms, now_ms):
        """``limits_ms``: device name -> ms it may be not ``ok`` before it is down;
        ``default_ms`` for a device not in it."""
        self.limits_ms = dict(limits_ms)
        self.default_ms = default_ms
        self.started_ms = now_ms
        self.ok_ms = {}
        self.down = []

    def update(self, devices, now_ms):
        """The sorted names of the devices down now (also kept in ``down``)."""
        down = []
        for d in devices:
            name = d.get("name")
            if d.get("state") == "ok":
                self.ok_ms[name] = now_ms
                continue
            since = self.ok_ms.get(name, self.started_ms)
            if now_ms - since > self.limits_ms.get(name, self.default_ms):
                down.append(str(name))
        down.sort()
        self.down = down
        return down
