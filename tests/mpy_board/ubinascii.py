"""``ubinascii`` for umqtt.simple on CPython: the standard ``binascii`` (tests only)."""

from binascii import *  # noqa: F403
