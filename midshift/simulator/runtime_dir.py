"""Where the simulator's runtime files go: control sockets, pty links, ground-truth logs.

``$MIDSHIFT_RUNTIME_DIR`` when set, else ``<tmp>/midshift-sim``; created on first use.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def runtime_dir() -> Path:
    d = Path(os.environ.get("MIDSHIFT_RUNTIME_DIR") or Path(tempfile.gettempdir()) / "midshift-sim")
    d.mkdir(parents=True, exist_ok=True)
    return d
