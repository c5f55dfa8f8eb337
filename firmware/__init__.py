"""midshift's gateway agent. ``__version__`` is the one home of the version string: every
command's ``--version`` prints it. It is the installed distribution's version (the wheel,
or an editable install); a bare source tree (no ``pip install``) says ``unknown``.

Kept importable under MicroPython (the core lives below this package): no
``importlib.metadata`` there, so the version falls back the same way."""

try:
    from importlib.metadata import PackageNotFoundError, version

    try:
        __version__ = version("midshift")
    except PackageNotFoundError:
        __version__ = "unknown"
except ImportError:  # MicroPython
    __version__ = "unknown"
