"""A scanner's character set (``charset``, see ``scan_line.py``) as a table of allowed
byte values: built once, when a framer is made or a config checked, so apart from the
framer, which runs all day; a MicroPython node drops it after boot
(``midshift/firmware/mpy/boot.py``'s ``BOOT_ONLY``).
"""

NAMED_CHARSETS = ("digits", "alphanumeric", "ascii_printable", "gs1")


def charset_table(spec):
    """A 128-entry table of allowed byte values for ``spec``; ValueError names the problem."""
    if not isinstance(spec, str):
        raise ValueError("charset must be a string")
    table = bytearray(128)
    if spec == "digits":
        for b in range(0x30, 0x3A):
            table[b] = 1
    elif spec == "alphanumeric":
        for lo, hi in ((0x30, 0x3A), (0x41, 0x5B), (0x61, 0x7B)):
            for b in range(lo, hi):
                table[b] = 1
    elif spec in ("ascii_printable", "gs1"):
        for b in range(0x20, 0x7F):
            table[b] = 1
        if spec == "gs1":
            table[0x1D] = 1
    elif spec.startswith("chars:") and len(spec) > 6:
        for ch in spec[6:]:
            b = ord(ch)
            if b == 0 or b >= 0x80 or ch in "\r\n":
                raise ValueError("charset character %r is not 7-bit ASCII without NUL, CR, LF"
                                 % ch)
            table[b] = 1
    else:
        raise ValueError("charset %r is not one of %s, or chars:<characters>"
                         % (spec, ", ".join(NAMED_CHARSETS)))
    return bytes(table)
