"""The MicroPython node: the portable core on a microcontroller board (Pico W, ESP32).

``main.py`` wires it; ``node.py`` is the loop; one edge per outside thing:
``uart_scanner.py`` and ``uart_scale.py`` (``machine.UART``), ``flash_storage.py``
(littlefs), ``wifi.py`` (``network.WLAN``), ``umqtt_uplink.py`` (umqtt.simple),
``board_clock.py`` (ticks and NTP); ``node_config.py`` checks ``node.json``.
"""
