"""The node's journal on a real littlefs (littlefs-python, the Pico W's geometry), driven
by the node's whole loop (bench/node_flash.py): a power cut after every program or erase
of the flash loses no record that was durable and not yet acknowledged by the ledger; a
storage that skips its commits is caught by the same trials (the check is not blind);
and the wear per event stays within the budget docs/micropython-node.md states."""

from __future__ import annotations

import pytest

from bench import node_flash

WEAR_EVENTS = 150


def test_a_power_cut_at_every_flash_write_loses_nothing_acknowledged() -> None:
    got = node_flash.power_cut_trials(6)
    assert got["power_cut_trials"] >= 30
    assert got["power_cut_losses"] == 0, got["power_cut_failures"]


def test_the_trials_catch_a_storage_that_does_not_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    from midshift.firmware.mpy import flash_storage

    def to_files_uncommitted(self: flash_storage.FlashStorage, entries: list) -> None:
        # The planted bug: the log's entries written to their segment files but not
        # committed (littlefs keeps the old file until a sync or close) before the log is
        # replaced.
        for offset, data in entries:
            i, off = self._locate(offset, len(data))
            f = self._file(i)
            f.seek(off)
            f.write(data)

    monkeypatch.setattr(flash_storage.FlashStorage, "_to_files", to_files_uncommitted)
    got = node_flash.power_cut_trials(8)
    assert got["power_cut_trials"] > 0 and got["power_cut_losses"] > 0, got


def test_flash_wear_per_event_within_budget() -> None:
    run = node_flash.WearRun()
    run.run(WEAR_EVENTS)
    fig = run.figures(WEAR_EVENTS)
    assert run.node.counters["journaled"] == WEAR_EVENTS
    assert fig["erases_per_event"] <= 1.0, fig  # 2.26 before the log and 30 s commits
