"""The till emulator against a real agent with the till API, mosquitto and the ledger, and
the tills' judge on what they left: what each cashier was told against the ledger."""

from __future__ import annotations

import json
from pathlib import Path

from bench.till_site import write_till_site
from midshift.firmware.agent import Agent
from midshift.firmware.edges.preflight import load_checked
from midshift.simulator.devices.till import TEST_PAN, Till, read_truth
from midshift.simulator.lab import Lab, wait_for
from midshift.simulator.till_judge import judge_tills

RULES = {"offline_tenders": ["cash", "card"], "card_floor_limit": 500}


def test_tills_through_an_outage_are_judged_against_the_ledger(tmp_path: Path) -> None:
    lab = Lab(tmp_path, uplinks=1)
    try:
        site, tokens = write_till_site(tmp_path / "gw", ["till-1", "till-2"], rules=RULES,
                                       uplink_ports=(lab.proxies[0].address[1],))
        agent = Agent(load_checked(site))
        agent.forwarding_options = lab.forwarding
        lab.agent = agent.start()
        assert wait_for(lambda: agent.forwarding.active is not None, 10)
        truth = tmp_path / "tills"
        truth.mkdir()
        tills = [Till(name, agent.tills.port, tokens[name], truth / f"{name}.jsonl",
                      business_day="2026-12-05", seed=i, rate_per_s=0, card_share=0.6,
                      voucher_share=0.2, double_submit=0.2, full_pan_every=7,
                      unknown_refund_every=9) for i, name in enumerate(tokens)]
        for _ in range(10):  # online: everything sells
            for t in tills:
                t.one()
        lab.proxies[0].set_mode("refuse")
        assert wait_for(lambda: agent.forwarding.active is None, 10)
        for _ in range(15):  # offline: cards over 5.00 and vouchers are refused
            for t in tills:
                t.one()
        lab.proxies[0].set_mode("pass")
        lines = [x for t in tills for x in read_truth(t.truth_path)]
        accepted = [x for x in lines if x["told"] == "accepted"]
        assert wait_for(lambda: len(lab.store.transactions()) == len(accepted), 20)
        rules = {x["rule"] or x["error"] for x in lines if x["told"] == "refused"}
        assert {"card_data", "tender_not_offline", "card_floor_limit"} <= rules, rules
        assert sum(t.counters["recashed"] for t in tills) >= 1  # taken again in cash
        assert sum(t.counters["double_submits"] for t in tills) >= 1
        r = judge_tills([truth], lab.store, [tmp_path / "gw"], [tmp_path / "ledger.db"],
                        [TEST_PAN])
        assert (r["till_accepted_missing"], r["till_accepted_twice"], r["till_altered"],
                r["till_refused_in_ledger"], r["full_pans_found"]) == (0, 0, 0, 0, 0), r
        assert r["till_unknown_originals_injected"] >= 2
        assert r["till_unknown_originals_unflagged"] == 0
        rows = lab.store.transactions()
        assert any(t["offline"] for t in rows) and not all(t["offline"] for t in rows)
        assert r["till_accepted"] == len(accepted)
        assert {x["till"] for x in accepted} == {"till-1", "till-2"}
    finally:
        lab.close()


def test_the_judge_sees_a_lost_sale_a_changed_one_and_a_pan_on_flash(tmp_path: Path) -> None:
    """The judge must be able to fail: a told-accepted sale missing from the ledger, one
    whose contents differ, and a card number left in a file are each counted."""
    lab = Lab(tmp_path, uplinks=1)
    try:
        site, tokens = write_till_site(tmp_path / "gw", ["till-1"],
                                       uplink_ports=(lab.proxies[0].address[1],))
        agent = Agent(load_checked(site))
        agent.forwarding_options = lab.forwarding
        lab.agent = agent.start()
        truth = tmp_path / "tills"
        truth.mkdir()
        till = Till("till-1", agent.tills.port, tokens["till-1"], truth / "till-1.jsonl",
                    business_day="2026-12-05", seed=5, rate_per_s=0, card_share=0,
                    voucher_share=0)
        for _ in range(3):
            till.one()
        assert wait_for(lambda: len(lab.store.transactions()) == 3, 20)
        lines = read_truth(till.truth_path)
        lines[0]["sha"] = "0" * 64  # the ledger holds other contents than the till was told
        lines.append(dict(lines[1], key="never-sent"))  # told accepted, not in the ledger
        till.truth_path.write_text("".join(json.dumps(x) + "\n" for x in lines))
        (tmp_path / "gw" / "left-behind.txt").write_text(f"cashier typed {TEST_PAN}\n")
        r = judge_tills([truth], lab.store, [tmp_path / "gw"], [tmp_path / "ledger.db"],
                        [TEST_PAN])
        assert (r["till_altered"], r["till_accepted_missing"], r["full_pans_found"]) == (1, 1, 1)
    finally:
        lab.close()
