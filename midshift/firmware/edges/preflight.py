"""What ``python -m midshift.firmware run`` and ``check`` verify on this machine before anything starts.

The core's check (``midshift/firmware/core/site_config.py``) sees only the config; this one looks at
the files and devices it names, as ``nginx -t`` does, so that ``check`` says "ok" only
when ``run`` would start:

- key files (``gateway.key_file``, ``gateway.command_key_file``) exist and can be read;
- each TLS uplink's CA, certificate and key load (the certificate matches its key);
- each enabled serial device's ``port`` is a board ``[serial]`` name, a pyserial URL or a
  device path that exists, and no two of them are the same device under two names
  (``/dev/serial/by-id/...`` and the ``/dev/ttyUSB0`` it points to);
- the status page's token and TLS files can be read;
- a journal still to be formatted fits its filesystem and its free space (``statvfs`` of
  the nearest directory that exists).

``need_devices=False`` skips one thing: that each serial device is present. ``check
--offline`` uses it for a config checked away from its gateway, and ``run`` always: a
scanner unplugged at boot must not keep the journal from draining and the other devices
from being read (its driver waits for it, ``disconnected``), nor make systemd give up
restarting the agent. Everything else is checked the same for both. Errors are
``ConfigError`` naming the key; ``load_checked`` adds the file, as the loader does.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from midshift.firmware.core.errors import ConfigError
from midshift.firmware.core.journal import DATA_START
from midshift.firmware.core.site_config import SiteConfig, UplinkConfig
from midshift.firmware.edges.config_file import load_config
from midshift.firmware.edges.flash import HEAD_NAME

PORT_FORMS = ("a [serial] name of the board, a device path (/dev/serial/by-id/...) or a "
              "pyserial URL (socket://HOST:PORT)")


def load_checked(site_path: str | Path, board_path: str | Path | None = None,
                 need_devices: bool = True) -> SiteConfig:
    """The config ``run`` starts with and ``check`` prints: loaded, validated, preflighted."""
    return load_config(site_path, board_path, then=lambda cfg: preflight(cfg, need_devices))


def preflight(cfg: SiteConfig, need_devices: bool = True) -> None:
    """Raise ``ConfigError`` for the first thing on this machine that would stop ``run``."""
    for key, path in (("gateway.key_file", cfg.key_file),
                      ("gateway.command_key_file", cfg.command_key_file)):
        if path is not None:
            _readable(key, path)
    for u in cfg.uplinks:
        if u.tls:
            _tls_files(u)
    _serial_ports(cfg, need_devices)
    _journal_fits(cfg)
    _tills(cfg)
    _status_page(cfg)


def _status_page(cfg: SiteConfig) -> None:
    """The page's token and TLS files can be read (and the token is long enough)."""
    page = cfg.status_page
    if page is None:
        return
    for key in ("tls_cert", "tls_key", "client_ca", "token_file"):
        if getattr(page, key) is not None:
            _readable(f"status_page.{key}", getattr(page, key))
    if page.token_file is not None:
        from midshift.firmware.edges.status_page import read_token
        read_token(page.token_file)


def _tills(cfg: SiteConfig) -> None:
    """The store's time zone is known here; the till API's files can be read."""
    if cfg.store is not None:
        import zoneinfo
        try:
            zoneinfo.ZoneInfo(cfg.store["tz"])
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError("store.tz", f"{cfg.store['tz']!r} is not a time zone on this "
                              "machine", 'an IANA name, e.g. "Europe/Berlin"') from None
    api = cfg.till_api
    if api is not None:
        for key in ("tls_cert", "tls_key", "client_ca", "tokens_file"):
            if getattr(api, key) is not None:
                _readable(f"till_api.{key}", getattr(api, key))


def _readable(key: str, path: str) -> None:
    try:
        with open(path, "rb") as f:
            data = f.read(1)
    except FileNotFoundError:
        raise ConfigError(key, f"{path!r} does not exist", "a readable file") from None
    except IsADirectoryError:
        raise ConfigError(key, f"{path!r} is a directory", "a readable file") from None
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path!r}: {exc.strerror}",
                          "a file the agent's user can read") from None
    if not data:
        raise ConfigError(key, f"{path!r} is empty",
                          "the file python -m midshift.host_tools provision wrote")


def _tls_files(u: UplinkConfig) -> None:
    p = f"uplinks.{u.name}"
    for k in ("ca", "cert", "key"):
        if getattr(u, k):
            _readable(f"{p}.{k}", getattr(u, k))
    try:
        ctx = ssl.create_default_context(cafile=u.ca)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(p + ".ca", f"{u.ca!r} does not load: {exc}",
                          "the site CA certificate (PEM)") from None
    if u.cert:
        try:  # a key asking for a passphrase is refused here, not prompted for
            ctx.load_cert_chain(u.cert, u.key, password=lambda: b"")
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(p + ".cert", f"{u.cert!r} with key {u.key!r} does not load: "
                              f"{exc}", "this gateway's certificate and its unencrypted "
                              "key (PEM)") from None


def _serial_ports(cfg: SiteConfig, need_devices: bool) -> None:
    names = {path: name for name, path in cfg.serial.items()}
    devices: dict[str, str] = {}  # the device a path resolves to -> the config's device
    for d in cfg.devices:
        port = d.settings.get("port")
        if not isinstance(port, str) or not d.settings.get("enabled", True) or "://" in port:
            continue  # a TCP port number, a disabled device, a pyserial URL (scheme checked)
        key = f"devices.{d.name}.port"
        if not port.startswith("/"):
            raise ConfigError(key, f"{port!r} is neither a [serial] name of the board "
                              f"({', '.join(sorted(cfg.serial)) or 'it has none'}) nor a "
                              "device path", PORT_FORMS)
        if not need_devices:
            continue
        via = f" (the board's serial.{names[port]})" if port in names else ""
        if not os.path.exists(port):
            raise ConfigError(key, f"{port!r}{via} does not exist",
                              PORT_FORMS + "; --offline to check away from the gateway")
        real = os.path.realpath(port)
        if real in devices:
            raise ConfigError(key, f"{port!r} is {real}, as devices.{devices[real]}.port is",
                              "one device per serial line")
        devices[real] = d.name


def _size(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n / 1024:.1f} KiB"


def _journal_fits(cfg: SiteConfig) -> None:
    """A journal not formatted yet must fit: its files are written in full at format."""
    j = cfg.journal
    here = Path(j.path)
    if (here / HEAD_NAME).exists():
        return  # formatted already: it keeps the size it has
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        raise ConfigError("journal.path", f"{j.path!r} is under {str(here)!r}, "
                          "which is not a directory", "a directory path")
    st = os.statvfs(here)
    total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    size = DATA_START + j.segment_size * j.segment_count
    what = f"{j.segment_count} x {j.segment_size} bytes ({_size(size)})"
    if size > total:
        raise ConfigError("journal.segment_count", f"{what} is larger than the filesystem "
                          f"of {str(here)!r} ({_size(total)})",
                          f"at most {max(0, (total - DATA_START) // j.segment_size)} segments "
                          f"of {j.segment_size} bytes")
    if size > free:
        raise ConfigError("journal.segment_count", f"{what} does not fit the "
                          f"{_size(free)} free on {str(here)!r}",
                          f"at most {max(0, (free - DATA_START) // j.segment_size)} segments "
                          f"of {j.segment_size} bytes, or free space")
