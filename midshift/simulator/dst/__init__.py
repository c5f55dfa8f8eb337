"""Deterministic simulation testing (DST) of the whole fleet: the real core under seeded faults.

One process, one thread, one ``random.Random(seed)`` handed down explicitly, a virtual
clock (an event heap, ``loop.py``); no sockets, files or sleeps. Each simulated gateway runs
the production core (journal over the crash-simulating storage, HLC, pipeline, link
session); the ledger runs the production batch decision (``midshift/host_tools/ledger/verify.py``)
over an in-memory store with the same unique key. Only the edges are simulated: the MQTT
broker, the uplinks, the flash's power, the clocks, the devices. ``oracle.py`` checks the
invariants while the run goes; the first violation stops it, and the seed replays it.

``python -m midshift.simulator dst --help``; ``docs/dst.md`` for what is and is not modelled.
"""
