"""midshift's firmware: the agent (CPython) and the node (MicroPython) around one core.

``__version__`` is the version's one home: the status document carries it, the metrics'
``midshift_build_info`` too, and ``pyproject.toml`` reads it from here (a constant, not
package metadata: a MicroPython board has no ``importlib.metadata``)."""

__version__ = "0.1.0"
