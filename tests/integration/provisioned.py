"""A provisioned site directory for tests: ``host_tools provision`` run in-process, one
command after another, each of which must succeed (the CLI's own tests check refusals
with ``midshift.host_tools.__main__.main`` directly)."""

from __future__ import annotations

from pathlib import Path

from midshift.host_tools.__main__ import main as host_tools


def provisioned_site(site: Path, *commands: list[str]) -> Path:
    """``site`` after ``provision --site-dir site <command>`` for each command, e.g.
    ``provisioned_site(tmp / "site", ["init-site", "p1"], ["gateway", "gw-01", "--board",
    "sim"])``."""
    for argv in commands:
        assert host_tools(["provision", "--site-dir", str(site), *argv]) == 0, argv
    return site
