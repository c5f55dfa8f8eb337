"""Walk an OPC UA server's address space (asyncua's client) and say what is there: node
id, browse name, node class, data type and access level, as a table for a person or as
``[devices.NAME]`` and ``[[devices.NAME.nodes]]`` tables for a site file.

The walk follows hierarchical references forward from one node (``Objects``, ``i=85``, by
default) down to a depth, each node once (an address space may have cycles). Namespace 0
(the standard's own nodes: ``Server``, its diagnostics) is left out below the start node
unless asked for: a site file wants the machine's variables, not the server's.

The TOML lists every readable variable with a tag made from its browse name (lower case,
``[a-z0-9_]``, made unique with ``_2``, ``_3``) and its node id as the agent's driver
takes it (``ns=INDEX;...``; the driver refuses ``nsu=``). It parses with ``tomllib`` and
passes the site loader as pasted (``tests/integration/test_opcua_browse.py`` checks it).

When the far end is gone: connecting is bounded by ``timeout_s`` and fails with
``BrowseError`` naming the endpoint; a server that drops the session mid-walk fails the
same way. Nothing is retried: this is a person's command, not a poller.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator

from asyncua import Client, ua
from asyncua.common.node import Node

OBJECTS = "i=85"
HAS_PROPERTY = ua.NodeId(ua.ObjectIds.HasProperty)
ACCESS_BITS = ((ua.AccessLevel.CurrentRead, "read"), (ua.AccessLevel.CurrentWrite, "write"),
               (ua.AccessLevel.HistoryRead, "history"))


class BrowseError(Exception):
    """The server could not be reached or browsed; the text says which and why."""


class BrowsedNode:
    """One node as the walk found it; ``depth`` 0 is the start node."""

    __slots__ = ("node_id", "browse_name", "node_class", "data_type", "access", "depth",
                 "is_property")

    def __init__(self, node_id: str, browse_name: str, node_class: str, data_type: str,
                 access: str, depth: int, is_property: bool = False) -> None:
        self.node_id = node_id
        self.browse_name = browse_name
        self.node_class = node_class
        self.data_type = data_type
        self.access = access
        self.depth = depth
        self.is_property = is_property  # reached by HasProperty: metadata, not a reading

    @property
    def readable_variable(self) -> bool:
        """A reading worth monitoring: a readable variable that is not a property (a
        method's arguments, engineering units)."""
        return (self.node_class == "Variable" and not self.is_property
                and "read" in self.access.split("/"))

    def as_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__slots__}


def access_text(level: int) -> str:
    """``read/write`` from an AccessLevel byte (Part 3, 5.6.2); ``none`` if no bit is set."""
    return "/".join(name for bit, name in ACCESS_BITS if level & (1 << bit)) or "none"


def browse(endpoint: str, start: str = OBJECTS, depth: int = 3, security: str | None = None,
           timeout_s: float = 5.0, all_namespaces: bool = False) -> list[BrowsedNode]:
    """The nodes under ``start`` to ``depth`` levels, in walk order (a parent before its
    children). ``security``: asyncua's ``Policy,Mode,cert,key[,server_cert]``."""
    try:
        return asyncio.run(_browse(endpoint, start, depth, security, timeout_s, all_namespaces))
    except BrowseError:
        raise
    except (OSError, TimeoutError, ua.UaError) as exc:
        raise BrowseError(f"{endpoint}: {type(exc).__name__}: {exc}") from exc


async def _browse(endpoint: str, start: str, depth: int, security: str | None,
                  timeout_s: float, all_namespaces: bool) -> list[BrowsedNode]:
    try:
        start_id = ua.NodeId.from_string(start)
    except Exception as exc:  # noqa: BLE001 - asyncua raises several kinds for bad text
        raise BrowseError(f"--node {start!r} is not a node id (ns=2;s=NAME, i=85)") from exc
    client = Client(endpoint, timeout=timeout_s)
    if security:
        await client.set_security_string(security)
    try:
        await asyncio.wait_for(client.connect(), timeout_s)
    except (TimeoutError, OSError) as exc:
        raise BrowseError(f"{endpoint}: cannot connect: {exc or type(exc).__name__}") from exc
    try:
        walker = _Walker(client, all_namespaces)
        root = client.get_node(start_id)
        await walker.visit(root, 0, depth)
        return walker.found
    finally:
        try:
            await asyncio.wait_for(client.disconnect(), timeout_s)
        except Exception:  # noqa: BLE001 - the answer is already complete
            pass


class _Walker:
    def __init__(self, client: Client, all_namespaces: bool) -> None:
        self.client = client
        self.all_namespaces = all_namespaces
        self.found: list[BrowsedNode] = []
        self.seen: set[str] = set()
        self.type_names: dict[str, str] = {}

    async def visit(self, node: Node, depth: int, max_depth: int,
                    is_property: bool = False) -> None:
        nid = node.nodeid.to_string()
        if nid in self.seen:
            return
        self.seen.add(nid)
        name = (await node.read_browse_name()).Name
        node_class = (await node.read_node_class()).name
        data_type = access = ""
        if node_class == "Variable":
            data_type = await self._type_name(await node.read_data_type())
            level = await node.read_attribute(ua.AttributeIds.AccessLevel)
            access = access_text(int(level.Value.Value or 0))
        self.found.append(BrowsedNode(nid, name, node_class, data_type, access, depth,
                                      is_property))
        if depth >= max_depth:
            return
        for ref in await node.get_children_descriptions():
            # A plain NodeId (ns=INDEX), as the driver takes it, not an ExpandedNodeId.
            child = ua.NodeId(ref.NodeId.Identifier, ref.NodeId.NamespaceIndex,
                              ref.NodeId.NodeIdType)
            if child.NamespaceIndex == 0 and not self.all_namespaces:
                continue
            await self.visit(self.client.get_node(child), depth + 1, max_depth,
                             ref.ReferenceTypeId == HAS_PROPERTY)

    async def _type_name(self, type_id: ua.NodeId) -> str:
        key = type_id.to_string()
        if key not in self.type_names:
            try:
                self.type_names[key] = (await self.client.get_node(type_id)
                                        .read_browse_name()).Name
            except ua.UaError:
                self.type_names[key] = key
        return self.type_names[key]


def table_lines(nodes: list[BrowsedNode]) -> Iterator[str]:
    """A plain table: the browse name indented by depth, then the other columns."""
    rows = [("  " * n.depth + n.browse_name, n.node_class, n.data_type or "-",
             n.access or "-", n.node_id) for n in nodes]
    head = ("browse name", "class", "data type", "access", "node id")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    for r in [head, *rows]:
        yield "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4]


def tag_of(browse_name: str, taken: set[str]) -> str:
    """A tag from a browse name: ``Oven Temp.PV`` -> ``oven_temp_pv``, unique in ``taken``."""
    base = re.sub(r"[^a-z0-9]+", "_", browse_name.lower()).strip("_") or "value"
    tag, n = base, 1
    while tag in taken:
        n += 1
        tag = f"{base}_{n}"
    taken.add(tag)
    return tag


def toml_text(nodes: list[BrowsedNode], device: str, endpoint: str,
              security: str | None = None) -> str:
    """``[devices.DEVICE]`` (type, endpoint, security) and one ``[[devices.DEVICE.nodes]]``
    per readable variable, ready to paste into a site file."""
    q = json.dumps  # a TOML basic string is a JSON string for the text we print
    out = [f"# {len(nodes)} nodes browsed at {endpoint}; the readable variables:",
           f"[devices.{device}]", 'type = "opcua"', f"endpoint = {q(endpoint)}"]
    if security:
        parts = security.split(",")
        out += [f"security_policy = {q(parts[0])}", f"security_mode = {q(parts[1])}",
                f"certificate = {q(parts[2])}", f"private_key = {q(parts[3].split('::')[0])}"]
        if len(parts) > 4:
            out.append(f"server_certificate = {q(parts[4])}")
    taken: set[str] = set()
    for n in nodes:
        if not n.readable_variable:
            continue
        out += ["", f"[[devices.{device}.nodes]]", f"tag = {q(tag_of(n.browse_name, taken))}",
                f"node_id = {q(n.node_id)}  # {n.data_type}, {n.access}"]
    return "\n".join(out) + "\n"
