"""``python -m midshift.host_tools opcua browse`` against a real asyncua server (the OPC UA PLC
emulator): the table, a subtree, security, an unreachable endpoint, and the ``--toml``
output pasted into a site file that ``firmware check`` accepts."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from midshift.firmware.edges.opcua import OpcUaDriver
from midshift.host_tools.opcua_browse import access_text, tag_of
from midshift.simulator.devices.opcua import OpcUaPLC
from tests.integration.test_opcua_driver import CLIENT_URI, rsa_cert

ROOT = Path(__file__).resolve().parents[2]
VARIABLES = ["counter", "temperature", "status"]


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("certs")


@pytest.fixture(scope="module")
def plc(cert_dir: Path) -> Iterator[OpcUaPLC]:
    cert, key = rsa_cert(cert_dir, "plc", "urn:freeopcua:python:server")
    with OpcUaPLC("cell1", port=0, period_ms=200, certificate=cert, private_key=key) as p:
        yield p


def host_tools(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "midshift.host_tools", "opcua", "browse", *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_the_table_lists_each_variable_with_type_and_access(plc: OpcUaPLC) -> None:
    p = host_tools(plc.endpoint)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["browse", "name", "class", "data", "type", "access", "node", "id"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["Objects"][1:] == ["Object", "-", "-", "i=85"]
    assert rows["cell1"][-1] == "ns=2;s=cell1"
    assert rows["counter"][1:] == ["Variable", "UInt32", "read", "ns=2;s=cell1.counter"]
    assert rows["temperature"][1:3] == ["Variable", "Double"]
    assert rows["status"][1:3] == ["Variable", "String"]
    assert rows["ResetCounter"][1] == "Method"
    assert "Server" not in rows  # namespace 0 is left out unless asked for


def test_a_subtree_to_a_depth_as_json(plc: OpcUaPLC) -> None:
    p = host_tools(plc.endpoint, "--node", "ns=2;s=cell1", "--depth", "1", "--json")
    assert p.returncode == 0, p.stderr
    nodes = [json.loads(line) for line in p.stdout.splitlines()]
    assert [n["browse_name"] for n in nodes] == ["cell1", *VARIABLES, "ResetCounter"]
    assert [n["depth"] for n in nodes] == [0, 1, 1, 1, 1]
    assert {n["access"] for n in nodes if n["node_class"] == "Variable"} == {"read"}
    p = host_tools(plc.endpoint, "--node", "i=85", "--depth", "1", "--all-namespaces",
                   "--json")
    assert "Server" in {json.loads(line)["browse_name"] for line in p.stdout.splitlines()}


def test_toml_pasted_into_a_site_file_passes_firmware_check(plc: OpcUaPLC,
                                                             tmp_path: Path) -> None:
    p = host_tools(plc.endpoint, "--toml", "--device", "cell1")
    assert p.returncode == 0, p.stderr
    doc = tomllib.loads(p.stdout)
    table = doc["devices"]["cell1"]
    assert table["type"] == "opcua" and table["endpoint"] == plc.endpoint
    assert [(n["tag"], n["node_id"]) for n in table["nodes"]] == [
        (v, f"ns=2;s=cell1.{v}") for v in VARIABLES]  # the method's arguments are not readings
    # The agent's driver takes the table as it is.
    cfg = OpcUaDriver.validate_config("cell1", {k: v for k, v in table.items() if k != "type"},
                                      "devices.cell1")
    assert [n["node_id"] for n in cfg["nodes"]] == [n["node_id"] for n in table["nodes"]]
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "gateway.key").write_text(secrets.token_hex(32))
    site = tmp_path / "site.toml"
    site.write_text('board_config = "rpi4-eth-lte"\n\n[gateway]\nid = "gw1"\nsite = "s1"\n'
                    'key_file = "keys/gateway.key"\n\n[uplinks.eth]\n'
                    'broker = "mqtt://10.0.0.5:1883"\n\n' + p.stdout)
    check = subprocess.run([sys.executable, "-m", "midshift.firmware", "check", "--offline", "--config",
                            str(site)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("config ok:"), check.stdout


def test_browse_over_a_secure_channel(plc: OpcUaPLC, cert_dir: Path, tmp_path: Path) -> None:
    cert, key = rsa_cert(tmp_path, "client", CLIENT_URI)
    security = f"Basic256Sha256,SignAndEncrypt,{cert},{key}"
    p = host_tools(plc.endpoint, "--node", "ns=2;s=cell1", "--depth", "1", "--toml",
                   "--security", security)
    assert p.returncode == 0, p.stderr
    table = tomllib.loads(p.stdout)["devices"]["cell"]
    assert (table["security_policy"], table["security_mode"]) == ("Basic256Sha256",
                                                                  "SignAndEncrypt")
    assert (table["certificate"], table["private_key"]) == (str(cert), str(key))
    assert [n["tag"] for n in table["nodes"]] == VARIABLES


def test_an_unreachable_endpoint_fails_with_its_name() -> None:
    p = host_tools("opc.tcp://127.0.0.1:1/nothing", "--timeout-s", "2")
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.startswith("opcua browse: opc.tcp://127.0.0.1:1/nothing")


def test_a_bad_start_node_is_named(plc: OpcUaPLC) -> None:
    p = host_tools(plc.endpoint, "--node", "not a node")
    assert p.returncode == 1 and "--node 'not a node' is not a node id" in p.stderr


@pytest.mark.parametrize("name, taken, tag", [
    ("Oven Temp.PV", set(), "oven_temp_pv"), ("counter", {"counter"}, "counter_2"),
    ("counter", {"counter", "counter_2"}, "counter_3"), ("°!", set(), "value"),
])
def test_tag_of(name: str, taken: set[str], tag: str) -> None:
    assert tag_of(name, set(taken)) == tag


@pytest.mark.parametrize("level, text", [(0, "none"), (1, "read"), (3, "read/write"),
                                         (2, "write"), (5, "read/history")])
def test_access_text(level: int, text: str) -> None:
    assert access_text(level) == text


def test_other_host_tools_commands_do_not_load_asyncua() -> None:
    """``ledger serve`` and every other command register ``opcua`` too: asyncua (tens of MB,
    half a second) is loaded only by ``opcua browse`` itself."""
    p = subprocess.run([sys.executable, "-c", "import sys, midshift.host_tools.__main__ as m\n"
                        "try:\n    m.main(['ledger', '--help'])\nexcept SystemExit:\n    pass\n"
                        "print(sorted(n for n in sys.modules if n.startswith('asyncua')))"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "[]"
