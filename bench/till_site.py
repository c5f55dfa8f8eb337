"""A gateway site file with the till API, for the till tests and ``bench/till_bench.py``.

``write_till_site`` writes a board file, the gateway's key (the lab's, so the lab ledger
takes its batches), the tills' tokens (``host_tools provision tills``) and ``site.toml``
with ``[store]``, ``[till_api]``, ``[sell_rules]`` and one uplink per given port; no
uplinks at all is a gateway that is offline from the start.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from midshift.host_tools.provision.tills import HASHES_FILE, provision_tills
from midshift.simulator.lab import KEY

STORE = "store-7"
TZ = "Europe/Berlin"
BOARD = """[board]
name = "till bench"
pin_factory = "mock"
"""


def _toml_value(v: Any) -> str:
    return json.dumps(v)  # strings, integers, booleans and lists of them read the same


def write_till_site(d: Path, tills: list[str], port: int = 0, uplink_ports: tuple[int, ...] = (),
                    rules: dict[str, Any] | None = None, segment_size: int = 65536,
                    segment_count: int = 64, window_ms: float = 0.0,
                    till_api: dict[str, Any] | None = None,
                    with_api: bool = True,
                    command_key: bytes | None = None) -> tuple[Path, dict[str, str]]:
    """(site file path, {till: token}). ``with_api=False``: the same gateway without the
    till API (one disabled scanner, as a gateway needs a device then): the RSS baseline.
    ``command_key``: the gateway's command key (it also verifies reference data)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "board.toml").write_text(BOARD)
    (d / "gw.key").write_text(KEY.hex())
    if command_key:
        (d / "cmd.key").write_text(command_key.hex())
    paths = provision_tills(d / "tills", STORE, tills, force=True)
    tokens = {t: Path(p).read_text().strip() for t, p in paths.items()}
    api = {"bind": "127.0.0.1", "port": port, "tokens_file": str(d / "tills" / HASHES_FILE)}
    api.update(till_api or {})
    rules = {"offline_tenders": ["cash", "card"]} if rules is None else rules
    lines = ['board_config = "board.toml"', "[gateway]", 'id = "gw-t"', 'site = "lab"',
             'key_file = "gw.key"',
             *(['command_key_file = "cmd.key"'] if command_key else []), "[journal]", 'path = "journal"',
             f"segment_size = {segment_size}", f"segment_count = {segment_count}",
             f"window_ms = {window_ms}"]
    if with_api:
        lines += ["[store]", f'id = "{STORE}"', f'tz = "{TZ}"',
                  "[till_api]", *(f"{k} = {_toml_value(v)}" for k, v in api.items()),
                  "[sell_rules]", *(f"{k} = {_toml_value(v)}" for k, v in rules.items())]
    else:
        lines += ["[devices.scan1]", 'type = "scanner"', f'port = "{d / "no-such-tty"}"',
                  "enabled = false"]
    for i, p in enumerate(uplink_ports):
        lines += [f"[uplinks.up{i}]", f'broker = "mqtt://127.0.0.1:{p}"',
                  f"priority = {10 * (i + 1)}"]
    site = d / "site.toml"
    site.write_text("\n".join(lines) + "\n")
    return site, tokens


def sale(till: str, till_seq: int, price: int = 250, tender: str = "cash",
         **over: Any) -> dict[str, Any]:
    """A small valid sale: two lines, one tender paying it exactly."""
    lines = [{"sku": "4006381333931", "qty_milli": 1000, "unit_price": price},
             {"sku": "BREAD", "qty_milli": 2000, "unit_price": 100, "discount": 20}]
    total = price + 180
    t: dict[str, Any] = {"kind": tender, "amount": total}
    if tender == "card":
        t.update(pan="411111******1111", scheme="visa", auth="approved")
    doc = {"type": "sale", "till": till, "till_seq": till_seq, "business_day": "2026-03-29",
           "cashier": "c-1", "currency": "EUR", "lines": lines, "tenders": [t]}
    doc.update(over)
    return doc
