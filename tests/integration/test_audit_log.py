"""The audit log catches an edited line, a deleted line (in the middle or at the end) and
a reordering; ``audit verify`` exits 1 naming the line, 0 on a whole log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from midshift.host_tools.__main__ import main as host_tools
from midshift.host_tools.audit_log import AuditLog
from tests.integration.provisioned import provisioned_site


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    return provisioned_site(tmp_path / "site", ["init-site", "p1"],
                            ["gateway", "gw-01", "--board", "sim"],
                            ["gateway", "gw-02", "--board", "sim"], ["rotate", "gw-01"],
                            ["revoke", "gw-02", "--reason", "lost"])


def verify(site: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = host_tools(["audit", "--site-dir", str(site), "verify", *extra])
    return rc, capsys.readouterr().out


def lines(site: Path) -> list[str]:
    return (site / "audit.log").read_text().splitlines(keepends=True)


def test_every_provisioning_action_is_a_chained_line_with_time_user_action_subject(
        site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    entries = [json.loads(line) for line in lines(site)]
    assert [(e["action"], e["subject"]) for e in entries] == [
        ("provision.init-site", "p1"), ("provision.gateway", "gw-01"),
        ("provision.gateway", "gw-02"), ("provision.rotate", "gw-01"),
        ("provision.revoke", "gw-02")]
    assert all(e["user"] and e["time"].endswith("Z") for e in entries)
    assert [e["prev"] for e in entries[1:]] == [e["hash"] for e in entries[:-1]]
    rc, out = verify(site, capsys)
    assert rc == 0 and "ok: 5 entries" in out


def test_an_edited_line_is_caught(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = lines(site)
    text[2] = text[2].replace('"lost"', '"x"').replace("gw-02", "gw-09")
    (site / "audit.log").write_text("".join(text))
    rc, out = verify(site, capsys)
    assert rc == 1 and "line 3: its hash does not match its content" in out


def test_a_deleted_line_is_caught(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = lines(site)
    del text[1]
    (site / "audit.log").write_text("".join(text))
    rc, out = verify(site, capsys)
    assert rc == 1 and "line 2: seq 3 where 2 was expected" in out


def test_a_line_deleted_from_the_end_is_caught_by_the_head(
        site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert host_tools(["audit", "--site-dir", str(site), "head"]) == 0
    recorded = capsys.readouterr().out.strip()          # as an operator would note it
    (site / "audit.log").write_text("".join(lines(site)[:-1]))
    rc, out = verify(site, capsys)
    assert rc == 1 and "lines were deleted from the end" in out
    # Cut and the head file rewritten to match: only the head kept elsewhere shows it.
    n, head, problems = AuditLog(site / "audit.log").verify()
    (site / "audit.head").write_text(head + "\n")
    assert verify(site, capsys)[0] == 0
    rc, out = verify(site, capsys, "--expect-head", recorded)
    assert rc == 1 and "expected head" in out


def test_appends_after_verification_keep_one_chain(site: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    log = AuditLog(site / "audit.log")
    for i in range(3):
        log.append("test.action", f"thing-{i}", {"n": i})
    rc, out = verify(site, capsys)
    assert rc == 0 and "ok: 8 entries" in out
