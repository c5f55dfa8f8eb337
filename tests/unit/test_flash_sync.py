"""FileStorage.sync under the group commit: the flusher writes and syncs segments outside
the journal lock while the commit point is written and synced under it."""

import os

from midshift.firmware.core.journal import DATA_START
from midshift.firmware.edges.flash import FileStorage


def test_a_write_landing_during_another_sync_is_synced_by_the_next(tmp_path, monkeypatch):
    st = FileStorage.create(tmp_path / "j", 4096, 4)
    st.write(0, b"cursor")            # the commit point (head file)
    st.write(DATA_START, b"frames")   # segment 0
    real, synced = os.fdatasync, []

    def fdatasync(fd: int) -> None:
        synced.append(fd)
        if len(synced) == 1:  # the flusher's next run lands while this sync is under way
            st.write(DATA_START + 4096, b"more frames")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    st.sync()
    synced.clear()
    st.sync()  # the flusher's own sync for segment 1: must reach the file
    assert st._fds[2] in synced
    st.close()


def test_a_failed_sync_keeps_its_files_for_the_next(tmp_path, monkeypatch):
    st = FileStorage.create(tmp_path / "j", 4096, 4)
    st.write(DATA_START, b"frames")
    real, synced = os.fdatasync, []

    def failing(fd: int) -> None:
        raise OSError(5, "EIO")

    monkeypatch.setattr(os, "fdatasync", failing)
    try:
        st.sync()
    except OSError:
        pass
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd)))
    st.sync()
    assert synced == [st._fds[1]]  # segment 0 still dirty after the failure
    st.close()


def test_the_commit_point_syncs_the_head_alone(tmp_path, monkeypatch):
    # The flusher's segment write under way (outside the journal lock) is its own sync's
    # business: the commit point, synced under the lock, does not wait for it.
    from midshift.firmware.core.journal import Journal

    st = FileStorage.create(tmp_path / "j", 4096, 4)
    Journal.format(st, 4096, 7, "gw-1")
    j = Journal.open(st)
    for _ in range(3):
        j.append(b'{"v":1}', 1, 0)
    j.flush()
    j.append(b'{"v":2}', 1, 0)
    runs, seq, pos = j.take_pending()  # as the flusher: written, not yet synced
    for offset, data in runs:
        st.write(offset, data)
    real, synced = os.fdatasync, []
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd)))
    j.commit(2)
    assert synced == [st._fds[0]]
    st.sync()  # the flusher's sync still finds its segment to sync
    assert synced == [st._fds[0], st._fds[1]]
    j.mark_durable(seq, pos)
    st.close()
