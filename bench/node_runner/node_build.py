"""The benchmark's setup, apart from its loop (``node_loop.py``): imported for one call
by ``node_loop._build`` and dropped from ``sys.modules`` after, so the next collection
frees its bytecode. A board holds none of this; what stays measured is what the node
builds here. Nothing built here may refer back to this module (no function or class of
it is handed to the node or kept in ``node_loop.state``)."""


def import_node(sockets):
    """Import what the running node holds, build nothing (the ``heap_import_kib``
    baseline): ``main`` and every module the node keeps after boot (the loop, the link
    session, littlefs storage, Wi-Fi and clock edges too, though this loop runs on
    ``MemoryStorage`` and fakes), the scanner's edge, umqtt.simple as ``mip`` installs
    it; not the boot-only modules (``midshift/firmware/mpy/boot.py``'s ``BOOT_ONLY``: the config
    checker, the journal's recovery), which boot releases."""
    import sys

    if "socket" not in sys.modules:  # no socket module in these ports: umqtt imports one
        sys.modules["socket"] = sockets
    import umqtt.simple  # noqa: F401

    from midshift.firmware.mpy import (  # noqa: F401 - what boot.py imports and the node keeps
        board_clock,
        flash_storage,
        main,
        node,
        uart_scanner,
        umqtt_uplink,
        wifi,
    )


def setup(state, leak_per_event, journal, status_period_ms, flash_dir=None):
    """Import and build the node into ``state`` (the imports are part of what the board
    holds). ``journal``: a journal on other storage (the flash-wear run passes one on
    littlefs, under CPython). ``flash_dir``: open it as boot does, the node's own
    ``FlashStorage`` over files there (the WebAssembly port's in-memory filesystem, outside
    the Python heap, as a board's flash is). Otherwise on the core's ``MemoryStorage``, a
    bytearray in the heap, measured and subtracted; its contents are scanned by the
    collector like any heap block, so journal bytes that look like pointers keep some
    garbage alive (about 11 KiB after 3,000 events): a board's flash does not."""
    import node_loop as loop

    from midshift.firmware.core.signing import Signer
    from midshift.firmware.mpy import node_config
    from midshift.firmware.mpy.uart_scanner import UartScanner
    from midshift.firmware.mpy.umqtt_uplink import UmqttUplink

    seg, segments = loop.SEG, loop.SEGMENTS
    cfg = node_config.validate({
        "board": {"name": "Raspberry Pi Pico W", "pin_factory": "machine"},
        "uart": {"scanner": {"id": 0, "tx": 0, "rx": 1, "rxbuf": 2048}},
        "journal": {"path": "journal", "segment_size": seg, "segment_count": segments,
                    "max_body": 1024},
        "gateway": {"id": "door3-scale", "site": "plant-2", "key_file": "gw.key"},
        "wifi": {"ssid": "goods-in", "key_file": "wifi.key"},
        "devices": {"scanner1": {"type": "scanner", "port": "scanner", "charset": "digits",
                                 "min_length": 8}},
        "uplinks": {"wifi": {"broker": "mqtt://192.168.10.5:1883"}},
    })
    storage_heap = 0
    if flash_dir is not None:
        from midshift.firmware.mpy.flash_format import open_or_create_journal
        journal = open_or_create_journal(flash_dir, seg, segments, cfg.gateway_id, loop.T0,
                                         cfg.journal.max_body, epoch=0x5EED)
    elif journal is None:
        from midshift.firmware.core.journal import Journal, storage_size
        from midshift.firmware.core.storage import MemoryStorage

        before = loop._mem_alloc()
        st = MemoryStorage(storage_size(seg, segments))
        storage_heap = loop._mem_alloc() - before  # flash on a board: subtracted from samples
        Journal.format(st, seg, 0x5EED, cfg.gateway_id)
        journal = Journal.open(st, max_body=cfg.journal.max_body, read_window=512)
    signer = Signer(loop.KEY)
    ack_topic = "midshift/v1/%s/%s/ack" % (cfg.site, cfg.gateway_id)
    broker = loop.Broker(signer, ack_topic)
    uplink = UmqttUplink("192.168.10.5", 1883, "door3-scale-wifi-0", [ack_topic],
                         mqtt_module=broker, socket_module=loop.Sockets(broker))
    uart = loop.Uart()
    scanner = UartScanner("scanner1", uart, cfg.device("scanner1").settings)
    clock = loop.Clock()
    from midshift.firmware.mpy import boot
    node = boot.new_node(cfg, journal, [scanner], uplink, None, clock, signer,
                         status_period_ms=status_period_ms)
    boot.release()  # as midshift/firmware/mpy/main.py's build does after boot
    state.update(node=node, uart=uart, clock=clock, broker=broker, leak=leak_per_event,
                 storage_heap=storage_heap)
