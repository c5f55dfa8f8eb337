"""The barcode scanner emulator seen by a real pyserial client on its pty: line format byte
for byte, generated barcodes, rate and bursts, each fault, unplug and replug, no fd leaks."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import serial

from midshift.simulator.devices.pty_port import PtyPort
from midshift.simulator.devices.scanner import BarcodeScanner
from midshift.simulator.ground_truth import read_ground_truth

CLIENT_TIMEOUT_S = 2.0


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def gs1_check_digit(first12: str) -> int:
    """Written apart from the emulator's: odd positions (1-based) weigh 1, even weigh 3."""
    odd = sum(int(first12[i]) for i in range(0, 12, 2))
    even = sum(int(first12[i]) for i in range(1, 12, 2))
    return (10 - (odd + 3 * even) % 10) % 10


def valid_ean13(code: str) -> bool:
    return len(code) == 13 and code.isdigit() and int(code[12]) == gs1_check_digit(code[:12])


@pytest.fixture
def make_scanner(tmp_path: Path) -> Iterator[Callable[..., tuple[BarcodeScanner, serial.Serial]]]:
    """Start a scanner and open a pyserial client on its stable link; both closed after."""
    opened: list[tuple[BarcodeScanner, serial.Serial]] = []

    def make(name: str = "scanner1", link: str | None = None,
             **kwargs: object) -> tuple[BarcodeScanner, serial.Serial]:
        path = tmp_path / (link or name)
        scanner = BarcodeScanner(name, path, **kwargs).start()  # type: ignore[arg-type]
        client = serial.Serial(str(path), baudrate=9600, timeout=CLIENT_TIMEOUT_S)
        opened.append((scanner, client))
        assert scanner.wait_client(CLIENT_TIMEOUT_S)
        return scanner, client

    yield make
    for scanner, client in opened:
        client.close()
        scanner.stop()


def read_until_quiet(client: serial.Serial, quiet_s: float, max_reads: int = 200) -> bytes:
    """Everything the client receives until nothing comes for ``quiet_s``."""
    client.timeout = quiet_s
    data = b""
    for _ in range(max_reads):
        chunk = client.read(4096)
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"still receiving after {max_reads} reads")


@pytest.mark.parametrize(("terminator", "term_bytes"),
                         [("CR", b"\r"), ("LF", b"\n"), ("CRLF", b"\r\n")])
@pytest.mark.parametrize(("prefix", "suffix", "aim_id", "head"), [
    ("", "", False, b""),
    ("\x02", "\x03", True, b"\x02]E0"),
    ("SCN:", "", True, b"SCN:]E0"),
])
def test_scan_line_is_byte_exact(make_scanner: Callable[..., tuple[BarcodeScanner, serial.Serial]],
                                 terminator: str, term_bytes: bytes, prefix: str, suffix: str,
                                 aim_id: bool, head: bytes) -> None:
    scanner, client = make_scanner(prefix=prefix, suffix=suffix, terminator=terminator,
                                   aim_id=aim_id)
    scanner.scan("4006381333931")
    expected = head + b"4006381333931" + suffix.encode("latin-1") + term_bytes
    assert client.read(len(expected)) == expected
    [entry] = scanner.truth()
    assert (entry["kind"], entry["value"], entry["expect"]) == ("scan", "4006381333931", True)


def test_generated_ean13_valid_unique_and_deterministic(
        make_scanner: Callable[..., tuple[BarcodeScanner, serial.Serial]]) -> None:
    runs = []
    for link in ("first", "second"):  # the same device (name and seed) twice
        scanner, client = make_scanner(name="scanner1", link=link, seed=7, terminator="LF")
        sent = scanner.burst(20)
        lines = [client.readline() for _ in range(20)]
        codes = [line.rstrip(b"\n").decode() for line in lines]
        assert all(line.endswith(b"\n") for line in lines)
        assert codes == sent
        assert all(valid_ean13(c) for c in codes), codes
        assert len(set(codes)) == 20
        assert [e["value"] for e in scanner.truth() if e["expect"]] == codes
        runs.append(codes)
    assert runs[0] == runs[1]  # same seed and device: same sequence
    other, _ = make_scanner(name="scanner2", seed=7, terminator="LF")
    assert not set(other.burst(20)) & set(runs[0])  # another device: other codes


def test_code128_with_aim_identifier(
        make_scanner: Callable[..., tuple[BarcodeScanner, serial.Serial]]) -> None:
    scanner, client = make_scanner(symbology="code128", aim_id=True, terminator="CRLF")
    values = scanner.burst(3)
    for value in values:
        line = client.read_until(b"\r\n")
        assert line == b"]C0" + value.encode() + b"\r\n"
        assert re.fullmatch(r"[\x20-\x7e]+", value)
    assert len(set(values)) == 3


def test_rate_and_bursts_arrive_in_order(
        make_scanner: Callable[..., tuple[BarcodeScanner, serial.Serial]]) -> None:
    # 40 scans/s in bursts of 4: a burst every 0.1 s, 12 scans need at least two gaps.
    scanner, client = make_scanner(rate_per_s=40, burst=4, terminator="CR")
    t0 = time.monotonic()
    lines = [client.read_until(b"\r") for _ in range(12)]
    elapsed_s = time.monotonic() - t0
    codes = [line[:-1].decode() for line in lines]
    assert all(line.endswith(b"\r") and valid_ean13(line[:-1].decode()) for line in lines)
    counters = [int(c[5:12]) for c in codes]
    assert counters == sorted(counters) and len(set(counters)) == 12
    assert elapsed_s >= 0.15
    # Expected entries are exactly what reached the client, in order (scans made before
    # it had the port open are logged as not expected).
    delivered = [e["value"] for e in scanner.truth() if e["expect"]]
    assert delivered[:12] == codes


def test_garbage_arrives_as_bytes_then_scans_go_on(
        make_scanner: Callable[..., tuple[BarcodeScanner, serial.Serial]]) -> None:
    scanner, client = make_scanner(terminator="CR")
    noise = scanner.garbage(64)
    value = scanner.scan()
    assert len(noise) == 64
    assert client.read(64 + 14) == noise + value.encode() + b"\r"
    fault = scanner.truth()[0]
    assert (fault["kind"], fault["fault"], fault["expect"]) == ("fault", "garbage", False)
    assert bytes.fromhex(fault["value"]) == noise
    # Deterministic: the same seed and name give the same noise.
    twin, twin_client = make_scanner(name="scanner1", link="twin", terminator="CR")
    assert twin.garbage(64) == noise
    assert twin_client.read(64) == noise


def test_partial_line_then_silence(
        make_scanner: Callable[..., tuple[BarcodeScanner, serial.Serial]]) -> None:
    # Background scans at 20/s would send 10 lines in the silence window; none may come.
    scanner, client = make_scanner(rate_per_s=20, terminator="CRLF")
    assert client.read_until(b"\r\n").endswith(b"\r\n")  # the thread is scanning
    partial = scanner.partial_then_silence(silence_s=3.0)
    received = read_until_quiet(client, quiet_s=0.6)
    assert received.endswith(partial)
    assert b"\r" not in partial and b"\n" not in partial and len(partial) >= 5
    before = received[: len(received) - len(partial)]
    assert before == b"" or before.endswith(b"\r\n")  # only whole lines before the cut
    fault = [e for e in scanner.truth() if e["kind"] == "fault"][-1]
    assert fault["fault"] == "partial" and bytes.fromhex(fault["value"]) == partial


def test_overlong_line(make_scanner: Callable[..., tuple[BarcodeScanner, serial.Serial]]) -> None:
    scanner, client = make_scanner(terminator="LF")
    sent = scanner.overlong(1000)
    line = client.readline()
    assert line == sent and len(line) == 1001 and line.endswith(b"\n")
    assert all(0x21 <= b < 0x7F for b in line[:-1])
    value = scanner.scan()
    assert client.readline() == value.encode() + b"\n"  # the next scan is whole again
    assert scanner.truth()[0]["fault"] == "overlong"


def test_wrong_baud_noise(make_scanner: Callable[..., tuple[BarcodeScanner, serial.Serial]]) -> None:
    scanner, client = make_scanner()
    noise = scanner.wrong_baud_noise(48)
    assert client.read(48) == noise
    assert all(b == 0x00 or b >= 0x80 for b in noise)  # high-bit junk and NUL, never CR/LF
    assert re.search(rb"\x00\x00", noise) and re.search(rb"\xff\xff", noise)
    entry = scanner.truth()[0]
    assert (entry["fault"], entry["expect"]) == ("wrong_baud", False)


def test_disappear_then_reappear_on_the_same_link(
        make_scanner: Callable[..., tuple[BarcodeScanner, serial.Serial]], tmp_path: Path) -> None:
    scanner, client = make_scanner(terminator="CR")
    link = tmp_path / "scanner1"
    old_pty = os.readlink(link)
    scanner.disappear()
    with pytest.raises(serial.SerialException):
        client.read(1)  # the kernel hung up the tty under the client
    client.close()
    assert not link.exists()
    with pytest.raises(serial.SerialException):
        serial.Serial(str(link), timeout=0.2)  # unplugged: nothing to open
    lost = scanner.scan()
    entry = scanner.truth()[-1]
    assert (entry["value"], entry["expect"], entry["fault"]) == (lost, False, "port_gone")
    scanner.reappear()
    assert link.is_symlink() and os.readlink(link).startswith("/dev/pts/")
    with serial.Serial(str(link), timeout=CLIENT_TIMEOUT_S) as again:
        assert scanner.wait_client(CLIENT_TIMEOUT_S)
        value = scanner.scan()
        assert again.read_until(b"\r") == value.encode() + b"\r"
    assert old_pty.startswith("/dev/pts/")  # it was a pty; the new one may reuse its number


def test_scans_while_no_client_listens_are_not_expected(tmp_path: Path) -> None:
    with BarcodeScanner("lonely", tmp_path / "lonely") as scanner:
        value = scanner.scan()
        entry = scanner.truth()[-1]
        assert (entry["value"], entry["expect"], entry["fault"]) == (value, False, "no_client")


def test_pty_port_link_and_no_fd_leak(tmp_path: Path) -> None:
    before = fd_count()
    port = PtyPort(tmp_path / "port").open()
    first = port.path
    assert os.readlink(tmp_path / "port") == first
    with serial.Serial(str(tmp_path / "port"), timeout=CLIENT_TIMEOUT_S) as client:
        assert port.wait_client(CLIENT_TIMEOUT_S)
        assert port.write(b"ping\r\n") == 6
        assert client.read(6) == b"ping\r\n"
        client.write(b"pong")
        assert port.read(timeout_s=CLIENT_TIMEOUT_S) == b"pong"
    port.disappear()
    assert port.path == "" and not (tmp_path / "port").exists()
    assert port.write(b"lost") == 0 and port.last_drop == "port_gone"
    port.reappear()
    assert os.readlink(tmp_path / "port") == port.path
    port.close()
    assert not (tmp_path / "port").exists()
    assert fd_count() == before


def test_scanner_leaks_no_fds(tmp_path: Path) -> None:
    before = fd_count()
    with BarcodeScanner("s", tmp_path / "s", rate_per_s=50) as scanner:
        with serial.Serial(str(tmp_path / "s"), timeout=CLIENT_TIMEOUT_S) as client:
            assert scanner.wait_client(CLIENT_TIMEOUT_S)
            assert client.read_until(b"\r").endswith(b"\r")
        scanner.disappear()
        scanner.reappear()
        scanner.garbage(8)
    assert fd_count() == before


def test_from_config_writes_ground_truth_file(tmp_path: Path) -> None:
    cfg = {"kind": "scanner", "path": str(tmp_path / "dev" / "scan1"), "seed": 3,
           "terminator": "CRLF", "prefix": ">", "aim_id": True, "rate_per_s": 0, "burst": 2}
    scanner = BarcodeScanner.from_config("scan1", cfg, tmp_path / "truth")
    with scanner, serial.Serial(cfg["path"], timeout=CLIENT_TIMEOUT_S) as client:
        assert scanner.wait_client(CLIENT_TIMEOUT_S)
        value = scanner.scan()
        assert client.read_until(b"\r\n") == b">]E0" + value.encode() + b"\r\n"
        described = scanner.describe()
        assert described["name"] == "scan1" and described["kind"] == "scanner"
        assert described["path"] == cfg["path"] and described["pty"].startswith("/dev/pts/")
    [entry] = read_ground_truth(tmp_path / "truth" / "scan1.jsonl")
    assert (entry["device"], entry["kind"], entry["value"], entry["expect"]) == \
        ("scan1", "scan", value, True)


@pytest.mark.parametrize(("cfg", "words"), [
    ({"baud": 9600}, ["baud", "allowed"]),
    ({"kind": "scale"}, ["kind", "'scale'", "'scanner'"]),
    ({"terminator": "CRCR"}, ["terminator", "'CRCR'", "CR, LF, CRLF"]),
    ({"symbology": "qr"}, ["symbology", "'qr'", "ean13"]),
    ({"rate_per_s": -1}, ["rate_per_s", "-1", "0"]),
    ({"rate_per_s": "fast"}, ["rate_per_s", "'fast'"]),
    ({"burst": 0}, ["burst", "0", "1 to 1000"]),
    ({"aim_id": "yes"}, ["aim_id", "'yes'", "true or false"]),
    ({"prefix": "\u20ac"}, ["prefix", "8-bit"]),
    ({"seed": 1.5}, ["seed", "1.5", "integer"]),
])
def test_from_config_rejects_bad_keys_and_values(tmp_path: Path, cfg: dict, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        BarcodeScanner.from_config("scan1", {"path": str(tmp_path / "s"), **cfg}, None)
    message = str(info.value)
    assert "devices.scan1" in message
    for word in words:
        assert word in message, message
