"""The scanner driver against the scanner emulator on a pty, through pyserial: every scan in
the ground truth comes out once and in order, each fault is rejected and counted and costs
no scan, unplug and replug reconnect, refusals are counted, config errors are clear."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from midshift.firmware.core.errors import ConfigError
from midshift.firmware.edges.clock import SystemClock
from midshift.firmware.edges.scanner import BarcodeScannerDriver
from midshift.simulator.devices.scanner import BarcodeScanner
from tests.integration.event_sink import Sink, wait_until

WAIT_S = 5.0
ICT_MS = 80  # inter-character timeout for the tests: partial lines go after 80 ms


def expected(scanner: BarcodeScanner) -> list[str]:
    return [e["value"] for e in scanner.truth() if e["kind"] == "scan" and e["expect"]]


Rig = tuple[BarcodeScanner, BarcodeScannerDriver, Sink]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    """A started scanner emulator and a started driver on its link; both stopped after,
    and the driver's thread must be gone."""
    made: list[tuple[BarcodeScanner, BarcodeScannerDriver]] = []

    def make(scanner_kw: dict[str, Any] | None = None, **driver_kw: Any) -> Rig:
        link = tmp_path / "scanner1"
        scanner = BarcodeScanner("scanner1", link, seed=11, **(scanner_kw or {})).start()
        table = {"port": str(link), "inter_char_timeout_ms": ICT_MS, **driver_kw}
        cfg = BarcodeScannerDriver.validate_config("scanner1", table, "devices.scanner1")
        sink = Sink()
        driver = BarcodeScannerDriver("scanner1", cfg, sink, SystemClock()).start()
        made.append((scanner, driver))
        assert scanner.wait_client(WAIT_S)
        wait_until(lambda: driver.status.state == "ok")
        return scanner, driver, sink

    yield make
    for scanner, driver in made:
        driver.stop()
        scanner.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith(("driver-", "scanner-"))]


@pytest.mark.parametrize(("scanner_kw", "driver_kw"), [
    ({"terminator": "CR"}, {"terminator": "CR", "charset": "digits", "min_length": 8}),
    ({"terminator": "LF", "prefix": "\x02", "suffix": "\x03", "aim_id": True},
     {"terminator": "LF", "prefix": "\x02", "suffix": "\x03", "aim_id": True,
      "charset": "digits"}),
    ({"terminator": "CRLF", "symbology": "code128", "aim_id": True, "prefix": "SCN:"},
     {"terminator": "CRLF", "aim_id": True, "prefix": "SCN:"}),
])
def test_every_scan_once_in_order(rig: Callable[..., Rig], scanner_kw: dict[str, Any],
                                  driver_kw: dict[str, Any]) -> None:
    scanner, driver, sink = rig(scanner_kw, **driver_kw)
    before_ms = int(time.time() * 1000)
    for _ in range(5):
        scanner.burst(20)  # back to back: many lines per read
        scanner.scan()
    truth = expected(scanner)
    events = sink.wait_count(len(truth))
    assert [e.data["code"] for e in events] == truth
    assert len(truth) == 105
    aim = {"ean13": "]E0", "code128": "]C0"}[scanner.symbology] if scanner.aim_id else None
    assert all(e.kind == "scan" and e.source == "scanner1" and e.data["symbology"] == aim
               for e in events)
    after_ms = int(time.time() * 1000)
    assert all(before_ms <= e.read_ms <= after_ms for e in events)
    assert driver.status.counter("scans") == 105 and driver.status.counter("rejected") == 0
    assert driver.status.counter("events") == 105 and driver.status.state == "ok"


def test_background_rate_matches_ground_truth(rig: Callable[..., Rig]) -> None:
    scanner, driver, sink = rig({"rate_per_s": 200, "burst": 4}, charset="digits")
    sink.wait_count(40)
    truth = expected(scanner)  # the scanner goes on; compare what it had sent by now
    events = sink.wait_count(len(truth))
    assert [e.data["code"] for e in events[:len(truth)]] == truth
    for event in events[:len(truth)]:
        [entry] = [e for e in scanner.truth() if e.get("value") == event.data["code"]]
        assert abs(event.read_ms - entry["t_ms"]) < 500  # stamped when read, not later


def test_card_number_passes_through_unchanged(rig: Callable[..., Rig]) -> None:
    scanner, _, sink = rig(charset="digits")
    scanner.scan("4111111111111111")  # Luhn-valid: the pipeline masks it, not the driver
    [event] = sink.wait_count(1)
    assert event.data == {"code": "4111111111111111", "symbology": None}


def fault_garbage(s: BarcodeScanner) -> None:
    s.garbage(64)


def fault_partial(s: BarcodeScanner) -> None:
    s.partial_then_silence(silence_s=0.3)


def fault_overlong(s: BarcodeScanner) -> None:
    s.overlong(512)


def fault_wrong_baud(s: BarcodeScanner) -> None:
    s.wrong_baud_noise(48)


@pytest.mark.parametrize(("fault", "counter"), [
    (fault_garbage, "rejected_noise"),
    (fault_partial, "rejected_partial"),
    (fault_overlong, "rejected_overlong"),
    (fault_wrong_baud, "rejected_noise"),
])
def test_fault_is_rejected_counted_and_costs_no_scan(rig: Callable[..., Rig], fault: Any,
                                                     counter: str) -> None:
    scanner, driver, sink = rig(charset="digits", min_length=8)
    scanner.scan()
    sink.wait_count(1)
    fault(scanner)
    # Rejected at its terminator or after the inter-character timeout; then nothing pends.
    wait_until(lambda: driver.status.counter(counter) >= 1 and not driver.framer.pending())
    assert driver.status.state == "error"
    assert driver.status.last_error is not None and "line rejected" in driver.status.last_error
    scanner.burst(3)
    truth = expected(scanner)
    events = sink.wait_count(len(truth))
    assert [e.data["code"] for e in events] == truth and len(truth) == 4  # no bogus scan
    assert driver.status.state == "ok"
    assert driver.status.counter("rejected") >= 1
    assert driver.status.counter("scans") == 4


def test_partial_line_is_not_glued_to_the_next_scan(rig: Callable[..., Rig]) -> None:
    scanner, driver, sink = rig(charset="digits")
    assert scanner.port.write(b"400638") == 6  # half a line, as a cut cable leaves it
    wait_until(lambda: driver.status.counter("rejected_partial") == 1)
    scanner.scan("4006381333931")
    [event] = sink.wait_count(1)
    assert event.data["code"] == "4006381333931"


def test_unplug_and_replug_reconnects_and_scans_flow(rig: Callable[..., Rig]) -> None:
    scanner, driver, sink = rig(charset="digits")
    scanner.burst(3)
    sink.wait_count(3)
    scanner.disappear()
    wait_until(lambda: driver.status.state == "disconnected")
    assert driver.status.counter("disconnects") == 1
    assert any(w in (driver.status.last_error or "") for w in ("lost", "cannot open"))
    lost = scanner.scan()  # nobody can receive it: not expected, must not appear
    wait_until(lambda: driver.status.counter("open_failures") >= 2)  # polling for the path
    scanner.reappear()
    assert scanner.wait_client(WAIT_S)
    wait_until(lambda: driver.status.state == "ok")
    assert driver.status.counter("reconnects") == 1
    scanner.burst(3)
    truth = expected(scanner)
    events = sink.wait_count(6)
    assert [e.data["code"] for e in events] == truth and lost not in truth
    # Twice more, quickly: the backoff was reset by the good open.
    for round_ in (2, 3):
        scanner.disappear()
        wait_until(lambda: driver.status.state == "disconnected")
        scanner.reappear()
        assert scanner.wait_client(WAIT_S)
        wait_until(lambda r=round_: driver.status.counter("reconnects") == r)
    scanner.scan()
    assert [e.data["code"] for e in sink.wait_count(7)] == expected(scanner)


def test_journal_full_is_counted_and_reading_goes_on(rig: Callable[..., Rig]) -> None:
    scanner, driver, sink = rig(charset="digits")
    sink.refuse = 2
    sent = scanner.burst(5)
    events = sink.wait_count(3)
    assert [e.data["code"] for e in events] == sent[2:]  # the refused two are lost, loudly
    assert driver.status.counter("refused") == 2
    assert driver.status.counter("refused_journal_full") == 2
    assert driver.status.counter("events") == 3 and driver.status.counter("scans") == 5
    assert "journal full" in (driver.status.last_error or "")
    scanner.scan()
    assert len(sink.wait_count(4)) == 4


def test_stale_without_data_then_ok(rig: Callable[..., Rig]) -> None:
    scanner, driver, sink = rig(charset="digits", stale_s=0.2)
    wait_until(lambda: driver.status.state == "stale")
    scanner.scan()
    sink.wait_count(1)
    assert driver.status.state == "ok"


def test_starts_before_the_scanner_exists(tmp_path: Path) -> None:
    link = tmp_path / "late"
    cfg = BarcodeScannerDriver.validate_config("late", {"port": str(link)}, "devices.late")
    sink = Sink()
    driver = BarcodeScannerDriver("late", cfg, sink, SystemClock()).start()
    try:
        wait_until(lambda: driver.status.counter("open_failures") >= 2)
        assert driver.status.state == "disconnected"
        with BarcodeScanner("late", link) as scanner:
            assert scanner.wait_client(WAIT_S)
            value = scanner.scan()
            assert sink.wait_count(1)[0].data["code"] == value
            assert driver.status.counter("reconnects") == 0  # the first open is no reconnect
    finally:
        driver.stop()


def test_socket_url_and_reconnect_after_the_server_drops() -> None:
    """A scanner behind a serial-to-TCP server: pyserial's socket:// handler, unchanged."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(WAIT_S)
    port = server.getsockname()[1]
    cfg = BarcodeScannerDriver.validate_config(
        "tcp", {"port": f"socket://127.0.0.1:{port}", "terminator": "LF"}, "devices.tcp")
    sink = Sink()
    driver = BarcodeScannerDriver("tcp", cfg, sink, SystemClock()).start()
    try:
        conn, _ = server.accept()
        # pyserial empties its input right after connecting: send once the open is over.
        wait_until(lambda: driver.status.state == "ok")
        conn.sendall(b"ABC-1\nABC-2\n")
        sink.wait_count(2)
        conn.close()
        wait_until(lambda: driver.status.counter("disconnects") == 1)
        conn, _ = server.accept()
        wait_until(lambda: driver.status.counter("reconnects") == 1
                   and driver.status.state == "ok")
        conn.sendall(b"ABC-3\n")
        assert sink.wait_count(3) and sink.codes() == ["ABC-1", "ABC-2", "ABC-3"]
        conn.close()
    finally:
        driver.stop()
        server.close()


def test_defaults_are_filled() -> None:
    cfg = BarcodeScannerDriver.validate_config("s", {"port": "/dev/ttyUSB0"}, "devices.s")
    assert cfg == {"port": "/dev/ttyUSB0", "baudrate": 9600, "terminator": "CR", "prefix": "",
                   "suffix": "", "min_length": 1, "max_length": 64,
                   "charset": "ascii_printable", "aim_id": False, "inter_char_timeout_ms": 200,
                   "stale_s": None}


@pytest.mark.parametrize(("table", "key", "words"), [
    ({}, "port", ["is required"]),
    ({"port": ""}, "port", ["empty"]),
    ({"port": "tcp://1.2.3.4:5"}, "port", ["'tcp'", "socket://"]),
    ({"port": 5}, "port", ["5", "string"]),
    ({"baud": 9600}, "baud", ["not a known key", "baudrate"]),
    ({"baudrate": 9601}, "baudrate", ["9601", "9600, 19200"]),
    ({"baudrate": "9600"}, "baudrate", ["'9600'", "integer"]),
    ({"terminator": "CRCR"}, "terminator", ["'CRCR'", "CR, LF, CRLF"]),
    ({"prefix": "\u20ac"}, "prefix", ["8-bit"]),
    ({"prefix": "a\r", "terminator": "CR"}, "prefix", ["terminator"]),
    ({"suffix": 3}, "suffix", ["3"]),
    ({"max_length": 0}, "max_length", ["0", "1 to 4096"]),
    ({"min_length": 9, "max_length": 8}, "min_length", ["max_length"]),
    ({"charset": "hex"}, "charset", ["'hex'", "digits", "chars:"]),
    ({"charset": "chars:\u00e9"}, "charset", ["7-bit"]),
    ({"aim_id": "yes"}, "aim_id", ["'yes'", "true or false"]),
    ({"inter_char_timeout_ms": 0}, "inter_char_timeout_ms", ["0", "60000"]),
    ({"inter_char_timeout_ms": 1.5}, "inter_char_timeout_ms", ["1.5", "integer"]),
    ({"stale_s": -1}, "stale_s", ["-1", "above 0"]),
    ({"stale_s": True}, "stale_s", ["True"]),
])
def test_validate_config_errors(table: dict[str, Any], key: str, words: list[str]) -> None:
    if key != "port" and "port" not in table:
        table = {"port": "/dev/ttyUSB0", **table}
    with pytest.raises(ConfigError) as info:
        BarcodeScannerDriver.validate_config("s1", table, "devices.s1")
    assert info.value.key == f"devices.s1.{key}"
    for word in words:
        assert word in str(info.value), str(info.value)


def test_no_fd_leak_across_reconnects(tmp_path: Path) -> None:
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = fds()
    link = tmp_path / "s"
    with BarcodeScanner("s", link) as scanner:
        cfg = BarcodeScannerDriver.validate_config("s", {"port": str(link)}, "devices.s")
        sink = Sink()
        driver = BarcodeScannerDriver("s", cfg, sink, SystemClock()).start()
        try:
            for n in (1, 2, 3):
                assert scanner.wait_client(WAIT_S)
                wait_until(lambda: driver.status.state == "ok")
                scanner.scan()
                sink.wait_count(n)
                scanner.disappear()
                wait_until(lambda: driver.status.state == "disconnected")
                scanner.reappear()
        finally:
            driver.stop()
    assert fds() == before
