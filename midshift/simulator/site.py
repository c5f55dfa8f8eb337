"""A simulated site for a scenario: one mosquitto, the reference ledger as its own process,
and per gateway its emulated devices, a fault proxy per uplink and a real agent process
(``python -m midshift.firmware run``) with its own config, keys, journal and steerable clock.

Everything is on loopback. The devices run in this process (they are real protocol peers:
ptys, pymodbus's server, asyncua's server) so the timeline can reach them directly; the
agents, the broker and the ledger are processes of their own, so a power cut is a SIGKILL.
``midshift/simulator/children.py`` starts them, so none outlives the simulator.

The site's wall clock is the host's, or with the scenario's ``[clock]`` the host's plus one
offset set before anything starts (``site_offset_ms``): each agent follows its gateway's
control file (its base, which clock faults move it from), the ledger follows the site's
(``ledger serve --clock-control``), the tills read it in process. Device ground truth and
the timeline stay on the host's clock; the runner subtracts the offset from the ledger's
times before comparing them.

Not modelled: separate machines and their own clocks (only the agents' wall clocks are
faulted), interfaces (each uplink is a fault proxy in front of the one broker).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midshift.firmware.edges.clock import host_wall_ms
from midshift.simulator.both_ways import BothWays
from midshift.simulator.broker import Broker, free_port
from midshift.simulator.children import deferred_stop, spawn
from midshift.simulator.clock import SimClock, site_offset_ms
from midshift.simulator.devices import device_type
from midshift.simulator.network import FaultProxy
from midshift.simulator.scenario import Scenario

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
SITE = "sim"


@dataclass
class Gateway:
    """One gateway of the site: its files, devices, proxies (by uplink) and agent process."""

    index: int
    gw_id: str
    directory: Path
    key: bytes
    devices: dict[str, Any] = field(default_factory=dict)
    proxies: dict[str, FaultProxy] = field(default_factory=dict)
    clock: SimClock | None = None
    process: subprocess.Popen | None = None
    log_file: Any = None
    lives: int = 0
    till_port: int = 0                                   # the till API's, when [tills]
    till_tokens: dict[str, str] = field(default_factory=dict)
    tills: list[Any] = field(default_factory=list)       # started Till emulators

    @property
    def till_truth_dir(self) -> Path:
        # Beside the gateway's directory, not in it: the judge searches that for card data.
        return self.directory.parent / f"{self.gw_id}-tills"

    @property
    def journal_dir(self) -> Path:
        return self.directory / "journal"

    @property
    def ground_truth_dir(self) -> Path:
        return self.directory / "ground-truth"

    def start_agent(self) -> None:
        """Power on: a new agent process on the same config, journal and clock."""
        self.lives += 1
        if self.log_file is None:
            self.log_file = open(self.directory / "agent.log", "ab")  # noqa: SIM115
        self.log_file.write(f"---- power on, life {self.lives} ----\n".encode())
        self.log_file.flush()
        # SIGKILL if the simulator dies: a power cut, which the journal is built for.
        self.process = spawn(
            [sys.executable, "-m", "midshift.firmware", "run", "--config",
             str(self.directory / "site.toml"), "--clock-control",
             str(self.directory / "clock.json"), "--log-level", "INFO"],
            death_signal=signal.SIGKILL, cwd=ROOT, stdout=self.log_file,
            stderr=subprocess.STDOUT)

    def kill_agent(self) -> None:
        """Power cut: SIGKILL, nothing flushed, sockets reset by the kernel."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop_agent(self, timeout_s: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s: agent ignored SIGTERM for %.0f s; killed", self.gw_id, timeout_s)
            self.kill_agent()


class SimulatedSite:
    def __init__(self, scenario: Scenario, directory: Path, gateways: int, speed: float,
                 db_url: str | None = None) -> None:
        self.scenario = scenario
        self.directory = directory
        self.speed = speed
        # Saved every 200 changes, not on each: a save per message makes mosquitto rewrite
        # its database thousands of times a second, and those writes stall every other
        # fsync on the disk (the journals' included). Agents resend what a crash loses.
        self.broker = Broker(directory / "broker", persistence=scenario.persistence,
                             autosave_changes=200)
        # The ledger's store URL (midshift/host_tools/ledger/store.py): SQLite in the run's directory
        # unless the runner hands another (a PostgreSQL cluster of its own).
        self.db_url = db_url or f"sqlite:///{directory / 'ledger.db'}"
        self.ledger: subprocess.Popen | None = None
        self.clock_offset_ms = 0  # the site clock's offset from the host's ([clock])
        self.clock = SimClock()   # the site's wall clock, as the tills and the ledger read it
        self._closed = self._devices_stopped = False
        self.fleet = None
        if scenario.fleet:
            from midshift.simulator.fleet import Fleet
            f = scenario.fleet
            self.fleet = Fleet(self.broker.url, f["virtual_gateways"], backlog=f["backlog"],
                               rate_per_s=f["rate_per_s"], live_s=f["live_s"],
                               jitter_s=f["jitter_s"], site=SITE, batch_events=100,
                               window=4, ack_timeout_s=5.0)
        self.gateways = [Gateway(i, f"gw-{i + 1:02d}", directory / f"gw-{i + 1:02d}",
                                 secrets.token_bytes(32)) for i in range(gateways)]
        # The ERP out and the reference data down ([erp], [refdata]): idle without them.
        self.both_ways = BothWays(scenario.erp, scenario.refdata, directory,
                                  (scenario.tills or {}).get("store", "store-1"), SITE)

    # ---- bring up --------------------------------------------------------------------

    def set_clock(self) -> None:
        """Aim the site clock at the scenario's ``[clock]``: it reads ``reads`` at scenario
        second ``at_s`` counted from now (the shift starts well under a second later)."""
        c = self.scenario.clock
        if not c:
            return
        self.clock_offset_ms = site_offset_ms(c["reads_ms"], c["at_s"] / self.speed,
                                              host_wall_ms())
        self.clock = SimClock(self.directory / "clock.json", base_ms=self.clock_offset_ms)

    def start(self) -> None:
        self.set_clock()  # before the ledger and the agents: none of them sees a jump
        self.broker.start()
        keys = self.directory / "ledger-keys.toml"
        keys.write_text("[gateways]\n" + "".join(f'"{g.gw_id}" = "{g.key.hex()}"\n'
                                                  for g in self.gateways)
                        + ("".join(f'"{n}" = "{k.hex()}"\n' for n, k in self.fleet.keys().items())
                           if self.fleet else ""))
        os.chmod(keys, 0o600)
        self.both_ways.start_erp()
        with open(self.directory / "ledger.log", "ab") as ledger_log:
            self.ledger = spawn(
                [sys.executable, "-m", "midshift.host_tools", "ledger", "serve", "--db", self.db_url,
                 "--migrate", "--broker", self.broker.url, "--keys", str(keys),
                 "--log-level", "WARNING", *self.both_ways.ledger_args(),
                 *(["--clock-control", str(self.clock.control_path)]
                   if self.clock.control_path else [])],
                cwd=ROOT, stdout=ledger_log, stderr=subprocess.STDOUT)
        for g in self.gateways:
            with deferred_stop():  # a Ctrl-C now waits until this gateway's parts are up
                self._prepare(g)
        # On the broker before the agents start: their first connection finds version 1.
        self.both_ways.publish_first(self.broker.port, [
            (g.gw_id, bytes.fromhex((g.directory / "host-cmd.key").read_text()))
            for g in self.gateways])
        for g in self.gateways:
            g.start_agent()

    def _prepare(self, g: Gateway) -> None:
        g.directory.mkdir(parents=True, exist_ok=True)
        g.ground_truth_dir.mkdir(exist_ok=True)
        for name in self.scenario.uplinks:
            g.proxies[name] = FaultProxy(("127.0.0.1", self.broker.port), control=False,
                                         seed=g.index).start()
        g.clock = SimClock(g.directory / "clock.json", base_ms=self.clock_offset_ms)
        for name, spec in self.scenario.devices.items():
            g.devices[name] = self._device(g, name, spec)
        (g.directory / "gw.key").write_text(g.key.hex())
        (g.directory / "host-cmd.key").write_text(secrets.token_hex(32))
        for f in ("gw.key", "host-cmd.key"):
            os.chmod(g.directory / f, 0o600)
        if self.scenario.tills:
            self._provision_tills(g)
        (g.directory / "board.toml").write_text(self._board(g))
        (g.directory / "site.toml").write_text(self._site(g))

    def _provision_tills(self, g: Gateway) -> None:
        from midshift.host_tools.provision.tills import provision_tills
        t = self.scenario.tills
        paths = provision_tills(g.directory / "till-tokens", t["store"], t["names"], force=True)
        g.till_tokens = {n: Path(p).read_text().strip() for n, p in paths.items()}
        g.till_port = free_port()
        g.till_truth_dir.mkdir(exist_ok=True)

    def start_tills(self) -> None:
        """The tills open: one emulator per till and gateway (and the split-brain twin)."""
        from midshift.simulator.devices.till import Till
        t = self.scenario.tills
        if not t:
            return
        self.both_ways.start_traffic(self.broker.port)
        busy = (t["busy"][0] / self.speed, t["busy"][1] / self.speed, t["busy"][2])
        for g in self.gateways:
            specs = [(n, n, 1, 0) for n in t["names"]]
            if t["split_brain_till"]:  # a restored backup of that till, posting its numbers
                specs.append((t["split_brain_till"], f"{t['split_brain_till']}-twin", 3, 1))
            for till, label, seq_from, k in specs:
                seed = g.index * 1000 + sum(map(ord, label))
                g.tills.append(Till(
                    till, g.till_port, g.till_tokens[till], g.till_truth_dir / f"{label}.jsonl",
                    business_day=t["business_day"], tz=t["tz"], seed=seed,
                    rate_per_s=t["rate_per_s"] * self.speed / (4 if k else 1), busy=busy,
                    double_submit=t["double_submit"], seq_from=seq_from,
                    count=3 if k else None, clock=self.clock,
                    clock_offset_s=(t["clock_offset_s"] if till == t["wrong_clock_till"]
                                    and not k else 0.0),
                    full_pan_every=0 if k else t["full_pan_every"],
                    unknown_refund_every=0 if k else t["unknown_refund_every"],
                    timeout_s=2.0, retries=8, twin=bool(k),
                    price_lookup=bool(self.scenario.refdata)).start())

    def pans_typed(self) -> list[str]:
        return sorted({p for g in self.gateways for t in g.tills for p in t.pans_typed})

    def stop_tills(self) -> None:
        for g in self.gateways:
            for till in g.tills:
                till.stop()

    def _device(self, g: Gateway, name: str, spec: dict[str, Any]) -> Any:
        """The started emulator (``midshift/simulator/devices/<type>.py``'s ``emulate``)."""
        seed = g.index * 1000 + sum(map(ord, name))
        return device_type(spec["type"]).emulate(name, spec, g.directory, seed, self.speed,
                                                 g.ground_truth_dir / f"{name}.jsonl")

    def _board(self, g: Gateway) -> str:
        serial = "".join(f'{n} = "{g.directory / n}"\n' for n, s in self.scenario.devices.items()
                         if device_type(s["type"]).SERIAL)
        return ('[board]\nname = "midshift simulator (virtual board)"\n'
                f"[serial]\n{serial}"
                '[journal]\npath = "journal"\nsegment_size = 65536\nsegment_count = 64\n')

    def _site(self, g: Gateway) -> str:
        sc = self.scenario
        out = ['board_config = "board.toml"',
               f'[gateway]\nid = "{g.gw_id}"\nsite = "{SITE}"\nkey_file = "gw.key"\n'
               'command_key_file = "host-cmd.key"',
               f"[status]\nperiod_s = {sc.status_period_s}\nsync_log = \"sync.log\""]
        for i, name in enumerate(sc.uplinks):
            out.append(f"[uplinks.{name}]\nbroker = \"mqtt://127.0.0.1:{g.proxies[name].port}\"\n"
                       f"priority = {10 * (i + 1)}\n"
                       + ("metered = true\n" if name in sc.metered else ""))
        if sc.tills:
            t = sc.tills
            rules = "".join(f"{k} = {json.dumps(v)}\n" for k, v in t["rules"].items())
            out.append(f'[store]\nid = "{t["store"]}"\ntz = "{t["tz"]}"')
            out.append(f'[till_api]\nbind = "127.0.0.1"\nport = {g.till_port}\n'
                       f'tokens_file = "till-tokens/till-tokens.json"')
            out.append(f"[sell_rules]\n{rules}")
        for name, spec in sc.devices.items():
            kind = spec["type"]
            out.append("\n".join([f"[devices.{name}]", f'type = "{kind}"',
                                   *device_type(kind).site_table(name, spec, g.devices[name])]))
        return "\n\n".join(out) + "\n"

    # ---- tear down ---------------------------------------------------------------------

    def stop_devices(self) -> None:
        """The end of the shift: the devices and tills stop producing (and their ports go)."""
        if self._devices_stopped:
            return
        self._devices_stopped = True
        self.stop_tills()
        self.both_ways.stop_traffic()
        for g in self.gateways:
            for dev in g.devices.values():
                try:
                    dev.stop()
                except Exception:  # noqa: BLE001 - one stuck emulator must not stop the rest
                    log.exception("%s: stopping %s failed", g.gw_id, getattr(dev, "name", dev))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for g in self.gateways:
            g.stop_agent()
        self.stop_devices()  # stopped here too when a run ends early (Ctrl-C, an error)
        if self.ledger is not None and self.ledger.poll() is None:
            self.ledger.send_signal(signal.SIGTERM)
            try:
                self.ledger.wait(15)
            except subprocess.TimeoutExpired:
                self.ledger.kill()
        self.both_ways.close()
        for g in self.gateways:
            for p in g.proxies.values():
                p.stop()
            if g.log_file is not None:
                g.log_file.close()
        self.broker.close()

    def wait_ledger_ready(self, timeout_s: float = 20.0) -> bool:
        """The ledger prints "serving" once subscribed."""
        deadline = time.monotonic() + timeout_s
        log_path = self.directory / "ledger.log"
        while time.monotonic() < deadline:
            if log_path.exists() and b"serving" in log_path.read_bytes():
                return True
            if self.ledger is not None and self.ledger.poll() is not None:
                return False
            time.sleep(0.1)
        return False
