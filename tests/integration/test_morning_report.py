"""The morning report, review and day close from a real ledger (SQLite, and one run on
PostgreSQL), through the CLI as a store manager runs them: figures that add up across
and down, a daylight-saving day in Europe/Berlin (2026-03-29 has 23 hours), an offline
period with what was sold in it and when it reached the office, flags, the audit log,
clear errors; and the page in headless Chromium (DOM and a screenshot)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from midshift.host_tools.ledger.opener import open_store
from midshift.host_tools.ledger.store import LedgerStore
from midshift.simulator.postgres import ThrowawayPostgres
from tests.scenarios.test_report_in_chromium import CHROMIUM_FLAGS, _chromium, _png_rows_vary
from tests.till_txns import batch, body, incident, sale

ROOT = Path(__file__).resolve().parents[2]
DAY = "2026-03-29"
# Local Berlin times on 2026-03-29: 01:00 CET is 00:00 UTC; from 02:00 CET the clocks jump
# to 03:00 CEST (01:00 UTC).
MIDNIGHT = 1_774_738_800_000  # 2026-03-29 00:00 CET = 2026-03-28 23:00 UTC
H = 3_600_000


def local_ms(hour: float) -> int:
    """Berlin wall-clock hour of the day to ms (hours >= 3 are CEST, one hour shorter)."""
    return int(MIDNIGHT + (hour if hour < 2 else hour - 1) * H)


def fill(s: LedgerStore) -> None:
    """Two tills through the day; an outage 09:00-09:30 with offline sales uploaded at
    09:31; a resend; a refund of a known sale and a void of an unknown one; a declined card;
    a till number claimed twice; a scale fault."""
    a: list[bytes] = [incident("link", local_ms(9), state="offline", uplink=None,
                               since_ms=local_ms(9))]
    n = 0
    for hour, till, amount, tender in [(0.5, "till-1", 1000, "cash"), (3.5, "till-1", 250, "card"),
                                       (8.25, "till-2", 4999, "voucher"),
                                       (9.1, "till-1", 1500, "cash"), (9.2, "till-2", 700, "card"),
                                       (12.0, "till-2", 333, "cash"), (17.5, "till-1", 12000,
                                                                       "card")]:
        n += 1
        a.append(body(sale(till=till, till_seq=n, amount=amount, tender=tender), f"k{n}",
                      local_ms(hour), offline=9 <= hour < 9.5))
    a.append(incident("link", local_ms(9.5), state="online", uplink="lte", since_ms=local_ms(9.5)))
    a.append(incident("device", local_ms(10), device="scale1", state="fault",
                      error="no reply"))
    b = batch("gw-1", 1, a)
    s.store_many([b], local_ms(9.52))
    s.store_many([b], local_ms(9.53))  # a resend: 10 copies received again
    more = [body(sale(till="till-1", till_seq=20, type="refund", amount=250, tender="card",
                      original={"till": "till-1", "till_seq": 2}), "k20", local_ms(18)),
            body(sale(till="till-2", till_seq=21, type="void", amount=333,
                      original="k-unknown"), "k21", local_ms(18.5)),
            body(sale(till="till-2", till_seq=22, amount=900, tender="card", auth="declined"),
                 "k22", local_ms(19)),
            body(sale(till="till-2", till_seq=3, amount=100), "k3-other", local_ms(20))]
    s.store_many([batch("gw-1", 1, more, first_seq=len(a) + 1)], local_ms(20.1))


def host_tools(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "midshift.host_tools", *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def ledger(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with open_store(url) as s:
        fill(s)
    return url


def _report(url: str, tmp: Path, *extra: str) -> dict[str, Any]:
    out = host_tools("report", "--db", url, "--day", DAY, "--html", str(tmp / "html"),
                     "--json", str(tmp / "report.json"), *extra)
    assert out.returncode == 0, out.stderr
    assert "Needs attention" in out.stdout
    return json.loads((tmp / "report.json").read_text())


def _adds_up(s: dict[str, Any]) -> None:
    for part in ("sales", "refunds", "voids", "net"):
        tot = s["totals"][part]
        for k in ("amount", "cash", "card", "voucher", *(("count",) if part != "net" else ())):
            assert tot[k] == sum(t[part][k] for t in s["tills"]), (part, k)
        assert tot["amount"] == tot["cash"] + tot["card"] + tot["voucher"]
        for t in s["tills"]:
            assert t[part]["amount"] == t[part]["cash"] + t[part]["card"] + t[part]["voucher"]
    for k in ("amount", "cash", "card", "voucher"):
        assert s["totals"]["net"][k] == (s["totals"]["sales"][k] - s["totals"]["refunds"][k]
                                         - s["totals"]["voids"][k])
    assert sum(sum(v) for v in s["hourly"]["sales_by_till"].values()) == \
        s["totals"]["sales"]["amount"]


def test_report_figures_agree_and_know_the_dst_day(ledger: str, tmp_path: Path) -> None:
    r = _report(ledger, tmp_path)
    (s,) = r["stores"]
    _adds_up(s)
    assert s["totals"]["sales"]["count"] == 9 and s["totals"]["refunds"]["count"] == 1
    assert s["totals"]["sales"]["amount"] == 1000 + 250 + 4999 + 1500 + 700 + 333 + 12000 + 900 + 100
    assert s["totals"]["net"]["amount"] == s["totals"]["sales"]["amount"] - 250 - 333
    # the daylight-saving day: 23 hours, no 02:00, local times on both sides of the change
    assert s["day_hours"] == 23 and "02:00" not in s["hourly"]["labels"]
    assert s["hourly"]["labels"][:3] == ["00:00", "01:00", "03:00"]
    assert s["day_start_local"] == "2026-03-29T00:00:00+01:00"
    till1 = next(t for t in s["tills"] if t["till"] == "till-1")
    assert till1["first_local"] == "2026-03-29T00:30:00+01:00"
    assert s["hourly"]["sales_by_till"]["till-1"][2] == 250  # 03:30 CEST is the 3rd hour
    (p,) = s["offline_periods"]
    assert (p["start_local"], p["end_local"]) == ("2026-03-29T09:00:00+02:00",
                                                 "2026-03-29T09:30:00+02:00")
    assert p["transactions"] == 2 and p["net"]["amount"] == 2200 and p["minutes"] == 30
    assert p["reached_ledger_local"].startswith("2026-03-29T09:31")
    assert s["duplicates_suppressed"] == 10
    assert sorted(f["kind"] for f in s["review"]) == [
        "card_declined", "conflict_till_seq", "conflict_till_seq", "unknown_original"]
    assert [i["what"] for i in s["incidents"]] == [
        "lost its connection to the office", "connected to the office again (over lte)",
        "device scale1 is fault: no reply"]
    assert not r["verdict"]["ok"] and "4 items to review" in r["verdict"]["text"]


def test_autumn_day_has_25_hours(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    at = 1_792_887_200_000  # 2026-10-25 00:13:20 UTC = 02:13 CEST, the first 02:00 hour
    with open_store(url) as s:
        s.store_many([batch("gw-1", 1, [body(sale(day="2026-10-25"), "k", at),
                                        body(sale(till_seq=2, day="2026-10-25"), "k2", at + H)])],
                     at + 2 * H)
    out = host_tools("report", "--db", url, "--day", "2026-10-25", "--json",
                     str(tmp_path / "r.json"), "--html", str(tmp_path / "page"))
    assert out.returncode == 0, out.stderr
    (st,) = json.loads((tmp_path / "r.json").read_text())["stores"]
    assert st["day_hours"] == 25
    labels = st["hourly"]["labels"]
    assert labels[2:4] == ["02:00 CEST", "02:00 CET"]
    assert st["hourly"]["sales_by_till"]["till-1"][2:4] == [1234, 1234]
    till, = st["tills"]
    assert (till["first_local"], till["last_local"]) == ("2026-10-25T02:13:20+02:00",
                                                         "2026-10-25T02:13:20+01:00")
    # The page shows the one clock time twice, told apart by the zone; other hours plain.
    page = (tmp_path / "page" / "report.html").read_text()
    assert "<td class=''>02:13 CEST</td><td class=''>02:13 CET</td>" in page
    assert "25 hours (the clocks changed)" in page
    assert "Everything adds up" in out.stdout


def test_review_and_day_close_with_audit_log(ledger: str, tmp_path: Path) -> None:
    log = tmp_path / "site" / "audit.log"
    out = host_tools("review", "--db", ledger, "--open")
    assert out.returncode == 0 and "4 flag(s), 4 open" in out.stdout
    first = json.loads(host_tools("review", "--db", ledger, "--json").stdout)[0]
    ok = host_tools("review", "--db", ledger, "--resolve", str(first["id"]), "--by", "maria",
                    "--why", "customer paid cash instead", "--log", str(log))
    assert ok.returncode == 0, ok.stderr
    again = host_tools("review", "--db", ledger, "--resolve", str(first["id"]), "--by", "joe",
                       "--why", "x", "--log", str(log))
    assert again.returncode == 2 and "already resolved by maria" in again.stderr
    assert host_tools("review", "--db", ledger, "--resolve", "1").returncode == 2
    assert "3 open" in host_tools("review", "--db", ledger, "--store", "store-1").stdout
    closed = host_tools("day", "close", "--db", ledger, "--store", "store-1", "--day", DAY,
                        "--by", "maria", "--log", str(log))
    assert closed.returncode == 0, closed.stderr
    bad = host_tools("day", "close", "--db", ledger, "--store", "store-1", "--day", "29.03.2026",
                     "--by", "maria", "--log", str(log))
    assert bad.returncode == 2 and "YYYY-MM-DD" in bad.stderr
    twice = host_tools("day", "close", "--db", ledger, "--store", "store-1", "--day", DAY,
                       "--by", "joe", "--log", str(log))
    assert twice.returncode == 2 and "already closed by maria" in twice.stderr
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(x["action"], x["details"].get("resolved_by") or x["details"].get("closed_by"))
            for x in lines] == [("review.resolve", "maria"), ("day.close", "maria")]
    assert lines[0]["details"]["resolution"] == "customer paid cash instead"
    assert host_tools("audit", "--log", str(log), "verify").returncode == 0
    missing = host_tools("review", "--db", f"sqlite:///{tmp_path / 'nope.db'}")
    assert missing.returncode == 2 and "no ledger database" in missing.stderr
    assert host_tools("report", "--db", ledger, "--day", DAY, "--store", "store-9",
                      "--json", str(tmp_path / "x.json")).returncode == 2
    assert "--resolve" in host_tools("review", "--help").stdout


def test_report_on_postgresql_matches_sqlite(ledger: str, pg: ThrowawayPostgres,
                                             tmp_path: Path) -> None:
    url = pg.create_database(f"report_{time.time_ns() % 10**9}")
    with open_store(url, migrate=True) as s:
        fill(s)
    a = _report(ledger, tmp_path / "a")
    b = _report(url, tmp_path / "b")
    for r in (a, b):
        r.pop("generated_ms")
        for st in r["stores"]:
            for f in st["review"]:
                f.pop("raised_local")
    assert a == b


def test_report_in_headless_chromium(ledger: str, tmp_path: Path) -> None:
    _report(ledger, tmp_path)
    page = (tmp_path / "html" / "report.html").as_uri()
    common = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", page], capture_output=True, text=True,
                         timeout=120).stdout
    assert "Morning report: Sunday 29 March 2026" in dom
    assert "id=\"verdict\" class=\"attention\"" in dom and "Needs attention" in dom
    assert dom.count("<svg") == 2  # sales by hour, tenders by till
    assert "49.99" in dom and "120.00" in dom and "EUR" in dom  # money in the currency, minor units -> 12.34
    assert "still offline" not in dom and "09:00" in dom and "09:30" in dom
    assert "card payment declined" in dom and "device scale1 is fault" in dom
    assert "23 hours (the clocks changed)" in dom
    shot = tmp_path / "report.png"
    subprocess.run([*common, "--window-size=1100,3000", f"--screenshot={shot}", page],
                   capture_output=True, timeout=120, check=True)
    assert _png_rows_vary(shot.read_bytes()) > 300
    keep = ROOT / "build" / "morning-report"  # for a person to look at
    keep.mkdir(parents=True, exist_ok=True)
    (keep / "report.png").write_bytes(shot.read_bytes())
