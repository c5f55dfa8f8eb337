"""``/main.py`` on a board: MicroPython boots from this source file, compiling it into
RAM, so it stays this small; the node itself (``midshift/firmware/mpy/main.py`` and the rest) is
compiled by ``midshift/host_tools/mpy_bundle.py``.

First it imports the node from where the flash tool put it (``midshift.host_tools.mpy_flash``
writes ``code_from``): ``rom``, a ROMFS image at ``/rom`` (modules run in place from
flash); ``fs``, ``/firmware`` on the filesystem, so a ROMFS image left from an earlier
flash must not shadow it. No ``code_from`` (a board flashed by hand): ``sys.path`` as
the firmware set it. Then ``main.run()``: it refuses to start on a config error and says
so on the console.
"""

import sys


def _code_from(path="code_from"):
    try:
        with open(path) as f:
            where = f.read().strip()
    except OSError:
        return
    for p in ("/rom", "/rom/lib"):
        while p in sys.path:
            sys.path.remove(p)
    if where == "rom":
        sys.path.insert(0, "/rom")


_code_from()

from midshift.firmware.mpy import main  # noqa: E402 - after _code_from chose where it comes from

main.run()
