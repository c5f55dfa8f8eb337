"""The till API: tills POST transactions to the gateway over HTTP/1.1 + JSON (issue 17).

cheroot's WSGI server (a thread pool, fits the agent's threads; TLS from the site CA when
``[till_api] tls_cert``/``tls_key`` are set, client certificates when ``client_ca`` is)
in front of one application function. Endpoints and answers: ``docs/till-api.md`` and
``till-api.openapi.json`` beside this package (package data; ``docs/`` keeps a copy a test
holds equal), served at ``GET /v1/openapi.json``.

A POST, in order: credential (a per-till bearer token, its sha256 compared in constant
time, or a client certificate whose CN is the till) -> size -> Idempotency-Key -> JSON ->
card data (refused, and the body is never logged, echoed, journaled or indexed) -> shape
(``core/till_txn.py``) -> the token's till is the body's -> the key: in flight 409, stored
with the same digest 200 + the stored answer, with another 422 -> the offline sell rules
(``core/sell_rules.py``) -> ``agent.append_txn`` (durable, or 507) -> the index
(``till_index.py``) -> 201.

When the uplink is gone nothing changes here but the rules: the transaction is journaled
and waits for the forwarder like any other record. When the journal refuses (full, lost,
no space) the till gets 507 and may retry; nothing is half-written.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cheroot import wsgi

from midshift.firmware.core import record as rec
from midshift.firmware.core.errors import ConfigError, JournalFull, MidshiftError, RecordTooLarge
from midshift.firmware.core.event import decode_body, encode_body
from midshift.firmware.core.sell_rules import SellRules, SellState, amount
from midshift.firmware.core.site_config import check_sell_rules
from midshift.firmware.core.till_txn import (
    TxnInvalid,
    canonical_sha,
    find_card_data,
    has_pan,
    validate,
)
from midshift.firmware.edges.till_index import Entry, IdempotencyIndex

log = logging.getLogger(__name__)

OPENAPI = Path(__file__).resolve().parents[1] / "till-api.openapi.json"  # package data
KEY_MAX = 128
# A UUID's digit groups can join into a Luhn-valid run (about one random UUID in a
# hundred), yet a UUID is never a card number written out: the key check skips them.
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
AUDIT_FILE = "till-audit.log"
INDEX_FILE = "till-keys.sqlite"


class TokenBook:
    """``{"till-1": "<sha256 hex of its token>"}`` from ``tokens_file``: a token is never
    stored on the gateway, only its digest."""

    def __init__(self, path: str | None) -> None:
        self.digests: dict[str, bytes] = {}
        if path is None:
            return
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError("till_api.tokens_file", f"cannot read {path}: {exc}",
                              "the JSON file from python -m midshift.host_tools provision tills") from None
        if not isinstance(doc, dict) or not all(
                isinstance(v, str) and len(v) == 64 for v in doc.values()):
            raise ConfigError("till_api.tokens_file", f"{path} is not {{till: sha256 hex}}",
                              "the JSON file from python -m midshift.host_tools provision tills")
        self.digests = {k: bytes.fromhex(v) for k, v in doc.items()}

    def till_for(self, token: str) -> str | None:
        """The till this token belongs to; every digest is compared, in constant time."""
        got = hashlib.sha256(token.encode()).digest()
        found = None
        for till, want in self.digests.items():
            if hmac.compare_digest(got, want):
                found = till
        return found


class Answer(Exception):
    """An HTTP answer other than the happy path: status, error code, extra fields."""

    def __init__(self, status: int, error: str, detail: str = "", **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.body = {"error": error, "detail": detail, **extra}


REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
           413: "Content Too Large", 422: "Unprocessable Content", 500: "Internal Server Error",
           507: "Insufficient Storage"}


class Queued:
    """Accepted transactions of this epoch not yet in the ledger: seq -> (amount, offline,
    accepted_ms), with running sums, so a 90,000-deep outage queue costs O(log n) per
    POST. What the status shows and the exposure rule counts. Callers hold the API lock."""

    def __init__(self) -> None:
        self.items: dict[int, tuple[int, bool, int]] = {}
        self._seqs: list[int] = []  # a heap: the oldest queued first
        self.amount = 0
        self.offline_amount = 0

    def add(self, seq: int, amount: int, offline: bool, accepted_ms: int) -> None:
        if seq in self.items:
            return
        self.items[seq] = (amount, offline, accepted_ms)
        heapq.heappush(self._seqs, seq)
        self.amount += amount
        self.offline_amount += amount if offline else 0

    def drop_through(self, committed_seq: int) -> None:
        while self._seqs and self._seqs[0] <= committed_seq:
            amount, offline, _ = self.items.pop(heapq.heappop(self._seqs))
            self.amount -= amount
            self.offline_amount -= amount if offline else 0

    def totals(self) -> tuple[int, int, int, int | None]:
        """(count, amount, offline amount, accepted_ms of the oldest by seq)."""
        oldest = self.items[self._seqs[0]][2] if self._seqs else None
        return len(self.items), self.amount, self.offline_amount, oldest


class TillApi:
    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.cfg = agent.cfg.till_api
        self.store = agent.cfg.store
        self.rules = SellRules(agent.cfg.sell_rules or {})
        self.rules_version = 0  # the published sell_rules dataset's in force (0: the site's)
        self.tokens = TokenBook(self.cfg.tokens_file)
        data_dir = Path(agent.cfg.journal.path)
        self.audit_path = data_dir / AUDIT_FILE
        self.index = IdempotencyIndex(data_dir / INDEX_FILE)
        self.queued = Queued()
        self._lock = threading.Lock()        # in-flight keys, queue, rules: one decision
        self._in_flight: set[str] = set()
        self.counters = {"accepted": 0, "replayed": 0, "conflict_in_flight": 0,
                         "key_reused": 0, "invalid": 0, "card_data": 0, "refused": 0,
                         "journal_refused": 0, "unauthorized": 0, "rules_refused": 0}
        self.forced_offline = self._forced_from_audit()
        self._link: tuple[bool, int] = (False, agent.clock.now_ms())  # (online, since_ms)
        self.server: wsgi.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self._rebuilt = False

    # ---- life ------------------------------------------------------------------------------

    def rebuild(self) -> TillApi:
        """The index and the queue from the journal's unreclaimed transactions: before
        forwarding starts (the agent's order), so no ack reclaims one first."""
        if not self._rebuilt:
            self._rebuild()
            self._rebuilt = True
        return self

    def start(self) -> TillApi:
        self.rebuild()
        self._link = (self._uplink_active(), self.agent.clock.now_ms())
        self.server = wsgi.Server((self.cfg.bind, self.cfg.port), self.app,
                                  numthreads=self.cfg.threads, server_name="midshift-till-api",
                                  timeout=10, shutdown_timeout=2)
        if self.cfg.tls_cert:
            self.server.ssl_adapter = self._tls()
        else:
            log.warning("till API on %s:%d without TLS: tokens cross the LAN in clear "
                        "(set [till_api] tls_cert and tls_key)", self.cfg.bind, self.cfg.port)
        try:
            self.server.prepare()
        except OSError as exc:
            self.index.close()
            raise ConfigError("till_api.port", f"cannot listen on {self.cfg.bind}:"
                              f"{self.cfg.port}: {exc.strerror or exc}",
                              "a free port on an address of this gateway") from None
        self.port = self.server.bind_addr[1]
        self._thread = threading.Thread(target=self.server.serve, name="till-api", daemon=True)
        self._thread.start()
        log.info("till API listening on %s:%d (%s)", self.cfg.bind, self.port,
                 "TLS" if self.cfg.tls_cert else "plain HTTP")
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self._thread is not None:
            self._thread.join(5)
        self.index.close()

    def _tls(self) -> Any:
        import ssl

        from cheroot.ssl.builtin import BuiltinSSLAdapter
        adapter = BuiltinSSLAdapter(self.cfg.tls_cert, self.cfg.tls_key)
        adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cfg.client_ca:
            adapter.context.load_verify_locations(self.cfg.client_ca)
            # Optional at the handshake so a token still works; a shown one must verify.
            adapter.context.verify_mode = ssl.CERT_OPTIONAL
        return adapter

    def _rebuild(self) -> None:
        """The index and the queue from the journal's unreclaimed transactions."""
        j = self.agent.journal
        epoch = f"{j.epoch:016x}"
        committed = self._committed_seq()
        entries: list[Entry] = []
        pos = seq = None
        for _ in range(1_000_000):  # bounded: a journal holds far fewer reads than this
            recs, pos, seq = j.read(pos, seq, max_records=512)
            if not recs:
                break
            for r in recs:
                if r.cls != rec.TXN:
                    continue
                try:
                    body = decode_body(r.body)
                except ValueError:
                    continue
                d = body["data"]
                if body["kind"] != "txn" or not isinstance(d, dict) or "txn" not in d:
                    continue
                total = amount(d["txn"])
                entries.append(Entry(d["key"], body["source"], d["sha"], epoch, r.seq,
                                     d["receipt"], body["read_ms"], total, d["offline"]))
                if r.seq > committed:
                    self.queued.add(r.seq, total, bool(d["offline"]), body["read_ms"])
        added = self.index.put_missing(entries)
        if entries:
            log.info("till API: %d transactions in the journal, %d put back in the index",
                     len(entries), added)

    def _forced_from_audit(self) -> bool:
        """Forced offline survives a restart: the last switch in the audit file says."""
        try:
            lines = self.audit_path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return False
        for line in reversed(lines):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("action") == "forced_offline":
                return bool(entry.get("on"))
        return False

    # ---- state -----------------------------------------------------------------------------

    def _uplink_active(self) -> bool:
        fwd = self.agent.forwarding
        return fwd is not None and fwd.active is not None

    def link_changed(self, online: bool, since_ms: int) -> None:
        """From the agent's link incidents: when the uplink came or went."""
        self._link = (online, since_ms)

    def link(self) -> tuple[bool, int]:
        """(online, since_ms): the forwarding's active uplink is the truth; the time is
        that of the last change heard of."""
        online, since = self._link
        now_online = self._uplink_active()
        if now_online != online:
            self._link = (now_online, self.agent.clock.now_ms())
        return self._link

    def _committed_seq(self) -> int:
        return int(self.agent.journal.stats()["committed_seq"])

    def _sell_state(self, now_ms: int) -> SellState:
        online, since = self.link()
        self.queued.drop_through(self._committed_seq())
        count, _, offline_amount, _ = self.queued.totals()
        really_online = online and not self.forced_offline
        ref = self.agent.refdata
        return SellState(really_online, count, offline_amount, now_ms,
                         None if really_online else since,
                         None if ref is None else ref.age_s("prices", now_ms))

    def state_of(self, e: Entry) -> str:
        j = self.agent.journal
        if e.epoch != f"{j.epoch:016x}":  # an abandoned journal's: nothing known of it
            return "journaled"
        if e.seq <= self._committed_seq():
            return "in_ledger"
        fwd = self.agent.forwarding
        if fwd is None:
            return "journaled"
        f = fwd.forwarder
        if any(a[0] <= e.seq <= a[1] for a in list(f.acked)):
            return "in_ledger"
        if any(b.first <= e.seq <= b.last for b in list(f.inflight)):
            return "forwarded"
        return "journaled"

    def status(self) -> dict[str, Any]:
        now = self.agent.clock.now_ms()
        with self._lock:
            state = self._sell_state(now)
            count, total, offline_amount, oldest = self.queued.totals()
            rules = self._rules().headroom(state)
        online, since = self._link
        return {"gateway": self.agent.cfg.gateway_id, "store": self.store["id"],
                "state": "online" if state.online else "offline", "since_ms": since,
                "uplink": online, "forced_offline": self.forced_offline,
                "queued": {"count": count, "amount": total, "offline_amount": offline_amount,
                           "oldest_age_s": None if oldest is None
                           else round(max(0, now - oldest) / 1000, 1)},
                "rules": rules, "rules_version": self.rules_version,
                "counters": dict(self.counters), "port": self.port}

    # ---- HTTP ------------------------------------------------------------------------------

    def app(self, environ: dict[str, Any],
            start_response: Callable[..., Any]) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        try:
            if path == "/v1/openapi.json" and method == "GET":
                return self._send(start_response, 200, OPENAPI.read_bytes())
            till = self._auth(environ)
            if path == "/v1/transactions" and method == "POST":
                status, body = self._post(environ, till)
            elif path.startswith("/v1/transactions/") and method == "GET":
                status, body = self._get(path[len("/v1/transactions/"):])
            elif path == "/v1/status" and method == "GET":
                status, body = 200, self.status()
            elif path == "/v1/forced-offline" and method == "POST":
                status, body = self._forced(environ, till)
            elif path.startswith(("/v1/prices/", "/v1/stock/")) and method == "GET":
                status, body = self._reference(path)
            elif path in ("/v1/transactions", "/v1/status", "/v1/forced-offline"):
                raise Answer(405, "method_not_allowed", f"{method} {path}")
            else:
                raise Answer(404, "not_found", f"no such resource: {path[:80]}")
        except Answer as a:
            status, body = a.status, a.body
        except Exception:  # a bug: the till retries; the body is never logged
            log.exception("till API: %s %s failed", method, path[:80])
            status, body = 500, {"error": "internal", "detail": "retry with the same key"}
        extra = [("WWW-Authenticate", 'Bearer realm="midshift"')] if status == 401 else []
        return self._send(start_response, status, json.dumps(body).encode(), extra)

    @staticmethod
    def _send(start_response: Callable[..., Any], status: int, data: bytes,
              extra: list[tuple[str, str]] | None = None) -> list[bytes]:
        start_response(f"{status} {REASONS.get(status, '')}",
                       [("Content-Type", "application/json"),
                        ("Content-Length", str(len(data))), *(extra or [])])
        return [data]

    def _auth(self, environ: dict[str, Any]) -> str:
        header = environ.get("HTTP_AUTHORIZATION", "")
        if header.startswith("Bearer "):
            till = self.tokens.till_for(header[7:].strip())
            if till is not None:
                return till
        elif environ.get("SSL_CLIENT_VERIFY") == "SUCCESS" and environ.get("SSL_CLIENT_S_DN_CN"):
            return str(environ["SSL_CLIENT_S_DN_CN"])
        self.counters["unauthorized"] += 1
        raise Answer(401, "unauthorized", "a till's bearer token or client certificate")

    def _read_json(self, environ: dict[str, Any]) -> Any:
        limit = self.cfg.request_max_bytes
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise Answer(400, "invalid_request", "bad Content-Length") from None
        if length > limit:
            raise Answer(413, "too_large", f"the body is over {limit} bytes")
        raw = environ["wsgi.input"].read(length if length else limit + 1)
        if len(raw) > limit:
            raise Answer(413, "too_large", f"the body is over {limit} bytes")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeError):
            self.counters["invalid"] += 1
            raise Answer(400, "invalid_json", "the body is not JSON", path="") from None

    def _post(self, environ: dict[str, Any], till: str) -> tuple[int, dict[str, Any]]:
        key = environ.get("HTTP_IDEMPOTENCY_KEY", "")
        if not key:
            self.counters["invalid"] += 1
            raise Answer(400, "missing_key", "an Idempotency-Key header is required",
                         path="Idempotency-Key")
        if len(key) > KEY_MAX or not key.isprintable() or (
                not UUID.fullmatch(key) and has_pan(key)):
            self.counters["invalid"] += 1
            raise Answer(400, "invalid_key", f"1 to {KEY_MAX} printable characters, no card "
                         "number", path="Idempotency-Key")
        doc = self._read_json(environ)
        card = find_card_data(doc)
        if card is not None:
            self.counters["card_data"] += 1
            raise Answer(400, "card_data", "card data beyond a masked PAN is never taken",
                         path=card)
        try:
            txn = validate(doc)
        except TxnInvalid as exc:
            self.counters["invalid"] += 1
            raise Answer(400, "invalid", exc.why, path=exc.path) from None
        if txn["till"] != till:
            raise Answer(403, "forbidden", f"this credential is {till}'s", rule="wrong_till")
        sha = canonical_sha(doc)
        now = self.agent.clock.now_ms()
        with self._lock:
            if key in self._in_flight:
                self.counters["conflict_in_flight"] += 1
                raise Answer(409, "in_flight", "the first request with this key is still "
                             "being made durable; retry shortly")
            stored = self.index.get(key)
            if stored is None:
                state = self._sell_state(now)
                rule = self._rules().check(txn, state)
                if rule is not None:
                    self.counters["refused"] += 1
                    raise Answer(403, "refused", "an offline sell rule refuses it", rule=rule)
                self._in_flight.add(key)
                total = amount(txn)
                offline = not state.online
        if stored is not None:
            if stored.sha != sha:
                self.counters["key_reused"] += 1
                raise Answer(422, "key_reused", "this Idempotency-Key was used for another body")
            self.counters["replayed"] += 1
            return 200, self._answer(stored)
        try:
            entry = self._journal(key, sha, txn, now, total, offline)
        finally:
            with self._lock:
                self._in_flight.discard(key)
        self.counters["accepted"] += 1
        self._count_stock(txn)
        return 201, self._answer(entry)

    def _count_stock(self, txn: dict[str, Any]) -> None:
        """A sale takes its lines' quantities off the local stock, provisionally (a refund
        puts them back) until the next authoritative stock delta."""
        ref = self.agent.refdata
        if ref is None or txn["type"] not in ("sale", "refund"):
            return
        sign = 1 if txn["type"] == "sale" else -1
        ref.sold([(line["sku"], sign * line["qty_milli"]) for line in txn["lines"]])

    def _rules(self) -> SellRules:
        """The offline sell rules in force: the site's ``[sell_rules]`` with the published
        ``sell_rules`` dataset over it (a row per key, ``{"value": V}``), checked as the site
        file is. A published version that does not pass is logged and counted; the rules
        in force stay. Called under ``_lock``."""
        ref = self.agent.refdata
        if ref is None:
            return self.rules
        version = ref.store.state("sell_rules")[0]
        if version == self.rules_version:
            return self.rules
        self.rules_version = version
        table = {k: v for k, v in (self.agent.cfg.sell_rules or {}).items() if v is not None}
        try:
            for key, row in ref.store.rows("sell_rules").items():
                if not isinstance(row, dict) or "value" not in row:
                    raise ConfigError(f"sell_rules.{key}", "a published rule is not "
                                      "{\"value\": ...}", '{"value": ...}')
                table[key] = row["value"]
            rules = SellRules(check_sell_rules(table, "published sell_rules"))
        except ConfigError as exc:
            self.counters["rules_refused"] += 1
            log.error("till API: sell_rules version %d not in force: %s", version, exc)
            return self.rules
        rules.refused = self.rules.refused  # the counts run on across versions
        self.rules = rules
        log.warning("till API: published sell_rules version %d in force", version)
        return rules

    def _reference(self, path: str) -> tuple[int, dict[str, Any]]:
        """A price or stock level from the gateway's own copy: the same answer with the
        link up or down, with its version and age (``docs/reference-data.md``)."""
        from urllib.parse import unquote
        ref = self.agent.refdata
        dataset, _, sku = path[len("/v1/"):].partition("/")
        sku = unquote(sku)
        if ref is None:
            raise Answer(404, "not_found", "this gateway holds no reference data")
        now = self.agent.clock.now_ms()
        if dataset == "prices":
            row, version, published, synced = ref.store.read("prices", sku)
        else:
            version, _, published, synced = ref.store.state(dataset)
        meta = {"sku": sku, "version": version, "age_s": ref.age_of(dataset, version, synced, now),
                "published_ms": published, "latest": (ref.pointer.get(dataset) or {}).get(
                    "version")}
        if dataset == "prices":
            if row is None:
                raise Answer(404, "not_found", f"no price for {sku[:80]} in version {version}")
            return 200, {**meta, "price": row.get("price"), "row": row}
        level = ref.store.stock(sku)
        if level is None:
            raise Answer(404, "not_found", f"no stock level for {sku[:80]} in version {version}")
        return 200, {**meta, **level}

    def _journal(self, key: str, sha: str, txn: dict[str, Any], now: int, total: int,
                 offline: bool) -> Entry:
        j = self.agent.journal
        epoch = f"{j.epoch:016x}"
        # Known before the journal gives a seq, so the record carries it whole.
        receipt = f"{self.store['id']}-{txn['till']}-{txn['till_seq']}"
        data = {"key": key, "sha": sha, "store": self.store["id"], "tz": self.store["tz"],
                "receipt": receipt, "offline": offline, "txn": txn}
        body = encode_body(txn["till"], "txn", now, data)
        hold = j.hold()  # not reclaimed before the index has the key (group_commit.hold)
        try:
            try:
                seq = self.agent.append_txn(body)
            except (JournalFull, RecordTooLarge) as exc:
                self.counters["journal_refused"] += 1
                if isinstance(exc, RecordTooLarge):
                    raise Answer(413, "too_large", "the transaction is over the journal's record "
                                 "size ([journal] max_body)") from None
                raise Answer(507, "journal_full", "the gateway's journal refuses transactions "
                             "until the ledger acknowledges older ones; retry later") from None
            except MidshiftError as exc:
                self.counters["journal_refused"] += 1
                log.error("till API: journal refused %s's transaction: %s", txn["till"], exc.code)
                raise Answer(507, "journal_unavailable", f"the journal refuses: {exc.code}; "
                             "retry later") from None
            entry = Entry(key, txn["till"], sha, epoch, seq, receipt, now, total, offline)
            with self._lock:
                self.queued.add(seq, total, offline, now)
            try:
                self.index.put(entry)
                if self.index.prune_due():
                    self.index.prune(now, epoch, self._committed_seq())
            except Exception as exc:  # the journal has it; the rebuild at start puts it back
                log.error("till API: index write failed (%s); the journal holds the key", exc)
            return entry
        finally:
            j.release(hold)

    def _answer(self, e: Entry) -> dict[str, Any]:
        return {"key": e.key, "gateway": self.agent.cfg.gateway_id, "epoch": e.epoch,
                "seq": e.seq, "receipt": e.receipt, "state": self.state_of(e)}

    def _get(self, key: str) -> tuple[int, dict[str, Any]]:
        from urllib.parse import unquote
        e = self.index.get(unquote(key))
        if e is None:
            raise Answer(404, "not_found", "no transaction with this key on this gateway")
        return 200, self._answer(e)

    def _forced(self, environ: dict[str, Any], till: str) -> tuple[int, dict[str, Any]]:
        doc = self._read_json(environ)
        if not isinstance(doc, dict) or not isinstance(doc.get("on"), bool):
            raise Answer(400, "invalid", "{\"on\": true|false, \"manager_code\": \"...\"}",
                         path="on")
        code = doc.get("manager_code")
        want = (self.agent.cfg.sell_rules or {}).get("manager_code_sha256")
        ok = isinstance(code, str) and want is not None and hmac.compare_digest(
            hashlib.sha256(code.encode()).hexdigest(), want)
        self._audit({"action": "forced_offline_denied" if not ok else "forced_offline",
                     "on": doc["on"], "till": till})
        if not ok:
            raise Answer(403, "refused", "wrong manager code", rule="bad_manager_code")
        self.forced_offline = doc["on"]
        log.warning("forced offline %s by %s", "on" if doc["on"] else "off", till)
        return 200, {"forced_offline": self.forced_offline}

    def _audit(self, entry: dict[str, Any]) -> None:
        """One JSON line, synced: who switched forced offline, and failed attempts."""
        line = json.dumps({"time_ms": self.agent.clock.now_ms(),
                           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           **entry}) + "\n"
        fd = os.open(self.audit_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
