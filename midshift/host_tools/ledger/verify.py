"""The ledger's decision on one batch, without I/O: is it ours, whole, signed and storable?

``verify_batch(topic, payload, signers)`` returns the verified ``Batch`` or raises
``WireError`` with a reason (``bad_topic``, ``wrong_topic``, ``unknown_gateway``, the
codec's reasons, ``bad_body``); ``signed`` is set on the error once the HMAC verified, so
the caller may answer with a signed ``rejected`` ack. The worker (``service.py``) and the
deterministic simulation (``midshift/simulator/dst/``) both decide through it, so the simulation
tests the rule the ledger runs.
"""

from __future__ import annotations

from collections.abc import Mapping

from midshift.firmware.core import topics
from midshift.firmware.core.signing import Signer
from midshift.firmware.core.wire import Batch, WireError
from midshift.firmware.core.wire_ledger import decode_batch, peek_gateway
from midshift.host_tools.ledger.inflate import bounded_inflate
from midshift.host_tools.ledger.store import MAX_INT, unstorable

MAX_PAYLOAD = 16 << 20  # bytes of payload, as sent and inflated; the agent sends ~256 KiB
_inflate = bounded_inflate(MAX_PAYLOAD)


def verify_batch(topic: str, payload: bytes, signers: Mapping[str, Signer],
                 max_int: int = MAX_INT) -> Batch:
    """The verified, storable batch published on ``topic``; WireError otherwise.
    ``max_int``: the largest seq, HLC and send time the store holds."""
    where = topics.split(topic)
    if where is None or where[2] != topics.EVENTS:
        raise WireError("bad_topic", f"topic {topic}")
    gw_topic = where[1]
    gw = peek_gateway(payload)
    if gw != gw_topic:
        raise WireError("wrong_topic", f"batch from {gw} published under {gw_topic}")
    signer = signers.get(gw)
    if signer is None:
        raise WireError("unknown_gateway", f"gateway {gw} is not registered")
    batch = decode_batch(payload, signer, _inflate, MAX_PAYLOAD, max_int)
    refused = unstorable(batch)
    if refused is not None:
        raise WireError(*refused, (batch.epoch, batch.first_seq, batch.last_seq))
    return batch
