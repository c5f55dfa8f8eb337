"""Child process for the SIGKILL test: appends through the file storage and reports.

Prints ``R <next_seq>`` once the journal is open, then for every record whose append was
reported durable ``D <seq> <class> <sha256 of body>``, and ``I <seq>`` before and ``C <seq>`` after each
commit point is persisted. Runs until killed (or ``max_records``, so it always stops by itself).
"""

import hashlib
import random
import sys
import threading

from midshift.firmware.core.errors import JournalFull
from midshift.firmware.core.record import TELEMETRY, TXN
from midshift.firmware.edges.flash import open_or_create_journal
from midshift.firmware.edges.group_commit import GroupCommitJournal


def main() -> None:
    directory, seed, max_records = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    journal = open_or_create_journal(directory, 8192, 16, "gw-kill")
    gc = GroupCommitJournal(journal)
    out = sys.stdout
    out.write(f"R {journal.next_seq}\n")
    out.flush()
    lock = threading.Lock()

    def producer(k: int) -> None:
        prng = random.Random(seed * 31 + k)
        for _ in range(max_records):
            body = prng.randbytes(prng.randrange(1, 400))
            cls = TELEMETRY if prng.random() < 0.2 else TXN
            try:
                seq = gc.append(body, cls)
            except JournalFull:  # the "ledger" below acknowledges soon; a POS would retry
                gc.wait_for_durable_after(1 << 62, 0.002)
                continue
            if gc.wait_durable(seq, 5.0):
                with lock:
                    out.write(f"D {seq} {cls} {hashlib.sha256(body).hexdigest()}\n")
                    out.flush()

    threads = [threading.Thread(target=producer, args=(k,), daemon=True) for k in range(3)]
    for t in threads:
        t.start()
    committed = journal.tail_seq - 1
    while any(t.is_alive() for t in threads):
        threads[0].join(0.002)
        # Acknowledge a random durable prefix now and then, as the ledger would.
        durable = gc.stats()["durable_seq"]
        if durable > committed and rng.random() < 0.5:
            upto = rng.randrange(committed + 1, durable + 1)
            with lock:  # announce first: the kill may land between commit and report
                out.write(f"I {upto}\n")
                out.flush()
            gc.commit(upto)
            committed = upto
            with lock:
                out.write(f"C {upto}\n")
                out.flush()
    gc.close()


if __name__ == "__main__":
    main()
