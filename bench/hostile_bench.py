"""Hostile-input benchmark: what forged, unstorable and inflating batches cost the ledger.

Everything over loopback: a real mosquitto (``midshift/simulator/broker.py``), the ledger as its own
process (``python -m midshift.host_tools ledger serve`` on SQLite), gateways and attackers as paho
clients. Each figure is measured beside a baseline in the same run:

- ``honest_ingest_ratio_under_flood``: virtual gateways (``midshift/simulator/fleet.py``) drain a
  backlog with and without a forger publishing 3,000 forged batches (another key, on an
  honest gateway's topic) spread over the baseline's drain time, from its own process;
  honest events/s during the flood divided by events/s without it (target >= 0.9). The
  median of 5 alternating pairs (1 with ``--quick``, whose shorter drain makes the same
  3,000 batches a denser flood: a smoke test, not the figure).
- ``ledger_rss_growth_mb_bomb``: the ledger process's peak RSS (``VmHWM``, reset first)
  minus its RSS before a 1 MiB batch with a valid HMAC that inflates to 1 GiB, until its
  ``too_large`` rejected ack arrives (target <= 50); baseline ``unbounded_rss_growth_mb_bomb``:
  ``zlib.decompress`` of the same payload in a child process (what the ledger did before).
- ``poison_stall_s``: an honest gateway publishes a batch every 20 ms; meanwhile another
  registered gateway sends 100 batches with valid HMACs the store cannot hold (seq 2**63,
  sent_ms and HLC past 2**63, a body that is not UTF-8); the longest gap between the honest
  gateway's acks from the first poison batch until the last rejected ack (target <= 1).
  Baseline ``poison_stall_baseline_s``: the longest gap over the same stretch without poison.
- ``forged_acks_reclaimed``: a real agent (``midshift/simulator/lab.py``) with its ledger stopped
  journals events; a forger reads its batches off the broker and answers each with acks
  signed with a wrong key, unsigned, and version 1; the journal records reclaimed
  (committed_seq moved) (target 0). Control ``right_key_acks_reclaimed``: the same acks
  signed with the gateway's key do reclaim, which shows the measurement can see it.

``python -m bench.hostile_bench flood URL TOPIC GATEWAY N SECONDS`` is the forger process.
"""

from __future__ import annotations

import functools
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from midshift.firmware.core import topics
from midshift.firmware.core.percentile import percentile
from midshift.firmware.core.signing import Signer
from midshift.firmware.core.wire import (
    FIXED,
    FLAG_ZLIB,
    MAGIC,
    VERSION,
    Batch,
    decode_ack,
    encode_batch,
)
from midshift.firmware.edges import paho_client
from midshift.simulator.broker import Broker

ROOT = Path(__file__).resolve().parents[1]
SITE = "hostile"
HONEST, POISON = "gw-honest", "gw-poison"
KEYS = {HONEST: bytes(range(32)), POISON: bytes(range(32, 64))}
TOO_BIG = 1 << 63  # one past what a signed 64-bit INTEGER holds


# -- batches ---------------------------------------------------------------------------------

def body(seq: int) -> bytes:
    return b'{"v":1,"src":"scanner","k":"scan","t":1700000000000,"d":{"code":"%08d"}}' % seq


def honest_batch(gw: str, first: int, n: int = 10, epoch: int = 1) -> bytes:
    recs = [(s, 0, s, body(s)) for s in range(first, first + n)]
    return encode_batch(Signer(KEYS[gw]), Batch(gw, epoch, recs, int(time.time() * 1000)))


def raw_batch(signer: Signer, gw: str, epoch: int, first: int, last: int, count: int,
              sent_ms: int, payload: bytes, flags: int = 0) -> bytes:
    """A batch built field by field (``encode_batch`` refuses most of what is tested)."""
    g = gw.encode()
    head = (MAGIC + bytes((VERSION, flags, len(g))) + g
            + struct.pack(FIXED, epoch, first, last, count, sent_ms, len(payload)))
    return head + payload + signer.sign(head, payload)


def record(seq: int, hlc: int, data: bytes) -> bytes:
    return struct.pack("<QBQI", seq, 0, hlc, len(data)) + data


def poison_batch(gw: str, i: int, epoch: int = 1) -> bytes:
    """A batch with a valid HMAC the store cannot hold; ``i`` picks what is wrong."""
    s = Signer(KEYS[gw])
    kind = i % 4
    seq = TOO_BIG + i if kind == 0 else 1_000_000 + i
    sent = (1 << 64) - 1 if kind == 1 else int(time.time() * 1000)
    hlc = (1 << 64) - 2 if kind == 2 else seq
    data = b"\xff\xfe not UTF-8" if kind == 3 else body(seq)
    return raw_batch(s, gw, epoch, seq, seq, 1, sent, record(seq, hlc, data))


@functools.lru_cache(maxsize=1)
def _zeros_deflated(size: int) -> bytes:
    c = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    return b"".join([c.compress(chunk) for _ in range(size >> 20)] + [c.flush()])


def bomb_batch(gw: str, inflated: int = 1 << 30, first: int = 500_000) -> bytes:
    """About 1 MiB on the wire, ``inflated`` bytes of zeros once inflated, valid HMAC."""
    return raw_batch(Signer(KEYS[gw]), gw, 1, first, first, 1, int(time.time() * 1000),
                     _zeros_deflated(inflated), flags=FLAG_ZLIB)


# -- processes and clients -------------------------------------------------------------------

class LedgerProcess:
    """``python -m midshift.host_tools ledger serve`` on SQLite, as its own process."""

    def __init__(self, tmp: Path, broker_url: str, keys: dict[str, bytes],
                 db: str | None = None) -> None:
        keyfile = tmp / f"keys-{time.monotonic_ns()}.toml"
        keyfile.write_text("[gateways]\n" + "".join(f'"{g}" = "{k.hex()}"\n'
                                                      for g, k in keys.items()))
        self.db = db or f"sqlite:///{tmp / f'ledger-{time.monotonic_ns()}.db'}"
        self.log = tmp / f"ledger-{time.monotonic_ns()}.log"  # its rejections, one a minute
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "midshift.host_tools", "ledger", "serve", "--db", self.db,
                 "--broker", broker_url, "--keys", str(keyfile), "--log-level", "WARNING"],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
        assert self.proc.stdout is not None
        if not self.proc.stdout.readline().startswith("ledger: serving"):
            raise RuntimeError(f"the ledger did not start ({self.proc.wait(10)}): "
                               f"{self.log.read_text()[-2000:]}")

    def _status_kb(self, field: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"no {field} for the ledger process")

    def rss_kb(self) -> int:
        return self._status_kb("VmRSS")

    def peak_kb(self) -> int:
        return self._status_kb("VmHWM")

    def reset_peak(self) -> None:
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)

    def __enter__(self) -> LedgerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Gateways:
    """One MQTT connection publishing for ``names`` and hearing their acks, each ack
    decoded with the gateway's key and kept as (monotonic time, gw, first, status, reason)."""

    def __init__(self, broker_url: str, names: list[str]) -> None:
        host, port = broker_url.removeprefix("mqtt://").rsplit(":", 1)
        self.acks: list[tuple[float, str, int, str, str | None]] = []
        self.bad_acks = 0
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = paho_client.new_client(client_id=f"bench-gw-{time.monotonic_ns()}")
        self.client.max_inflight_messages_set(0)
        self.client.on_connect = lambda c, *a: c.subscribe(
            [(topics.topic(SITE, n, topics.ACK), 1) for n in names])
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._on_ack
        self.client.connect(host, int(port), keepalive=30)
        self.client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("bench gateways: no subscription")

    def _on_ack(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        where = topics.split(msg.topic)
        gw = where[1] if where else ""
        try:
            _, first, _, _, status = decode_ack(msg.payload, Signer(KEYS[gw]))
            reason = json.loads(msg.payload).get("reason")
        except Exception:  # noqa: BLE001 - counted, the figure says what it means
            with self._lock:
                self.bad_acks += 1
            return
        with self._lock:
            self.acks.append((time.monotonic(), gw, first, status, reason))

    def publish(self, gw: str, data: bytes) -> None:
        self.client.publish(topics.topic(SITE, gw, topics.EVENTS), data, qos=1)

    def of(self, gw: str, status: str | None = None) -> list[tuple[float, int, str | None]]:
        with self._lock:
            return [(t, f, r) for t, g, f, s, r in self.acks
                    if g == gw and (status is None or s == status)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(cond: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


# -- measurements ----------------------------------------------------------------------------

def _mqtt_packet(kind: int, body: bytes) -> bytes:
    """One MQTT 3.1.1 control packet: fixed header (type, remaining length) and body."""
    n, length = len(body), b""
    while True:
        n, digit = n >> 7, n & 0x7F
        length += bytes((digit | (0x80 if n else 0),))
        if not n:
            return bytes((kind,)) + length + body


def flood_main(url: str, topic: str, gateway: str, n: str, seconds: str) -> None:
    """The forger: ``n`` forged batches (another key) on ``topic`` at QoS 1, evenly over
    ``seconds``, started by a line on stdin once it has said ``ready``. It speaks MQTT
    over a bare socket with every packet built beforehand, as a flood tool would: the
    flood's cost lands on the broker and the ledger, not on a client library here."""
    import socket

    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    wrong = Signer(b"\x66" * 32)
    name = topic.encode()
    packets = []
    for i in range(int(n)):
        data = encode_batch(wrong, Batch(gateway, 1, [(s, 0, s, body(s)) for s in
                                                      range(i * 10 + 1, i * 10 + 11)], 0))
        packets.append(_mqtt_packet(0x32, struct.pack(">H", len(name)) + name
                                    + struct.pack(">H", i % 65535 + 1) + data))
    cid = f"forger-{os.getpid()}".encode()
    connect = (struct.pack(">H", 4) + b"MQTT" + bytes((4, 0x02)) + struct.pack(">H", 30)
               + struct.pack(">H", len(cid)) + cid)
    sock = socket.create_connection((host, int(port)))
    sock.sendall(_mqtt_packet(0x10, connect))
    if sock.recv(4)[:1] != b"\x20":
        raise RuntimeError("the forger got no CONNACK")
    drain = threading.Thread(target=lambda: [None for _ in iter(lambda: sock.recv(65536), b"")],
                             daemon=True)  # PUBACKs, read and dropped
    drain.start()
    print("ready", flush=True)
    sys.stdin.readline()
    t0, step = time.monotonic(), float(seconds) / len(packets)
    for i, packet in enumerate(packets):
        delay = t0 + i * step - time.monotonic()
        if delay > 0.001:
            time.sleep(delay)  # pacing the flood over the honest drain
        sock.sendall(packet)
    print(f"sent {len(packets)} in {time.monotonic() - t0:.2f} s", flush=True)
    time.sleep(1)
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()


def _ingest(tmp: Path, gateways: int, backlog: int, flood_s: float | None,
            forged: int) -> dict[str, Any]:
    from midshift.simulator.fleet import Fleet

    with Broker(tmp / f"broker-{time.monotonic_ns()}") as broker:
        fleet = Fleet(broker.url, gateways=gateways, backlog=backlog, batch_events=500,
                      window=8, site=SITE).prepare()
        with LedgerProcess(tmp, broker.url, fleet.keys()):
            forger = None
            if flood_s is not None:
                victim = fleet.gateways[0].name
                forger = subprocess.Popen(
                    [sys.executable, "-m", "bench.hostile_bench", "flood", broker.url,
                     topics.topic(SITE, victim, topics.EVENTS), victim, str(forged),
                     str(flood_s)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    text=True)
                assert forger.stdin is not None and forger.stdout is not None
                if forger.stdout.readline().strip() != "ready":
                    raise RuntimeError("the forger did not start")
                forger.stdin.write("go\n")
                forger.stdin.flush()
            try:
                result = fleet.run(300)
            finally:
                if forger is not None:
                    forger.wait(60)
    if not result["drained"]:
        raise RuntimeError(f"the fleet did not drain: {result}")
    return result


def measure_flood(tmp: Path, quick: bool, say: Callable[[str], None]) -> dict[str, Any]:
    gateways, backlog = (4, 25000) if quick else (4, 100000)
    pairs = 1 if quick else 5
    base, flood, drains = [], [], []
    flood_s = 0.0
    for i in range(pairs):
        # Alternating which goes first, so neither gains from running second; the flood
        # is spread over the first baseline's drain time.
        for which in ("base", "flood") if i % 2 == 0 else ("flood", "base"):
            if which == "base":
                say(f"ingest without a flood ({i + 1}/{pairs})")
                r = _ingest(tmp, gateways, backlog, None, 0)
                base.append(r["events_per_s"])
                flood_s = flood_s or r["drain_s"]
            else:
                say(f"ingest during a 3,000-batch forged flood over {flood_s} s "
                    f"({i + 1}/{pairs})")
                r = _ingest(tmp, gateways, backlog, flood_s, 3000)
                flood.append(r["events_per_s"])
                drains.append(r["drain_s"])
    ratios = [f / b for f, b in zip(flood, base, strict=True)]
    return {"honest_ingest_ratio_under_flood": round(percentile(ratios, 0.5), 3),
            "honest_ingest_ratio_samples": [round(r, 3) for r in ratios],
            "honest_events_per_s_baseline": percentile(base, 0.5),
            "honest_events_per_s_flood": percentile(flood, 0.5),
            "flood_forged_batches": 3000, "flood_honest_events": gateways * backlog,
            "flood_spread_s": flood_s, "flood_run_drain_s": drains}


def _unbounded_rss_growth_mb(payload: bytes) -> float:
    code = ("import resource, sys, zlib\n"
            "d = sys.stdin.buffer.read()\n"
            "r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "zlib.decompress(d)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r0)\n")
    out = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True,
                         timeout=120, check=True)
    return round(int(out.stdout) / 1024, 1)


def measure_bomb(tmp: Path, say: Callable[[str], None]) -> dict[str, Any]:
    say("zip bomb: 1 MiB -> 1 GiB with a valid HMAC")
    bomb = bomb_batch(HONEST)
    with Broker(tmp / "broker-bomb") as broker, LedgerProcess(tmp, broker.url, KEYS) as ledger:
        gws = Gateways(broker.url, [HONEST])
        try:
            gws.publish(HONEST, honest_batch(HONEST, 1))  # warm: every code path loaded
            if not wait_until(lambda: len(gws.of(HONEST)) == 1, 15):
                raise RuntimeError("no ack for the warm-up batch")
            time.sleep(0.3)
            ledger.reset_peak()
            before = ledger.rss_kb()
            gws.publish(HONEST, bomb)
            if not wait_until(lambda: len(gws.of(HONEST, "rejected")) == 1, 60):
                raise RuntimeError("no rejected ack for the bomb")
            growth = round(max(0, ledger.peak_kb() - before) / 1024, 1)
            reason = gws.of(HONEST, "rejected")[0][2]
        finally:
            gws.close()
    payload = bomb[7 + len(HONEST) + struct.calcsize(FIXED):-32]
    unbounded = _unbounded_rss_growth_mb(payload)
    return {"ledger_rss_growth_mb_bomb": growth, "unbounded_rss_growth_mb_bomb": unbounded,
            "bomb_rss_vs_unbounded": round(growth / unbounded, 4) if unbounded else None,
            "bomb_wire_bytes": len(bomb), "bomb_reject_reason": reason}


def _ack_gaps(tmp: Path, poison: int) -> tuple[float, int]:
    """Longest gap in the honest gateway's acks while ``poison`` unstorable batches come
    (the stretch from the first until every one is answered, or 2 s without poison);
    returns (gap, rejected acks for the poison)."""
    with Broker(tmp / f"broker-poison-{poison}") as broker, \
            LedgerProcess(tmp, broker.url, KEYS):
        gws = Gateways(broker.url, [HONEST, POISON])
        stop = threading.Event()

        def honest() -> None:
            seq = 1
            while not stop.is_set():
                gws.publish(HONEST, honest_batch(HONEST, seq))
                seq += 10
                time.sleep(0.02)  # an honest gateway's steady pace
        t = threading.Thread(target=honest, daemon=True)
        try:
            t.start()
            if not wait_until(lambda: len(gws.of(HONEST)) >= 10, 15):
                raise RuntimeError("the honest gateway gets no acks")
            t0 = time.monotonic()
            for i in range(poison):
                gws.publish(POISON, poison_batch(POISON, i))
                time.sleep(0.01)
            answered = wait_until(lambda: len(gws.of(POISON)) >= poison, 30)
            t1 = max(time.monotonic(), t0 + 2.0)
            wait_until(lambda: time.monotonic() > t1 + 0.2, 5)
            stop.set()
            t.join(5)
            times = [t0] + [a for a, _, _ in gws.of(HONEST) if t0 <= a <= t1] + [t1]
            gap = max(b - a for a, b in zip(times, times[1:], strict=False))
            if not answered:
                gap = max(gap, 30.0)
            return round(gap, 3), len(gws.of(POISON, "rejected"))
        finally:
            stop.set()
            gws.close()


def measure_poison(tmp: Path, say: Callable[[str], None]) -> dict[str, Any]:
    say("poison: 100 unstorable batches beside an honest gateway")
    base, _ = _ack_gaps(tmp, 0)
    gap, rejected = _ack_gaps(tmp, 100)
    return {"poison_stall_s": gap, "poison_stall_baseline_s": base,
            "poison_stall_vs_baseline": round(gap / base, 2) if base else None,
            "poison_rejected_acks": rejected, "poison_batches": 100}


def _ack_forger(lab: Any, key: bytes | None) -> int:
    """Answer every batch the lab's agent sends with acks signed by ``key`` (None: the
    forger's three forms: another key, unsigned, version 1); returns the records the
    agent reclaimed (its committed seq moved) meanwhile."""
    from midshift.firmware.core.wire_ledger import encode_ack

    agent = lab.agent
    seen: list[tuple[int, int, int]] = []
    c = paho_client.new_client(client_id=f"ackforger-{time.monotonic_ns()}")
    ready = threading.Event()
    c.on_connect = lambda cl, *a: cl.subscribe(topics.topic("lab", "gw-t", topics.EVENTS), 1)
    c.on_subscribe = lambda *a: ready.set()

    def on_batch(cl: mqtt.Client, ud: Any, msg: mqtt.MQTTMessage) -> None:
        p = msg.payload
        epoch, first, last = struct.unpack_from("<QQQ", p, 7 + p[6])
        seen.append((epoch, first, last))
        forms = []
        if key is not None:
            forms.append(encode_ack(Signer(key), epoch, first, last, int(time.time() * 1000)))
        else:
            signed = encode_ack(Signer(b"\x13" * 32), epoch, first, last, 1)
            forms.append(signed)
            forms.append(signed[:signed.rfind(b',"sig"')] + b"}")
            forms.append(json.dumps({"v": 1, "epoch": epoch, "first": first, "last": last,
                                     "ledger_ms": 1, "status": "ok"}).encode())
        for data in forms:
            cl.publish(topics.topic("lab", "gw-t", topics.ACK), data, qos=1)
    c.on_message = on_batch
    c.connect("127.0.0.1", lab.broker.port, keepalive=30)
    c.loop_start()
    try:
        if not ready.wait(10):
            raise RuntimeError("ack forger: no subscription")
        before = agent.journal.stats()["committed_seq"]
        lab.emit(50)
        wait_until(lambda: len(seen) >= 1, 10)
        time.sleep(2.5)  # commits are batched every 500 ms; resends after 1.5 s
        return agent.journal.stats()["committed_seq"] - before
    finally:
        c.disconnect()
        c.loop_stop()


def measure_forged_acks(tmp: Path, say: Callable[[str], None]) -> dict[str, Any]:
    from midshift.simulator.lab import KEY, Lab

    out = {}
    for name, key in (("forged_acks_reclaimed", None), ("right_key_acks_reclaimed", KEY)):
        say(f"acks with the ledger stopped: {name}")
        lab = Lab(tmp / name, uplinks=1, direct=True)
        try:
            lab.ledger.stop()
            agent = lab.start_agent()
            wait_until(lambda a=agent: a.forwarding.active == "up0", 10)
            out[name] = _ack_forger(lab, key)
            out[f"{name}_bad_acks"] = lab.agent.snapshot()["forwarding"]["counters"].get(
                "bad_acks", 0)
        finally:
            lab.close()
    return out


def run(quick: bool = False, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda msg: None)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="midshift-bench-hostile-") as d:
        tmp = Path(d)
        out.update(measure_poison(tmp, say))
        out.update(measure_bomb(tmp, say))
        out.update(measure_forged_acks(tmp, say))
        out.update(measure_flood(tmp, quick, say))
    out["cores"] = os.cpu_count()
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["flood"]:
        flood_main(*sys.argv[2:7])
