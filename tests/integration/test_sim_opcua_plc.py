"""The OPC UA PLC emulator seen by asyncua's real client over loopback: variables and their
types, values that change, the ResetCounter method, Bad status and back, subscriptions
that see every change in the ground truth, restart on the same endpoint with values
continuing, the ground-truth file, config errors, nothing left running after stop."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from asyncua import Client, ua

from midshift.simulator.devices.opcua import OpcUaPLC
from midshift.simulator.ground_truth import read_ground_truth

T = TypeVar("T")
WAIT_S = 5.0
VARIABLES = [
    {"tag": "counter", "type": "counter", "start": 100, "step": 2},
    {"tag": "temperature", "type": "temperature", "start": 50.0, "noise": 2.0},
    {"tag": "status", "type": "status", "states": ["RUNNING", "IDLE"], "change_every": 2},
]


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 20))  # type: ignore[arg-type]


async def connected(endpoint: str, body: Callable[[Client], Awaitable[T]]) -> T:
    client = Client(endpoint, timeout=2)
    await client.connect()
    try:
        return await body(client)
    finally:
        await client.disconnect()


async def wait_read(client: Client, node_id: str, pred: Callable[[ua.DataValue], bool],
                    timeout_s: float = WAIT_S) -> ua.DataValue:
    """Read ``node_id`` until ``pred`` holds for its DataValue (bounded)."""
    node = client.get_node(node_id)
    deadline = time.monotonic() + timeout_s
    while True:
        dv = await node.read_data_value(raise_on_bad_status=False)
        if pred(dv):
            return dv
        assert time.monotonic() < deadline, f"{node_id}: last {dv}"
        await asyncio.sleep(0.02)


def ms(ts: datetime) -> int:
    """Milliseconds since the Unix epoch, computed apart from the emulator's."""
    return round(ts.replace(tzinfo=UTC).timestamp() * 1e6) // 1000


def values_of(plc: OpcUaPLC, tag: str) -> list[tuple[Any, int]]:
    return [(e["value"], e["source_ms"]) for e in plc.truth()
            if e["kind"] == "opcua" and e["tag"] == tag]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture(scope="module")
def plc() -> Iterator[OpcUaPLC]:
    """One running PLC for the tests that only read and subscribe."""
    with OpcUaPLC("line1", port=0, period_ms=50, seed=3, variables=VARIABLES) as device:
        yield device


@pytest.fixture
def fresh() -> Iterator[Callable[..., OpcUaPLC]]:
    made: list[OpcUaPLC] = []

    def make(**kwargs: Any) -> OpcUaPLC:
        kwargs.setdefault("port", 0)
        kwargs.setdefault("variables", VARIABLES)
        device = OpcUaPLC(kwargs.pop("name", "cell2"), **kwargs).start()
        made.append(device)
        return device

    yield make
    for device in made:
        device.stop()


def test_each_variable_readable_with_its_type(plc: OpcUaPLC) -> None:
    d = plc.describe()
    assert d["endpoint"] == f"opc.tcp://127.0.0.1:{plc.port}/midshift/plc" and plc.port > 0
    assert d["nodes"] == {t: f"ns=2;s=line1.{t}" for t in ("counter", "temperature", "status")}

    async def body(client: Client) -> None:
        assert await client.get_namespace_index("urn:midshift:sim:line1") == d["namespace_index"] == 2
        kinds = {}
        for tag, node_id in d["nodes"].items():
            dv = await client.get_node(node_id).read_data_value()
            assert dv.StatusCode.is_good() and dv.SourceTimestamp is not None
            kinds[tag] = dv.Value.VariantType
        assert kinds == {"counter": ua.VariantType.UInt32, "temperature": ua.VariantType.Double,
                         "status": ua.VariantType.String}
        names = {(await n.read_browse_name()).Name
                 for n in await client.get_node(d["object"]).get_children()}
        assert names == {"counter", "temperature", "status", "ResetCounter"}

    run(connected(plc.endpoint, body))


def test_values_change_counter_rises_and_match_ground_truth(plc: OpcUaPLC) -> None:
    nodes = plc.describe()["nodes"]

    async def body(client: Client) -> None:
        first = {t: await client.get_node(n).read_data_value() for t, n in nodes.items()}
        later = {t: await wait_read(client, n, lambda dv, t=t: dv.Value.Value != first[t].Value.Value)
                 for t, n in nodes.items()}
        c0, c1 = first["counter"].Value.Value, later["counter"].Value.Value
        assert c1 > c0 and (c1 - c0) % 2 == 0  # step 2
        assert later["status"].Value.Value in ("RUNNING", "IDLE")
        for tag in nodes:  # every value read is one the PLC logged, with its source time
            for dv in (first[tag], later[tag]):
                assert (dv.Value.Value, ms(dv.SourceTimestamp)) in values_of(plc, tag)

    run(connected(plc.endpoint, body))


def test_subscription_sees_every_change_in_the_ground_truth(plc: OpcUaPLC) -> None:
    nodes = plc.describe()["nodes"]
    seen: dict[str, list[tuple[Any, int]]] = {t: [] for t in nodes}

    async def body(client: Client) -> None:
        sub = await client.create_subscription(20)  # iterator mode
        tags = {}
        for tag, node_id in nodes.items():
            node = client.get_node(node_id)
            tags[node.nodeid] = tag
            await sub.subscribe_data_change(node, queuesize=50)
        deadline = time.monotonic() + WAIT_S
        while len(seen["counter"]) < 12:
            assert time.monotonic() < deadline, seen
            ev = await sub.next_event(timeout=1)
            if ev is None:
                continue
            dv = ev.data.monitored_item.Value  # type: ignore[union-attr]
            seen[tags[ev.node.nodeid]].append((dv.Value.Value, ms(dv.SourceTimestamp)))  # type: ignore[union-attr]
        await sub.delete()

    run(connected(plc.endpoint, body))
    for tag, got in seen.items():
        truth = values_of(plc, tag)
        if not got:  # status may not have changed, but then its one value came first
            continue
        start = truth.index(got[0])
        assert got == truth[start:start + len(got)], tag
    counts = [v for v, _ in seen["counter"]]
    assert counts == list(range(counts[0], counts[0] + 2 * len(counts), 2))


def test_reset_counter_method_and_set_value(fresh: Callable[..., OpcUaPLC]) -> None:
    plc = fresh()
    d = plc.describe()

    async def body(client: Client) -> tuple[Any, ...]:
        await wait_read(client, d["nodes"]["counter"], lambda dv: dv.Value.Value >= 104)
        plc.pause_updates()
        obj = client.get_node(d["object"])
        n = await obj.call_method(client.get_node(d["methods"]["ResetCounter"]))
        counter = await client.get_node(d["nodes"]["counter"]).read_value()
        plc.set_value("status", "MAINTENANCE")
        plc.set_value("temperature", 71)
        status = await client.get_node(d["nodes"]["status"]).read_value()
        temp = await client.get_node(d["nodes"]["temperature"]).read_value()
        return n, counter, status, temp

    assert run(connected(plc.endpoint, body)) == (1, 0, "MAINTENANCE", 71.0)
    truth = plc.truth()
    assert [e["fault"] for e in truth if e["kind"] == "fault"] == ["pause_updates", "method_call"]
    assert [(e["value"], e["source"]) for e in truth if e["kind"] == "opcua"][-3:] == [
        (0, "method"), ("MAINTENANCE", "set"), (71.0, "set")]
    with pytest.raises(ValueError, match="not a UInt32"):
        plc.set_value("counter", -1)
    with pytest.raises(ValueError, match="not a string"):
        plc.set_value("status", 3)
    with pytest.raises(KeyError, match="no variable 'speed'"):
        plc.set_value("speed", 3)
    with pytest.raises(ValueError, match="not the name of a Bad"):
        plc.set_bad("counter", True, code="GoodOverload")


def test_bad_status_seen_by_read_and_subscription_then_good(
        fresh: Callable[..., OpcUaPLC]) -> None:
    plc = fresh()
    node_id = plc.node_id("temperature")

    async def body(client: Client) -> list[ua.DataValue]:
        plc.pause_updates()
        node = client.get_node(node_id)
        sub = await client.create_subscription(20)
        await sub.subscribe_data_change(node, queuesize=10)
        got: list[ua.DataValue] = []

        async def next_dv() -> ua.DataValue:
            ev = await sub.next_event(timeout=WAIT_S)
            assert ev is not None
            return ev.data.monitored_item.Value  # type: ignore[union-attr,return-value]

        got.append(await next_dv())  # the initial value
        plc.set_bad("temperature", True)
        with pytest.raises(ua.uaerrors.BadSensorFailure):
            await node.read_value()
        got.append(await next_dv())
        plc.set_bad("temperature", False)
        got.append(await next_dv())
        assert await node.read_value() == got[0].Value.Value
        await sub.delete()
        return got

    initial, bad, good = run(connected(plc.endpoint, body))
    assert initial.StatusCode.is_good() and initial.Value.Value == 50.0
    assert bad.StatusCode.value == ua.StatusCodes.BadSensorFailure and bad.Value.Value is None
    assert good.StatusCode.is_good() and good.Value.Value == 50.0
    assert ms(good.SourceTimestamp) > ms(initial.SourceTimestamp) or \
        good.SourceTimestamp > initial.SourceTimestamp  # a new reading, not the old one again
    faults = [(e["fault"], e["value"]) for e in plc.truth() if e["kind"] == "fault"]
    assert faults == [("pause_updates", None), ("bad_status", "BadSensorFailure"),
                      ("good_status", "Good")]
    assert values_of(plc, "temperature")[-1] == (50.0, ms(good.SourceTimestamp))
    assert plc.describe()["bad"] == {}


def test_restart_same_endpoint_same_nodes_values_continue(
        fresh: Callable[..., OpcUaPLC]) -> None:
    plc = fresh(period_ms=40)
    before = plc.describe()

    async def body() -> None:
        old = Client(plc.endpoint, timeout=2)
        await old.connect()
        try:
            plc.pause_updates()
            dv1 = await old.get_node(before["nodes"]["counter"]).read_data_value()
            plc.restart()
            with pytest.raises((ConnectionError, OSError, asyncio.TimeoutError,
                                ua.UaError)):  # the old session went with the old server
                await old.get_node(before["nodes"]["counter"]).read_value()
        finally:
            try:
                await old.disconnect()
            except Exception:  # noqa: BLE001 - the connection is already gone
                pass

        async def after(client: Client) -> None:
            dv2 = await client.get_node(before["nodes"]["counter"]).read_data_value()
            assert (dv2.Value.Value, dv2.SourceTimestamp) == (dv1.Value.Value, dv1.SourceTimestamp)
            plc.resume_updates()
            await wait_read(client, before["nodes"]["counter"],
                            lambda dv: dv.Value.Value >= dv1.Value.Value + 3 * 2)

        await connected(before["endpoint"], after)

    run(body())
    assert plc.describe()["nodes"] == before["nodes"]
    assert plc.describe()["endpoint"] == before["endpoint"]
    faults = [e["fault"] for e in plc.truth() if e["kind"] == "fault"]
    assert faults == ["pause_updates", "power_off", "power_on", "resume_updates"]
    counts = [v for v, _ in values_of(plc, "counter")]
    assert counts == list(range(100, 100 + 2 * len(counts), 2))  # continued, no jump back


def test_ground_truth_file_and_endpoint_config(tmp_path: Path) -> None:
    cfg = {"endpoint": "opc.tcp://127.0.0.1:0/plant/cell3", "period_ms": 30, "seed": 1,
           "namespace": "urn:example:cell3", "variables": VARIABLES[:1]}
    with OpcUaPLC.from_config("cell3", cfg, tmp_path / "gt") as plc:
        d = plc.describe()
        assert d["endpoint"].startswith("opc.tcp://127.0.0.1:") and d["endpoint"].endswith("/plant/cell3")
        assert d["namespace"] == "urn:example:cell3"

        async def body(client: Client) -> None:
            await wait_read(client, d["nodes"]["counter"], lambda dv: dv.Value.Value >= 104)

        run(connected(d["endpoint"], body))
    lines = list(read_ground_truth(tmp_path / "gt" / "cell3.jsonl"))
    assert lines == json.loads(json.dumps(plc.truth())) and len(lines) >= 3
    assert all(e["device"] == "cell3" and e["node"] == "ns=2;s=cell3.counter" for e in lines)
    assert [e["n"] for e in lines] == list(range(1, len(lines) + 1))


@pytest.mark.parametrize(("cfg", "message"), [
    ({"port": 70000}, "devices.bad.port: 70000 is not a port number"),
    ({"period_ms": 5}, "devices.bad.period_ms: 5 is not an integer from 10"),
    ({"period_ms": True}, "devices.bad.period_ms: True"),
    ({"speed": 1}, "devices.bad: unknown key(s) speed"),
    ({"certificate": "/nonexistent/plc.der", "private_key": "/nonexistent/plc.pem"},
     "devices.bad.certificate: '/nonexistent/plc.der' is not a readable file"),
    ({"certificate": __file__}, "devices.bad.private_key: is missing"),
    ({"endpoint": "http://127.0.0.1:4840/"}, "devices.bad.endpoint: 'http://127.0.0.1:4840/' is not"),
    ({"endpoint": "opc.tcp://127.0.0.1/x"}, "devices.bad.endpoint:"),
    ({"endpoint": "opc.tcp://127.0.0.1:0/", "port": 1}, "either endpoint or port"),
    ({"variables": []}, "devices.bad.variables: [] is not a list of one or more"),
    ({"variables": [{"tag": "x", "type": "pressure"}]}, "devices.bad.variables[0].type: 'pressure'"),
    ({"variables": [{"tag": "1x", "type": "counter"}]}, "devices.bad.variables[0].tag: '1x'"),
    ({"variables": [{"tag": "c", "type": "counter", "noise": 1}]},
     "devices.bad.variables[0]: unknown key(s) noise for type counter"),
    ({"variables": [{"tag": "c", "type": "counter", "step": 0}]}, "devices.bad.variables[0].step: 0"),
    ({"variables": [{"tag": "t", "type": "temperature", "start": 500}]},
     "devices.bad.variables[0].start: 500 is not a number from min to max"),
    ({"variables": [{"tag": "s", "type": "status", "states": ["A"]}]},
     "devices.bad.variables[0].states: ['A'] is not a list of two or more"),
    ({"variables": [{"tag": "c", "type": "counter"}, {"tag": "c", "type": "counter"}]},
     "devices.bad.variables[1].tag: 'c' is used twice"),
])
def test_bad_config_names_the_key(cfg: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as err:
        OpcUaPLC.from_config("bad", cfg, None)
    assert message in str(err.value)


def test_stop_leaves_no_thread_and_frees_the_port(fresh: Callable[..., OpcUaPLC]) -> None:
    threads_before = set(threading.enumerate())
    plc = fresh(name="short")
    port = plc.port
    assert not port_is_free(port)
    plc.stop()
    plc.stop()  # twice is harmless
    assert set(threading.enumerate()) <= threads_before
    assert port_is_free(port)
    with pytest.raises(RuntimeError, match="not running"):
        plc.set_value("counter", 1)
    with pytest.raises(RuntimeError, match="start\\(\\) once"):
        plc.start()
