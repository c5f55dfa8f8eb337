"""Reading one typed value out of a config table, with an error that says what is allowed.

Every driver validates its own ``[devices.NAME]`` table with these, so every config error
has the same shape: ``devices.plc1.registers[2].type: 'int17' is not allowed; allowed:
int16, uint16, int32, uint32, float32``. The loader adds the file name.
"""

from midshift.firmware.core.errors import ConfigError

_MISSING = object()

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
               list: "a list", dict: "a table"}


def _type_text(types):
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


def field(table, key, path, types, default=_MISSING, choices=None, check=None, allowed=None):
    """``table[key]`` checked for type, choice and ``check``; ``default`` when absent.

    ``path`` is the table's own dotted path (``devices.plc1``). Integers are accepted where
    a float is asked for (and returned as float); booleans never count as numbers.
    """
    where = "%s.%s" % (path, key)
    types = types if isinstance(types, tuple) else (types,)
    if key not in table:
        if default is _MISSING:
            raise ConfigError(where, "is required", allowed or _type_text(types))
        return default
    value = table[key]
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, float) and not finite(value):
        raise ConfigError(where, "%r is not a finite number" % (value,),
                          allowed or "a finite number")
    if isinstance(value, bool) and bool not in types:
        raise ConfigError(where, "%r is not %s" % (value, _type_text(types)), allowed)
    if not isinstance(value, types):
        raise ConfigError(where, "%r is not %s" % (value, _type_text(types)), allowed)
    if choices is not None:
        options = list(choices)
        if value not in options:
            raise ConfigError(where, "%r is not allowed" % (value,),
                              allowed or ", ".join(str(o) for o in options))
    if check is not None and not check(value):
        raise ConfigError(where, "%r is out of range" % (value,), allowed)
    return value


def no_unknown_keys(table, path, known):
    """A key nobody reads is a typo until proven otherwise."""
    known = list(known)
    for key in table:
        if key not in known:
            raise ConfigError("%s.%s" % (path, key), "is not a known key", ", ".join(sorted(known)))


BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)  # a serial device's rates


def baudrate_field(table, path):
    return field(table, "baudrate", path, int, default=9600, choices=BAUDRATES)


def latin1_field(table, key, path):
    """Up to 16 8-bit characters (a scanner's prefix or suffix, STX and the like)."""
    text = field(table, key, path, str, default="")
    if len(text) > 16 or any(ord(c) > 0xFF for c in text):
        raise ConfigError("%s.%s" % (path, key), "%r is not at most 16 8-bit characters" % text,
                          'e.g. "\\u0002" for STX')
    return text


def finite(value):
    """Neither inf nor nan (TOML has both; math.isfinite is not on every MicroPython)."""
    return value == value and value - value == 0


def positive(value):
    return value > 0


def non_negative(value):
    return value >= 0
