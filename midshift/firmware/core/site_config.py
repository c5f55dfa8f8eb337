"""The agent's configuration: board file + site file, merged, checked once, then read-only.

A board file (``midshift/board_configs/<board>.toml``) says what the hardware has: ``[board]``
(name, GPIO pin factory), ``[pins]`` (status LEDs, button), ``[serial]`` (named ports),
``[interfaces]`` (named network interfaces) and ``[journal]`` (where and how big); a
MicroPython node's board file (``midshift/firmware/mpy/``) has ``[uart.NAME]`` (UART id, pins, receive
buffer) where a gateway has ``[serial]``, and its site file ``[wifi]``. A site
file says what this gateway does: ``[gateway]`` (id, site), ``[devices.NAME]`` and
``[uplinks.NAME]``; it may override ``[journal]`` keys. The site file wins where both set
a key. Nothing starts until every key has been checked; the first problem is raised as a
``ConfigError`` naming the key path, what is wrong and what is allowed (the loader adds
the file it came from). Across keys: no ``inf`` or ``nan`` anywhere, one enabled device
per serial line, one uplink per priority. What needs the filesystem (key files readable,
serial devices present, the journal fitting its disk) is the gateway's preflight
(``midshift/firmware/edges/preflight.py``).

This module does no I/O and knows no device type: it gets the merged dict and the device
types the runtime has, a mapping from type name to a ``DeviceType`` (default record class
and the check of a ``[devices.NAME]`` table). A type that is not in it is refused with
the list of those that are. The gateway's loader finds its types by name
(``midshift/firmware/edges/<type>.py``, see ``midshift/firmware/edges/device_types.py``); the MicroPython
node hands its own two (``midshift/firmware/mpy/node_config.py``).
"""

from midshift.firmware.core.bind_address import BIND_FORM, is_loopback, parse_bind
from midshift.firmware.core.broker_url import URL_FORMS, BrokerUrlError, parse_broker_url
from midshift.firmware.core.config_fields import field, finite, no_unknown_keys, positive
from midshift.firmware.core.errors import ConfigError

CLASSES = ("txn", "telemetry")
PIN_FACTORIES = ("lgpio", "rpigpio", "native", "mock", "machine")  # machine: MicroPython node
SECTIONS = ("gateway", "board", "pins", "serial", "interfaces", "journal", "devices", "uplinks",
            "status", "uart", "wifi", "store", "till_api", "sell_rules", "metrics", "log",
            "status_page")
DEVICE_KEYS = ("type", "class", "enabled")  # every [devices.NAME]; the rest is the type's
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_KEYS = ("level", "libraries", "device_libraries", "status_interval_s")
UART_KEYS = ("id", "tx", "rx", "rxbuf")  # [uart.NAME] on a MicroPython board (machine.UART)
NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"


def _name_ok(text):
    if not text or len(text) > 32:
        return False
    for ch in text:
        if ch not in NAME_CHARS:
            return False
    return True


NAME_RULE = "1 to 32 letters, digits, '_' or '-'"


class DeviceType:
    """What the config check needs of a device type: its default record class (``txn`` or
    ``telemetry``) and ``check(name, table, path)``, which returns the normalized table
    (without ``type``, ``class`` and ``enabled``) or raises ``ConfigError``."""

    def __init__(self, default_class, check):
        self.default_class = default_class
        self.check = check


class DeviceConfig:
    def __init__(self, name, dtype, cls, settings):
        self.name = name
        self.type = dtype
        self.cls = cls
        self.settings = settings


class UplinkConfig:
    def __init__(self, name, host, port, tls, priority, interface, source_address, metered,
                 ca=None, cert=None, key=None, drain_rate=0, standby_keepalive_s=60,
                 hedge=None):
        self.name = name
        self.host = host
        self.port = port
        self.tls = tls
        self.priority = priority
        self.interface = interface
        self.source_address = source_address
        self.metered = metered
        self.ca = ca                  # TLS: the site CA, this gateway's certificate and key
        self.cert = cert
        self.key = key
        self.drain_rate = drain_rate  # backlog records per second on this uplink; 0: no cap
        # MQTT keepalive while this uplink idles as a standby (the active one pings every
        # second): an LTE standby costs a ping a minute, not one a second.
        self.standby_keepalive_s = standby_keepalive_s
        # What hedged copies this uplink may carry as a standby: "all", "txn" or "off";
        # None: "txn" when metered, else "all" (midshift/firmware/core/session.py).
        self.hedge = hedge


class JournalConfig:
    def __init__(self, path, segment_size, segment_count, max_body, window_ms):
        self.path = path
        self.segment_size = segment_size
        self.segment_count = segment_count
        self.max_body = max_body
        self.window_ms = window_ms


class SiteConfig:
    def __init__(self):
        self.gateway_id = ""
        self.site = ""
        self.board = {}
        self.pins = {}
        self.serial = {}
        self.interfaces = {}
        self.journal = None
        self.devices = []
        self.uplinks = []
        self.status_period_s = 5.0
        self.no_ack_s = 30.0      # records waiting this long with no ack: the no_ack alarm
        self.device_down_s = 10.0  # not ok this long (without its own stale_s): down
        self.metrics_bind = None  # (host, port) of the OpenMetrics endpoint; None: off
        self.status_page = None   # StatusPageConfig when [status_page] bind is set
        self.sync_log = None
        self.sync_log_max_bytes = 5 << 20
        self.sync_log_backups = 3
        self.log = _log({})  # [log]: console log levels (midshift/firmware/edges/console_log.py)
        self.key_file = None
        self.command_key_file = None
        self.uart = {}    # MicroPython boards: name -> {"id", "tx", "rx", "rxbuf"}
        self.wifi = None  # MicroPython boards: {"ssid", "key_file"}
        self.store = None       # {"id", "tz"} (the tz's validity is the preflight's)
        self.till_api = None    # TillApiConfig when tills post to this gateway
        self.sell_rules = None  # the checked [sell_rules] table (core/sell_rules.py)

    def device(self, name):
        for d in self.devices:
            if d.name == name:
                return d
        return None


def merge(board, site):
    """Board tables overlaid by the site's, key by key, one level deep."""
    out = {}
    for doc in (board, site):
        for key, value in doc.items():
            if isinstance(value, dict):
                both = dict(out[key]) if isinstance(out.get(key), dict) else {}
                both.update(value)
                out[key] = both
            else:
                out[key] = value
    return out


def _table(doc, key, required=True):
    if key not in doc:
        if required:
            raise ConfigError(key, "is required", "a [%s] table" % key)
        return {}
    value = doc[key]
    if not isinstance(value, dict):
        raise ConfigError(key, "%r is not a table" % (value,), "a [%s] table" % key)
    return value


def validate(doc, device_types):
    """A ``SiteConfig`` from the merged dict; ``device_types``: type name -> ``DeviceType``
    (any mapping with ``get`` and iteration over the names). Raises ConfigError."""
    no_unknown_keys(doc, "(top level)", SECTIONS)
    _finite_numbers(doc, "")
    cfg = SiteConfig()
    gw = _table(doc, "gateway")
    no_unknown_keys(gw, "gateway", ("id", "site", "key_file", "command_key_file"))
    cfg.gateway_id = field(gw, "id", "gateway", str, check=_name_ok, allowed=NAME_RULE)
    cfg.site = field(gw, "site", "gateway", str, check=_name_ok, allowed=NAME_RULE)
    cfg.key_file = field(gw, "key_file", "gateway", str, default=None)
    cfg.command_key_file = field(gw, "command_key_file", "gateway", str, default=None)

    board = _table(doc, "board")
    no_unknown_keys(board, "board", ("name", "pin_factory"))
    cfg.board = {"name": field(board, "name", "board", str),
                 "pin_factory": field(board, "pin_factory", "board", str, default="mock",
                                      choices=PIN_FACTORIES)}
    cfg.pins = dict(_table(doc, "pins", False))
    for section in ("serial", "interfaces"):
        table = _table(doc, section, False)
        for key in table:
            field(table, key, section, str)
        setattr(cfg, section, dict(table))

    cfg.uart = _uarts(_table(doc, "uart", False))
    cfg.wifi = _wifi(_table(doc, "wifi", False))
    cfg.journal = _journal(_table(doc, "journal"))
    status = _table(doc, "status", False)
    no_unknown_keys(status, "status", ("period_s", "sync_log", "sync_log_max_bytes",
                                       "no_ack_s", "device_down_s", "sync_log_backups"))
    cfg.status_period_s = field(status, "period_s", "status", float, default=5.0, check=positive)
    cfg.no_ack_s = field(status, "no_ack_s", "status", float, default=30.0,
                         check=lambda v: 1 <= v <= 86400, allowed="1 to 86400 seconds")
    cfg.device_down_s = field(status, "device_down_s", "status", float, default=10.0,
                              check=lambda v: 0 < v <= 86400, allowed="more than 0, at most "
                              "86400 seconds (a device with its own stale_s uses that)")
    metrics = _table(doc, "metrics", False)
    no_unknown_keys(metrics, "metrics", ("bind",))
    bind = field(metrics, "bind", "metrics", str, default=None, allowed=BIND_FORM)
    if bind is not None:
        try:
            cfg.metrics_bind = parse_bind(bind)
        except ValueError as exc:
            raise ConfigError("metrics.bind", str(exc), BIND_FORM)
    cfg.status_page = _status_page(_table(doc, "status_page", False))
    cfg.sync_log = field(status, "sync_log", "status", str, default=None)
    cfg.sync_log_max_bytes = field(status, "sync_log_max_bytes", "status", int,
                                   default=5 << 20, check=lambda v: v >= 4096,
                                   allowed="at least 4096")
    cfg.sync_log_backups = field(status, "sync_log_backups", "status", int, default=3,
                                 check=lambda v: 0 <= v <= 100, allowed="0 to 100")
    cfg.log = _log(_table(doc, "log", False))

    _tills(doc, cfg)
    devices = _table(doc, "devices", cfg.till_api is None)  # a tills-only gateway is fine
    if not devices and cfg.till_api is None:
        raise ConfigError("devices", "has no device", "one [devices.NAME] table per device")
    for name in devices:
        cfg.devices.append(_device(name, devices[name], cfg, device_types))
    _one_device_per_line(cfg.devices)

    uplinks = _table(doc, "uplinks", False)
    for name in uplinks:
        cfg.uplinks.append(_uplink(name, uplinks[name], cfg))
    cfg.uplinks.sort(key=lambda u: u.priority)
    for i in range(1, len(cfg.uplinks)):
        first, then = cfg.uplinks[i - 1], cfg.uplinks[i]
        if first.priority == then.priority:  # which is tried first would be file order
            raise ConfigError("uplinks.%s.priority" % then.name,
                              "%d is also uplinks.%s's" % (then.priority, first.name),
                              "a priority per uplink, lower tried first (default 100)")
    if cfg.uplinks and not cfg.key_file:
        raise ConfigError("gateway.key_file", "is required when uplinks are configured",
                          "the path of the gateway's key (python -m midshift.host_tools provision)")
    return cfg


class StatusPageConfig:
    def __init__(self, bind, token_file, tls_cert, tls_key, client_ca, refresh_s):
        self.bind = bind              # (host, port)
        self.token_file = token_file  # a file holding the token; None: no token asked
        self.tls_cert = tls_cert      # PEM; None: plain HTTP
        self.tls_key = tls_key
        self.client_ca = client_ca    # set: a browser must show a certificate it signed
        self.refresh_s = refresh_s


def _status_page(t):
    """``[status_page]``: off without ``bind``; beyond loopback only with a token or
    client certificates, so the store LAN cannot read the gateway's state unasked."""
    p = "status_page"
    no_unknown_keys(t, p, ("bind", "token_file", "tls_cert", "tls_key", "client_ca",
                           "refresh_s"))
    bind = field(t, "bind", p, str, default=None, allowed=BIND_FORM)
    files = {}
    for k in ("token_file", "tls_cert", "tls_key", "client_ca"):
        files[k] = field(t, k, p, str, default=None, check=lambda v: len(v) > 0,
                         allowed="a file path")
    refresh_s = field(t, "refresh_s", p, int, default=10, check=lambda v: 2 <= v <= 3600,
                      allowed="2 to 3600 seconds")
    if bind is None:
        return None
    try:
        host, port = parse_bind(bind)
    except ValueError as exc:
        raise ConfigError(p + ".bind", str(exc), BIND_FORM)
    if (files["tls_cert"] is None) != (files["tls_key"] is None):
        raise ConfigError(p + (".tls_key" if files["tls_key"] is None else ".tls_cert"),
                          "is required with the other", "both tls_cert and tls_key, or neither")
    if files["client_ca"] is not None and files["tls_cert"] is None:
        raise ConfigError(p + ".client_ca", "needs TLS", "tls_cert and tls_key as well")
    if not is_loopback(host) and files["token_file"] is None and files["client_ca"] is None:
        raise ConfigError(p + ".bind", "%r is beyond loopback with no token_file or client_ca"
                          % (bind,), "a loopback address, or a token_file (or client_ca) "
                          "so that only staff can read the page")
    return StatusPageConfig((host, port), files["token_file"], files["tls_cert"],
                            files["tls_key"], files["client_ca"], refresh_s)


class TillApiConfig:
    def __init__(self, bind, port, tls_cert, tls_key, client_ca, tokens_file,
                 request_max_bytes, threads):
        self.bind = bind
        self.port = port
        self.tls_cert = tls_cert          # PEM from the site CA; None: plain HTTP (warned)
        self.tls_key = tls_key
        self.client_ca = client_ca        # set: a till must show a certificate it signed
        self.tokens_file = tokens_file    # JSON {"till-1": "<sha256 hex of its token>"}
        self.request_max_bytes = request_max_bytes
        self.threads = threads


TENDER_KINDS = ("cash", "card", "voucher")
SELL_LIMITS = ("card_floor_limit", "txn_cap", "offline_exposure_cap", "max_queue",
               "card_max_offline_age_s", "prices_max_age_s")


def _tills(doc, cfg):
    """``[store]``, ``[till_api]`` and ``[sell_rules]``: tills post transactions here."""
    store = _table(doc, "store", False)
    api = _table(doc, "till_api", False)
    rules = _table(doc, "sell_rules", False)
    has_api, has_rules = "till_api" in doc, "sell_rules" in doc
    if (has_api or has_rules) and "store" not in doc:
        raise ConfigError("store", "is required with [till_api] or [sell_rules]",
                          "a [store] table with id and tz")
    if "store" in doc:
        no_unknown_keys(store, "store", ("id", "tz"))
        cfg.store = {"id": field(store, "id", "store", str, check=_name_ok, allowed=NAME_RULE),
                     "tz": field(store, "tz", "store", str, check=_tz_shape,
                                 allowed='an IANA time zone, e.g. "Europe/Berlin" or "UTC"')}
    if not has_api:
        if has_rules:
            raise ConfigError("till_api", "is required with [sell_rules]",
                              "a [till_api] table (bind, port, tokens_file)")
        return
    p = "till_api"
    no_unknown_keys(api, p, ("bind", "port", "tls_cert", "tls_key", "client_ca", "tokens_file",
                             "request_max_bytes", "threads"))
    files = {}
    for k in ("tls_cert", "tls_key", "client_ca", "tokens_file"):
        files[k] = field(api, k, p, str, default=None, check=lambda v: len(v) > 0,
                         allowed="a file path")
    if (files["tls_cert"] is None) != (files["tls_key"] is None):
        raise ConfigError(p + (".tls_key" if files["tls_key"] is None else ".tls_cert"),
                          "is required with the other", "both tls_cert and tls_key, or neither")
    if files["client_ca"] is not None and files["tls_cert"] is None:
        raise ConfigError(p + ".client_ca", "needs TLS", "tls_cert and tls_key as well")
    if files["tokens_file"] is None and files["client_ca"] is None:
        raise ConfigError(p + ".tokens_file", "is required (or client_ca)",
                          "the hashes file from python -m midshift.host_tools provision tills")
    cfg.till_api = TillApiConfig(
        field(api, "bind", p, str, default="127.0.0.1", check=lambda v: len(v) > 0,
              allowed="an address to listen on"),
        field(api, "port", p, int, default=8443, check=lambda v: 0 <= v <= 65535,
              allowed="0 to 65535 (0: any free port)"),
        files["tls_cert"], files["tls_key"], files["client_ca"], files["tokens_file"],
        field(api, "request_max_bytes", p, int, default=65536,
              check=lambda v: 1024 <= v <= 1 << 20, allowed="1024 to 1048576"),
        field(api, "threads", p, int, default=8, check=lambda v: 1 <= v <= 64,
              allowed="1 to 64"))
    cfg.sell_rules = _sell_rules(rules)


def check_sell_rules(t, p="sell_rules"):
    """A ``[sell_rules]`` table checked as the site file's is (ConfigError naming ``p``):
    for rules published as reference data (``edges/till_api.py``)."""
    return _sell_rules(t, p)


def _sell_rules(t, p="sell_rules"):
    no_unknown_keys(t, p, ("offline_tenders", "manager_code_sha256") + SELL_LIMITS)
    out = {"offline_tenders": field(t, "offline_tenders", p, list, default=["cash"])}
    for i, kind in enumerate(out["offline_tenders"]):
        if kind not in TENDER_KINDS:
            raise ConfigError("%s.offline_tenders[%d]" % (p, i), "%r is not a tender" % (kind,),
                              ", ".join(TENDER_KINDS))
    for k in SELL_LIMITS:
        out[k] = field(t, k, p, int, default=None, check=lambda v: v >= 0,
                       allowed="0 or more (leave out for no limit)")
    code = field(t, "manager_code_sha256", p, str, default=None,
                 check=lambda v: len(v) == 64 and all(c in "0123456789abcdef" for c in v),
                 allowed="64 lowercase hex digits (sha256 of the manager code)")
    out["manager_code_sha256"] = code
    return out


def _tz_shape(text):
    """The shape of an IANA name; whether this machine knows it is the preflight's."""
    if not 0 < len(text) <= 64 or text.startswith("/") or ".." in text:
        return False
    for ch in text:
        if not (ch.isalpha() or ch.isdigit() or ch in "/_+-"):
            return False
    return True


def _finite_numbers(value, path):
    """TOML reads ``inf`` and ``nan`` as floats; no key of ours means either (``stale_s =
    inf`` would never go stale, a nan compares false with every bound)."""
    if isinstance(value, float):
        if not finite(value):
            raise ConfigError(path, "%r is not a finite number" % (value,), "a finite number")
    elif isinstance(value, dict):
        for key in value:
            _finite_numbers(value[key], path + "." + key if path else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _finite_numbers(item, "%s[%d]" % (path, i))


def _one_device_per_line(devices):
    """Two enabled devices on one serial line would steal each other's bytes. A device's
    serial line is its ``port`` when that is a string (a path, a pyserial URL, a node's
    UART name); Modbus's ``port`` is a TCP port number and shares nothing. Units of a
    multi-drop bus (Modbus RTU on RS-485) say so with ``settings["multidrop"]``, their
    line's settings and their address: they share a line whose settings they all have,
    each at an address of its own."""
    seen = {}
    for d in devices:
        port = d.settings.get("port")
        if not isinstance(port, str) or not d.settings.get("enabled", True):
            continue
        if port not in seen:
            seen[port] = (d, {})
        first, addresses = seen[port]
        bus = d.settings.get("multidrop")
        if first is not d:
            first_bus = first.settings.get("multidrop")
            if bus is None or first_bus is None:
                raise ConfigError("devices.%s.port" % d.name,
                                  "%r is also devices.%s's" % (port, first.name),
                                  "one device per serial line")
            if bus["line"] != first_bus["line"]:
                raise ConfigError("devices.%s.port" % d.name,
                                  "%r is devices.%s's line at %s, not %s"
                                  % (port, first.name, first_bus["line"], bus["line"]),
                                  "the same line settings on every device of one port")
        if bus is not None:
            if bus["address"] in addresses:
                raise ConfigError("devices.%s.%s" % (d.name, bus.get("address_key", "address")),
                                  "%r is also devices.%s's on %r"
                                  % (bus["address"], addresses[bus["address"]], port),
                                  "one address per unit on a line")
            addresses[bus["address"]] = d.name


def _uarts(table):
    """``[uart.NAME]`` tables of a MicroPython board: UART id, TX/RX GPIO pins, RX buffer."""
    out = {}
    ids = {}
    for name in table:
        p = "uart.%s" % name
        t = table[name]
        if not _name_ok(name):
            raise ConfigError(p, "is not a valid UART name", NAME_RULE)
        if not isinstance(t, dict):
            raise ConfigError(p, "%r is not a table" % (t,), "a [%s] table" % p)
        no_unknown_keys(t, p, UART_KEYS)
        u = {"id": field(t, "id", p, int, check=lambda v: 0 <= v <= 7, allowed="0 to 7"),
             "tx": field(t, "tx", p, int, default=None, check=lambda v: 0 <= v <= 63,
                         allowed="a GPIO number, 0 to 63"),
             "rx": field(t, "rx", p, int, default=None, check=lambda v: 0 <= v <= 63,
                         allowed="a GPIO number, 0 to 63"),
             # Bytes the UART holds while the node waits on the network (bounded by the
             # uplink's timeout): 9600 baud is 960 bytes a second.
             "rxbuf": field(t, "rxbuf", p, int, default=2048, check=lambda v: 256 <= v <= 65536,
                            allowed="256 to 65536 bytes")}
        if u["id"] in ids:
            raise ConfigError(p + ".id", "%d is also uart.%s's" % (u["id"], ids[u["id"]]),
                              "one table per UART")
        ids[u["id"]] = name
        out[name] = u
    return out


def _log(table):
    """``[log]``: the console log's levels. The device libraries (pymodbus, asyncua) log
    every failed retry of a connection the driver already reports as a state change, so
    they are quieter by default than the other libraries (paho, cheroot)."""
    no_unknown_keys(table, "log", LOG_KEYS)
    out = {}
    for key, default in (("level", "INFO"), ("libraries", "WARNING"),
                         ("device_libraries", "CRITICAL")):
        value = field(table, key, "log", str, default=default, allowed=", ".join(LOG_LEVELS))
        if value.upper() not in LOG_LEVELS:
            raise ConfigError("log." + key, "%r is not a log level" % (value,),
                              ", ".join(LOG_LEVELS))
        out[key] = value.upper()
    out["status_interval_s"] = field(table, "status_interval_s", "log", float, default=300.0,
                                     check=lambda v: 1 <= v <= 86400,
                                     allowed="1 to 86400 seconds")
    return out


def _wifi(table):
    """``[wifi]`` of a MicroPython board: the SSID; the passphrase lives in ``key_file``."""
    if not table:
        return None
    no_unknown_keys(table, "wifi", ("ssid", "key_file"))
    return {"ssid": field(table, "ssid", "wifi", str, check=lambda v: 0 < len(v) <= 32,
                          allowed="1 to 32 characters"),
            "key_file": field(table, "key_file", "wifi", str, default=None)}


def _journal(table):
    p = "journal"
    no_unknown_keys(table, p, ("path", "segment_size", "segment_count", "max_body",
                               "window_ms"))
    seg = field(table, "segment_size", p, int, default=1 << 20,
                check=lambda v: v >= 4096 and v % 512 == 0,
                allowed="a multiple of 512, at least 4096")
    count = field(table, "segment_count", p, int, default=64, check=lambda v: 2 <= v <= 65536,
                  allowed="2 to 65536")
    max_body = field(table, "max_body", p, int, default=4096,
                     check=lambda v: 64 <= v <= seg - 36,
                     allowed="64 to segment_size - 36 (%d)" % (seg - 36))
    return JournalConfig(field(table, "path", p, str, check=lambda v: len(v) > 0,
                               allowed="a directory path"),
                         seg, count, max_body,
                         field(table, "window_ms", p, float, default=0.0,
                               check=lambda v: 0 <= v <= 100, allowed="0 to 100"))


def _device(name, table, cfg, device_types):
    p = "devices.%s" % name
    if not _name_ok(name):
        raise ConfigError(p, "is not a valid device name", NAME_RULE)
    if not isinstance(table, dict):
        raise ConfigError(p, "%r is not a table" % (table,), "a [%s] table" % p)
    dtype = field(table, "type", p, str)
    kind = device_types.get(dtype)
    if kind is None:
        raise ConfigError(p + ".type", "%r is not a device type on this build" % (dtype,),
                          ", ".join(sorted(device_types)))
    cls = field(table, "class", p, str, default=kind.default_class, choices=CLASSES)
    enabled = field(table, "enabled", p, bool, default=True)
    rest = {}
    for k, v in table.items():
        if k not in DEVICE_KEYS:
            rest[k] = v
    port = rest.get("port")
    if isinstance(port, str) and port in cfg.serial:
        rest["port"] = cfg.serial[port]  # a name from the board's [serial] table
    settings = kind.check(name, rest, p)
    settings = dict(settings) if settings is not None else rest
    settings["enabled"] = enabled
    return DeviceConfig(name, dtype, cls, settings)


def _uplink(name, table, cfg):
    p = "uplinks.%s" % name
    if not isinstance(table, dict):
        raise ConfigError(p, "%r is not a table" % (table,), "a [%s] table" % p)
    no_unknown_keys(table, p, ("broker", "priority", "interface", "source_address", "metered",
                               "ca", "cert", "key", "drain_rate", "standby_keepalive_s",
                               "hedge"))
    broker = field(table, "broker", p, str, allowed=URL_FORMS)
    host, port, tls = _broker_url(broker, p + ".broker")
    interface = field(table, "interface", p, str, default=None)
    if interface is not None and interface in cfg.interfaces:
        interface = cfg.interfaces[interface]
    files = {}
    for k in ("ca", "cert", "key"):
        files[k] = field(table, k, p, str, default=None)
        if files[k] is not None and not tls:
            raise ConfigError(p + "." + k, "is set but the broker URL is not mqtts://",
                              "mqtts://HOST:PORT with ca, cert and key")
    if tls and (files["cert"] is None) != (files["key"] is None):
        raise ConfigError(p + ".key" if files["key"] is None else p + ".cert",
                          "is required with the other", "both cert and key, or neither")
    return UplinkConfig(name, host, port, tls,
                        field(table, "priority", p, int, default=100,
                              check=lambda v: 0 <= v <= 1000, allowed="0 to 1000"),
                        interface, field(table, "source_address", p, str, default=None),
                        field(table, "metered", p, bool, default=False),
                        files["ca"], files["cert"], files["key"],
                        field(table, "drain_rate", p, int, default=0,
                              check=lambda v: v >= 0, allowed="0 (no cap) or more"),
                        field(table, "standby_keepalive_s", p, int, default=60,
                              check=lambda v: 1 <= v <= 3600, allowed="1 to 3600 seconds"),
                        field(table, "hedge", p, str, default=None,
                              check=lambda v: v in ("all", "txn", "off"),
                              allowed='"all", "txn" or "off"'))


def _broker_url(url, key):
    try:
        return parse_broker_url(url)
    except BrokerUrlError as exc:
        raise ConfigError(key, exc.problem, exc.expected)
