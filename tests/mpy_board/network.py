"""``network.WLAN`` on CPython for the node's tests: an access point the test takes away.

``WLAN.link_up`` says whether the access point is in range. ``drop()`` takes it away:
every socket ``usocket`` made is shut down (the node's next read or write fails, as it
would once lwIP gives up on a dead link) and new connects fail until ``restore()``.
``connect()`` associates at once while the link is up; while it is down the join stays
pending and completes when the access point is back (the Wi-Fi driver keeps trying), until
``disconnect()``. See README.md for what is not modelled.
"""

STA_IF = 0
AP_IF = 1
STAT_IDLE = 0
STAT_CONNECTING = 1
STAT_GOT_IP = 3


class WLAN:
    link_up = True   # the access point is in range
    joins = 0        # connect() calls, all stations

    def __init__(self, interface=STA_IF):
        self.interface = interface
        self._active = False
        self._associated = False

    def active(self, on=None):
        if on is None:
            return self._active
        self._active = bool(on)
        if not on:
            self._associated = False
        return self._active

    def connect(self, ssid=None, key=None):
        WLAN.joins += 1
        if not self._active:
            raise OSError("WLAN not active")
        self._associated = True  # joined now if the AP is in range, else when it is back

    def disconnect(self):
        self._associated = False

    def isconnected(self):
        return self._associated and WLAN.link_up

    def status(self):
        return STAT_GOT_IP if self.isconnected() else STAT_IDLE

    def ifconfig(self):
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")


def drop():
    """The access point is gone: shut every open socket, refuse new connects."""
    import usocket
    WLAN.link_up = False
    usocket.sever_all()


def restore():
    WLAN.link_up = True
