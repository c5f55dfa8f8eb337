"""``ustruct`` for umqtt.simple on CPython: the standard ``struct`` (tests only)."""

from struct import *  # noqa: F403
