"""The shape every device driver shares: one thread, a status, and a guarded hand-off.

A concrete driver sets ``kind``, provides ``validate_config(name, table, path)`` (a
staticmethod returning the normalized table or raising ``ConfigError``) and implements
``_run()``, a loop that returns soon after ``self._stopping.is_set()``. ``_interrupt()``
may close a port or socket to wake a blocking read when the driver is stopped.

``emit(event)`` is the only way an event leaves a driver: it stamps nothing itself (the
pipeline does), counts what happened, and never lets a refusal kill the driver's loop. It
returns an ``Emitted``: accepted (durable, with its ``seq``) or refused with a stable
``reason`` a source can pass on to its own client (a till answering its POS):

- ``journal_full``: no room for the record's class (a ``txn`` is never made room for by
  overwriting unacknowledged ones);
- ``invalid:<reason>``: the pipeline refused the event (``unknown_source``, ``bad_kind``,
  ``bad_time``, ``bad_data``, ``too_large``); sending it again will not help;
- ``storage``: the flash failed or the record was not durable in time;
- otherwise the error's ``code``.

``emit_many(events)`` is the same for values read together (one block, one publish): one
journal hand-over and one sync for them all instead of one each, an ``Emitted`` each.

A module ``midshift/firmware/edges/<type>.py`` that holds a driver exports it as ``DRIVER``, with
``TYPE`` and ``DEFAULT_CLASS`` (``midshift/firmware/edges/device_types.py`` finds it by name).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from midshift.firmware.core.errors import JournalFull, MidshiftError, StorageError
from midshift.firmware.core.event import Event
from midshift.firmware.core.pipeline import InvalidEvent
from midshift.firmware.edges.device_status import DeviceStatus

log = logging.getLogger(__name__)


class Clock(Protocol):
    def now_ms(self) -> int: ...

    def monotonic_ms(self) -> int: ...


Emit = Callable[[Event], Any]


class Emitted:
    """What became of one event: ``ok`` with the journal's ``seq``, or a refusal with a
    stable ``reason`` (see the module docstring) and the error's text. True if accepted."""

    __slots__ = ("seq", "reason", "text")

    def __init__(self, seq: int | None = None, reason: str | None = None,
                 text: str = "") -> None:
        self.seq = seq
        self.reason = reason
        self.text = text

    @property
    def ok(self) -> bool:
        return self.reason is None

    def __bool__(self) -> bool:
        return self.ok

    @classmethod
    def refused(cls, exc: MidshiftError) -> Emitted:
        return cls(reason=refusal_reason(exc), text=str(exc))

    def __repr__(self) -> str:
        return f"Emitted(seq={self.seq})" if self.ok else f"Emitted(refused {self.reason})"


def refusal_reason(exc: MidshiftError) -> str:
    """The stable reason code of a refused event."""
    if isinstance(exc, InvalidEvent):
        return f"invalid:{exc.reason}"
    if isinstance(exc, JournalFull):
        return "journal_full"
    if isinstance(exc, StorageError):
        return "storage"
    return exc.code


class Driver:
    kind = "device"

    def __init__(self, name: str, cfg: dict[str, Any], emit: Emit, clock: Clock) -> None:
        self.name = name
        self.cfg = cfg
        self.clock = clock
        self._emit_fn = emit
        # Set by the agent: its ``emit_many`` (values read together share one sync).
        self.emit_many_fn: Callable[[list[Event]], list[Any]] | None = None
        self.status = DeviceStatus(name, self.kind, clock.now_ms())
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # Told of every state change (name, state, error): the agent journals it.
        self.on_state: Callable[[str, str, str | None], None] | None = None
        self._state_logged = False

    @staticmethod
    def validate_config(name: str, table: dict[str, Any], path: str) -> dict[str, Any]:
        raise NotImplementedError

    def start(self) -> Driver:
        if self._thread is not None:
            raise RuntimeError(f"driver {self.name} already started")
        self._stopping.clear()
        self._thread = threading.Thread(target=self._main, name=f"driver-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        try:
            self._interrupt()
        except Exception:  # noqa: BLE001 - closing a half-dead port must not stop the stop
            log.debug("%s: interrupt failed", self.name, exc_info=True)
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("%s: driver thread did not stop within %.1f s", self.name, timeout_s)
            self._thread = None

    def alive(self) -> bool:
        """The driver's thread runs (False once ``_run`` crashed: the agent restarts it)."""
        return self._thread is not None and self._thread.is_alive()

    def _main(self) -> None:
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 - a driver bug must be visible, not silent
            log.exception("%s: driver loop crashed", self.name)
            self.set_state("error", f"driver crashed: {exc!r}")
            self.status.count("crashes")

    def _run(self) -> None:
        raise NotImplementedError

    def _interrupt(self) -> None:
        """Wake a blocking read so ``_run`` sees the stop flag; default: nothing to wake."""

    def set_state(self, state: str, error: str | None = None) -> None:
        """Logged once per change, never per poll or retry; the first state is logged
        too (a device starts ``disconnected``, and one that never connects says why)."""
        changed = self.status.set(state, self.clock.now_ms(), error)
        if changed or not self._state_logged:
            self._state_logged = True
            level = logging.INFO if state == "ok" else logging.WARNING
            log.log(level, "%s: %s%s", self.name, state, f" ({error})" if error else "")
        if changed and self.on_state is not None:
            self.on_state(self.name, state, error)

    def emit(self, event: Event) -> Emitted:
        """Hand ``event`` to the pipeline: accepted with its seq, or refused (counted,
        logged) with the reason."""
        try:
            seq = self._emit_fn(event)
        except MidshiftError as exc:
            return self._refused(exc)
        self.status.count("events")
        return Emitted(seq if isinstance(seq, int) else None)

    def emit_many(self, events: list[Event]) -> list[Emitted]:
        """``emit`` for values read together (one block, one burst): with the agent's
        ``emit_many_fn`` they are journaled in one hand-over and share one sync, instead
        of waiting for a sync each; without it, one after the other."""
        if self.emit_many_fn is None:
            return [self.emit(event) for event in events]
        if not events:
            return []
        try:
            got = self.emit_many_fn(events)
        except MidshiftError as exc:  # the flash failed: none of them was accepted
            return [self._refused(exc) for _ in events]
        out = []
        for seq in got:
            if isinstance(seq, MidshiftError):
                out.append(self._refused(seq))
            else:
                self.status.count("events")
                out.append(Emitted(seq))
        return out

    def _refused(self, exc: MidshiftError) -> Emitted:
        self.status.count("refused")
        self.status.count(f"refused_{exc.code}")
        self.status.set(self.status.state, self.clock.now_ms(), f"event refused: {exc}")
        log.error("%s: event refused: %s", self.name, exc)
        return Emitted.refused(exc)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if the driver is being stopped."""
        return self._stopping.wait(seconds)
