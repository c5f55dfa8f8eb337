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
