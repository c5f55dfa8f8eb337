"""``python -m midshift.host_tools provision tills``: one 0600 token per till, the digests file the
gateway reads, an audit line; the gateway's TokenBook takes exactly those tokens."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from midshift.firmware.edges.till_api import TokenBook
from midshift.host_tools.__main__ import main


def test_tokens_hashes_and_audit(tmp_path: Path) -> None:
    out, site = tmp_path / "tills", tmp_path / "site"
    assert main(["provision", "--site-dir", str(site), "tills", "--store", "store-7",
                 "--tills", "till-1,till-2", "--out", str(out)]) == 0
    tokens = {t: (out / f"{t}.token").read_text().strip() for t in ("till-1", "till-2")}
    for t in tokens:
        assert stat.S_IMODE((out / f"{t}.token").stat().st_mode) == 0o600
    hashes = json.loads((out / "till-tokens.json").read_text())
    assert sorted(hashes) == ["till-1", "till-2"]
    assert not any(tok in json.dumps(hashes) for tok in tokens.values())
    book = TokenBook(str(out / "till-tokens.json"))
    assert book.till_for(tokens["till-2"]) == "till-2"
    assert book.till_for(tokens["till-2"] + "x") is None
    audit = [json.loads(x) for x in (site / "audit.log").read_text().splitlines()]
    assert audit[-1]["action"] == "provision_tills" and audit[-1]["subject"] == "store-7"
    assert not any(tok in (site / "audit.log").read_text() for tok in tokens.values())
    # An existing till's token is kept unless --force; a new till merges in.
    assert main(["provision", "--site-dir", str(site), "tills", "--store", "store-7",
                 "--tills", "till-1", "--out", str(out)]) == 2
    assert (out / "till-1.token").read_text().strip() == tokens["till-1"]
    assert main(["provision", "--site-dir", str(site), "tills", "--store", "store-7",
                 "--tills", "till-3", "--out", str(out)]) == 0
    assert sorted(json.loads((out / "till-tokens.json").read_text())) == [
        "till-1", "till-2", "till-3"]
    assert main(["provision", "--site-dir", str(site), "tills", "--store", "store 7",
                 "--tills", "till-4", "--out", str(out)]) == 2
