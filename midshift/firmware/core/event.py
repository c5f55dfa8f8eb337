"""Events and their body codec: what a device produced, as stored in a journal record.

A body is compact JSON (UTF-8) with short keys, versioned by ``v``:

    {"v":1,"src":"scanner1","k":"scan","t":1700000000123,"d":{...}}

``t`` is the wall time (ms) at which the value was *read* from the device, not when it
was converted or journaled; ``d`` holds the kind's fields (``code`` for a scan, ``weight``,
``unit`` and ``stable`` for a weight, ``tag`` and ``value`` for a register or OPC UA
node). Identity (gateway, epoch, seq), class and HLC live in the frame header, not here:
the class is the device's (its config), decided by the pipeline.
"""

import json

BODY_VERSION = 1


class Event:
    def __init__(self, source, kind, read_ms, data):
        self.source = source
        self.kind = kind
        self.read_ms = read_ms
        self.data = data

    def to_body(self):
        return encode_body(self.source, self.kind, self.read_ms, self.data)

    def __repr__(self):
        return "Event(%s %s @%d %r)" % (self.source, self.kind, self.read_ms, self.data)


def encode_body(source, kind, read_ms, data):
    doc = {"v": BODY_VERSION, "src": source, "k": kind, "t": int(read_ms), "d": data}
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_body(body):
    """Body bytes to a dict with keys source, kind, read_ms, data; ValueError if malformed."""
    try:
        doc = json.loads(bytes(body).decode())
    except (ValueError, UnicodeError) as exc:
        raise ValueError("record body is not JSON: %s" % exc)
    if not isinstance(doc, dict) or doc.get("v") != BODY_VERSION:
        raise ValueError("record body version %r is not %d" % (
            doc.get("v") if isinstance(doc, dict) else None, BODY_VERSION))
    return {"source": doc.get("src"), "kind": doc.get("k"), "read_ms": doc.get("t"),
            "data": doc.get("d")}
