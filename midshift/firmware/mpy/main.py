"""Start of the MicroPython node: build it (``boot.py``), forget the boot code, run the
loop.

A board boots ``/main.py``, a small source file (``midshift/firmware/mpy/board_main.py``) that
calls ``run()`` here; this module is compiled like the rest (``midshift/firmware/core/*.mpy``,
``midshift/firmware/mpy/*.mpy``) by ``midshift/host_tools/mpy_bundle.py``, so its bytecode can stay in
flash with a ROMFS flash. The bundle also holds ``node.json`` (the checked board + site
config) and the keys: ``gw.key`` (batch HMAC), ``cmd.key`` (downlink commands,
optional), ``wifi.key`` (the passphrase).

Start-up refuses to run on a config error (``ConfigError``: file, key, what is allowed)
and says so on the console; it never guesses. Tests call ``build()`` and ``run()`` with a
base directory and shorter timers (``options``), on CPython with the stand-ins for the
board modules in ``tests/mpy_board/``. This module stays small: it is what the running
node keeps of its start.
"""

import time


def build(base="", options=None):
    """The node, started (``boot.build``); the boot-only modules released after."""
    from midshift.firmware.mpy import boot  # imported here: released below with the rest of boot
    node = boot.build(base, options, _saver(base + "last-command-id"))
    boot.release()
    return node


def _saver(path):
    # The node calls this for as long as it runs, so it lives here, not in boot.py.
    def save(cmd_id):
        with open(path, "w") as f:
            f.write(str(cmd_id))
    return save


def _sleep_ms(n):
    if n <= 0:
        return
    try:
        time.sleep_ms(n)
    except AttributeError:  # CPython
        time.sleep(n / 1000)


def run(base="", options=None, should_stop=None):
    node = build(base, options)
    try:
        node.run(_sleep_ms, should_stop)
    finally:
        node.close()


if __name__ == "__main__":
    run()
