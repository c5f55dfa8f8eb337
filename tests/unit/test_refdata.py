"""Reference data's apply decision: signed for this gateway, following the local version,
the checksum of the result matching, or rejected with a reason; the checksum updated per
operation equals the checksum of the whole table."""

from midshift.firmware.core.refdata import (
    EMPTY,
    RefdataGate,
    RefdataRejected,
    checksum_of,
    sign_message,
)
from midshift.firmware.core.signing import Signer

PORTABLE = True  # tests/micropython runs these cases under MicroPython too

GW = "gw-01"
KEY = b"k" * 32


def delta(frm, to, ops, checksum, gateway=GW, dataset="prices"):
    return {"v": 1, "kind": "delta", "gateway": gateway, "store": "s", "dataset": dataset,
            "from": frm, "to": to, "ops": ops, "checksum": checksum}


def rejected(fn, *args):
    try:
        fn(*args)
    except RefdataRejected as exc:
        return exc.reason
    raise AssertionError("accepted")


class Table:
    """A dataset kept as the store keeps it: rows with their hashes."""

    def __init__(self):
        self.rows = {}
        self.checksum = EMPTY
        self.version = 0

    def apply(self, gate, doc):
        gate.order(self.version, doc)
        got, writes = gate.plan(doc, self.checksum, lambda k: (self.rows.get(k) or (0, 0))[1]
                                if k in self.rows else None)
        for key, text, h in writes:
            if text is None:
                self.rows.pop(key, None)
            else:
                self.rows[key] = (text, h)
        self.checksum = got
        self.version = doc["to"]


def test_deltas_apply_in_order_and_the_checksum_follows_each_operation():
    host = Signer(KEY)
    gate = RefdataGate(host, GW)
    t = Table()
    v1 = {"A": {"price": 100}, "B": {"price": 200}, "C": {"price": 5, "name": "x"}}
    t.apply(gate, gate.read(sign_message(host, delta(0, 1, [[k, v1[k]] for k in v1],
                                                      checksum_of(v1)))))
    v2 = {"A": {"price": 101}, "C": {"price": 5, "name": "x"}, "D": {"price": 7}}
    ops = [["A", {"price": 101}], ["B", None], ["D", {"price": 7}]]
    t.apply(gate, gate.read(sign_message(host, delta(1, 2, ops, checksum_of(v2)))))
    assert t.version == 2 and t.checksum == checksum_of(v2) and sorted(t.rows) == ["A", "C", "D"]
    # The checksum does not depend on the order rows were written.
    assert checksum_of({"D": {"price": 7}, "A": {"price": 101}, "C": {"name": "x", "price": 5}}) \
        == checksum_of(v2)
    assert gate.rejected["bad_checksum"] == 0


def test_every_rejection_has_its_reason_and_changes_nothing():
    host = Signer(KEY)
    gate = RefdataGate(host, GW)
    t = Table()
    rows = {"A": {"price": 1}}
    good = delta(0, 1, [["A", {"price": 1}]], checksum_of(rows))
    assert rejected(gate.read, sign_message(Signer(b"x" * 32), good)) == "bad_signature"
    tampered = sign_message(host, good).replace(b'"price": 1', b'"price": 9')
    assert rejected(gate.read, tampered) == "bad_signature"
    assert rejected(gate.read, b"no signature here") == "bad_signature"
    assert rejected(gate.read, sign_message(host, delta(0, 1, [], EMPTY, gateway="gw-02"))) \
        == "wrong_gateway"
    assert rejected(gate.read, sign_message(host, delta(0, 1, [], EMPTY, dataset="x"))) \
        == "malformed"
    assert rejected(gate.read, sign_message(host, delta(1, 1, [], EMPTY))) == "malformed"
    wrong_sum = gate.read(sign_message(host, delta(0, 1, [["A", {"price": 1}]], EMPTY)))
    assert rejected(t.apply, gate, wrong_sum) == "bad_checksum"
    assert t.version == 0 and t.rows == {}
    twice = gate.read(sign_message(host, delta(0, 1, [["A", {"price": 1}]] * 2,
                                                  checksum_of(rows))))
    assert rejected(t.apply, gate, twice) == "malformed"
    t.apply(gate, gate.read(sign_message(host, good)))
    assert rejected(t.apply, gate, gate.read(sign_message(host, good))) == "stale"
    ahead = gate.read(sign_message(host, delta(2, 3, [], checksum_of(rows))))
    assert rejected(t.apply, gate, ahead) == "gap"
    assert t.version == 1
    assert gate.rejected == {"bad_signature": 3, "malformed": 3, "wrong_gateway": 1,
                             "stale": 1, "gap": 1, "bad_checksum": 1}


def test_a_snapshot_is_accepted_whole_or_not_at_all():
    host = Signer(KEY)
    gate = RefdataGate(host, GW)
    rows = {"A": {"price": 1}, "B": {"price": 2}, "C": {"price": 3}}
    chunk = {"v": 1, "kind": "chunk", "gateway": GW, "store": "s", "dataset": "prices",
             "version": 4, "count": 2, "checksum": checksum_of(rows)}
    c0 = gate.read(sign_message(host, dict(chunk, index=0, rows=[["A", {"price": 1}]])))
    c1 = gate.read(sign_message(host, dict(chunk, index=1, rows=[["B", {"price": 2}],
                                                                 ["C", {"price": 3}]])))
    got, out = gate.snapshot_rows([c0, c1])
    assert got == checksum_of(rows) and [r[0] for r in out] == ["A", "B", "C"]
    assert rejected(gate.snapshot_rows, [c0]) == "bad_checksum"
