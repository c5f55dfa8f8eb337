"""Run the MicroPython node's ``main.run`` on CPython in its own process (tests only).

    python tests/mpy_board/run_node.py NODE_DIR UARTS_JSON OPTIONS_JSON

``UARTS_JSON`` maps a UART id to a pty link (``{"0": "/tmp/.../scanner1"}``). The board
stand-ins in this directory come first on ``sys.path``; the repository root next, so
``firmware`` imports as in the tests. The process runs until it is killed: the power-cut
test sends SIGKILL.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]

import machine  # noqa: E402 - the stand-in, found through the path set above

from midshift.firmware.mpy import main  # noqa: E402

if __name__ == "__main__":
    node_dir, uarts, options = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    for uart_id, path in uarts.items():
        machine.PORTS[int(uart_id)] = path
    main.run(node_dir.rstrip("/") + "/", options)
