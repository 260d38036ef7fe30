"""The notification listener: real HTTP clients against a real cluster.

Every 200 must mean the row is committed: each test looks the row up right
after the answer, without waiting.  Signatures are computed here with
Python's hmac, as Mercado Pago computes them.  Tests that need other
postmaster settings (a fixed port before CREATE EXTENSION, a short
connection timeout, a crash) run on a second cluster of their own.
"""
import hashlib
import hmac
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from urllib.parse import urlsplit

import pytest

from conftest import COLLECTOR, SECRET, TOKEN, base_settings, listener_url
from pgcluster import Cluster, free_port, wait_for

OTHER_COLLECTOR = 222333444


# -- helpers ---------------------------------------------------------------

def connect(base, timeout=30):
    u = urlsplit(base)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)


def send(base, method, target, body=None, headers=None, conn=None):
    """One request; returns (status, parsed JSON body or None, response)."""
    own = conn is None
    c = conn or connect(base)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        c.request(method, target, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = None
        return r.status, parsed, r
    finally:
        if own:
            c.close()


def sign(secret, data_id, request_id, ts):
    manifest = ""
    if data_id is not None:
        manifest += "id:%s;" % data_id
    if request_id is not None:
        manifest += "request-id:%s;" % request_id
    manifest += "ts:%s;" % ts
    return hmac.new(secret.encode(), manifest.encode(), hashlib.sha256).hexdigest()


def now_ms():
    return int(time.time() * 1000)


def webhook(base, data_id, kind="payment", secret=SECRET, ts=None, signed_id=None,
            account=None, user_id=COLLECTOR, v1=None, conn=None, query=True):
    """A webhook as MP sends it: ?data.id=&type=, JSON body, x-signature."""
    rid = str(uuid.uuid4())
    ts = str(now_ms()) if ts is None else str(ts)
    body = {"action": "%s.updated" % kind, "api_version": "v1", "data": {"id": data_id},
            "date_created": "2026-01-01T00:00:00Z", "id": 12345, "live_mode": False,
            "type": kind, "user_id": user_id}
    headers = {"Content-Type": "application/json", "User-Agent": "restclient-node/4.15.3",
               "X-Request-Id": rid, "X-Retry": "2", "X-Socket-Timeout": "22000"}
    if secret is not None:
        if v1 is None:
            v1 = sign(secret, data_id if signed_id is None else signed_id, rid, ts)
        headers["X-Signature"] = "ts=%s,v1=%s" % (ts, v1)
    args = []
    if query:
        args += ["data.id=%s" % data_id, "type=%s" % kind]
    if account:
        args.append("account=%s" % account)
    target = "/notifications" + ("?" + "&".join(args) if args else "")
    status, answer, _ = send(base, "POST", target, body, headers, conn=conn)
    return status, answer, rid


def row(db, request_id):
    rows = db.execute(
        "SELECT account, topic, resource_id, action, user_id, signature, request_id, retry,"
        " triggered, fetch_request, query, headers, body, body_json"
        " FROM mpqr.notifications WHERE request_id = %s", (request_id,))
    keys = ["account", "topic", "resource_id", "action", "user_id", "signature", "request_id",
            "retry", "triggered", "fetch_request", "query", "headers", "body", "body_json"]
    return [dict(zip(keys, r)) for r in rows]


def counter(cluster, name):
    return int(cluster.status()[name])


def add_accounts(db):
    db.execute("SELECT mpqr_add_account('main', %s, %s, %s)", (COLLECTOR, TOKEN, SECRET))
    db.execute("SELECT mpqr_add_account('nosecret', %s, %s)", (OTHER_COLLECTOR, TOKEN + "-2"))


@pytest.fixture
def base(db):
    add_accounts(db)
    return listener_url(db)


# -- the forms MP uses -----------------------------------------------------

def test_ipn_with_body_is_committed_before_the_answer(db, base):
    rid = str(uuid.uuid4())
    body = {"resource": "https://api.mercadolibre.com/merchant_orders/15140831325",
            "topic": "merchant_order"}
    status, answer, resp = send(base, "POST", "/notifications?id=15140831325&topic=merchant_order",
                                body, {"Content-Type": "application/json", "X-Request-Id": rid})
    assert status == 200 and answer == {"status": "stored"}
    assert resp.getheader("Content-Type") == "application/json"
    rows = row(db, rid)             # no waiting: the row must already be there
    assert len(rows) == 1
    r = rows[0]
    assert (r["account"], r["topic"], r["resource_id"]) == ("main", "merchant_order", "15140831325")
    assert r["signature"] == "unverified" and "x-signature" not in r["headers"]
    assert r["triggered"] == "queued" and r["fetch_request"] is not None
    assert r["query"] == {"id": "15140831325", "topic": "merchant_order"}
    assert r["body_json"] == body and json.loads(r["body"]) == body
    assert db.scalar("SELECT kind FROM mpqr.requests WHERE id = %s",
                     (r["fetch_request"],)) == "fetch_merchant_order"


def test_ipn_without_body(db, base):
    rid = str(uuid.uuid4())
    status, _, _ = send(base, "POST", "/notifications/?topic=payment&id=123456",
                        None, {"X-Request-Id": rid})
    assert status == 200
    r = row(db, rid)[0]
    assert (r["account"], r["topic"], r["resource_id"]) == ("main", "payment", "123456")
    assert r["body"] is None and r["body_json"] is None
    assert r["triggered"] in ("queued", "rate_limited")


def test_signed_webhook(db, base):
    status, answer, rid = webhook(base, "999000111")
    assert status == 200 and answer == {"status": "stored"}
    r = row(db, rid)[0]
    assert (r["account"], r["topic"], r["resource_id"]) == ("main", "payment", "999000111")
    assert (r["action"], r["user_id"], r["retry"]) == ("payment.updated", COLLECTOR, 2)
    assert r["signature"] == "valid"
    assert r["headers"]["x-request-id"] == rid
    assert r["headers"]["user-agent"] == "restclient-node/4.15.3"
    assert r["headers"]["x-signature"].startswith("ts=")
    assert r["triggered"] in ("queued", "rate_limited")


def test_body_only_merchant_order_webhook(db, base):
    rid = str(uuid.uuid4())
    body = {"action": "update", "application_id": 1, "data": {"currency_id": "ARS",
            "marketplace": "NONE", "status": "closed"}, "date_created": "2026-01-01T00:00:00Z",
            "id": "15140831325", "live_mode": False, "status": "closed",
            "type": "topic_merchant_order_wh", "user_id": COLLECTOR, "version": 3}
    status, _, _ = send(base, "POST", "/notifications?account=main", body,
                        {"Content-Type": "application/json", "X-Request-Id": rid})
    assert status == 200
    r = row(db, rid)[0]
    assert (r["account"], r["topic"], r["resource_id"]) == \
        ("main", "topic_merchant_order_wh", "15140831325")
    # merchant-order webhooks come unsigned, and this account has a secret
    assert r["signature"] == "unsigned" and r["action"] == "update"
    assert r["triggered"] == "queued"


def test_no_resource_and_unknown_topic_trigger_nothing(db, base):
    rid = str(uuid.uuid4())
    assert send(base, "POST", "/notifications", None, {"X-Request-Id": rid})[0] == 200
    r = row(db, rid)[0]
    assert r["resource_id"] is None and r["topic"] is None
    assert r["triggered"] == "nothing" and r["account"] == "main"

    rid = str(uuid.uuid4())
    status, _, _ = send(base, "POST", "/notifications?data.id=77&type=point_integration_wh",
                        {"type": "point_integration_wh", "data": {"id": "77"}},
                        {"X-Request-Id": rid})
    assert status == 200
    r = row(db, rid)[0]
    assert (r["topic"], r["resource_id"], r["triggered"]) == ("point_integration_wh", "77", "nothing")


def test_unknown_collector_is_stored_without_account(db, base):
    before = int(db.status()["notifications_unknown_account"])
    status, _, rid = webhook(base, "555", secret=None, user_id=987654321)
    assert status == 200
    r = row(db, rid)[0]
    assert r["account"] is None and r["triggered"] == "nothing"
    assert r["user_id"] == 987654321
    # an account= we do not have, with a collector we do not have either
    status, _, rid = webhook(base, "556", secret=None, user_id=987654321, account="nobody")
    assert status == 200 and row(db, rid)[0]["account"] is None
    assert int(db.status()["notifications_unknown_account"]) == before + 2
    # an account= we do not have and no collector: the chain of design
    # section 7 ends at the default account
    status, _, rid = webhook(base, "558", secret=None, user_id=None, account="nobody")
    assert status == 200 and row(db, rid)[0]["account"] == db.scalar(
        "SELECT name FROM mpqr.accounts WHERE is_default")
    # the collector in the body picks its account
    status, _, rid = webhook(base, "557", secret=None, user_id=OTHER_COLLECTOR)
    assert row(db, rid)[0]["account"] == "nosecret"


def test_repeats_get_rows_and_never_suppress_a_fetch(db, base):
    rids = []
    for _ in range(3):
        rid = str(uuid.uuid4())
        assert send(base, "POST", "/notifications?topic=merchant_order&id=4242",
                    None, {"X-Request-Id": rid})[0] == 200
        rids.append(rid)
    triggered = [row(db, rid)[0]["triggered"] for rid in rids]
    assert triggered[0] == "queued"
    # each is answered by a fetch: the pending one, or one more after the
    # debounce window
    assert all(t in ("queued", "coalesced", "debounced") for t in triggered)


# -- signatures ------------------------------------------------------------

@pytest.fixture
def warnings_logged(db):
    """Log WARNINGs for the duration of a test (the harness logs from LOG up,
    and LOG ranks above WARNING in the server log).  Once a new backend shows
    the setting, the postmaster has reloaded and signalled the listener, which
    reloads before it reads any request sent after that."""
    old = db.settings.get("log_min_messages", "warning")
    db.set(log_min_messages="warning")
    db.reload()
    wait_for(lambda: db.scalar("SHOW log_min_messages") == "warning", 30,
             what="the reload")
    yield
    db.set(log_min_messages=old)
    db.reload()


def set_policy(db, base, policy):
    """Set mpqr.signature_policy and wait until the listener applies it."""
    db.set(mpqr__signature_policy=policy)
    db.reload()
    want = 401 if policy == "enforce" else 200
    wait_for(lambda: webhook(base, "2000", v1="ef" * 32)[0] == want, 30,
             what="signature_policy %s to apply" % policy)


@pytest.fixture
def enforced(db, base):
    """mpqr.signature_policy = enforce for one test (the default is record)."""
    set_policy(db, base, "enforce")
    yield
    set_policy(db, base, "record")


def test_signatures(db, base, warnings_logged, enforced):
    # lowercased data.id in the manifest is accepted too
    status, _, rid = webhook(base, "ORD01JQ4S4KY8HWQ6NA5PXB65B3D3", kind="order",
                             signed_id="ord01jq4s4ky8hwq6na5pxb65b3d3")
    assert status == 200 and row(db, rid)[0]["signature"] == "valid"
    status, _, rid = webhook(base, "ORD01JQ4S4KY8HWQ6NA5PXB65B3D3", kind="order")
    assert status == 200 and row(db, rid)[0]["signature"] == "valid"

    # valid HMAC, old ts (milliseconds, and seconds): stored as stale
    status, _, rid = webhook(base, "1001", ts=now_ms() - 3600 * 1000)
    assert status == 200 and row(db, rid)[0]["signature"] == "stale"
    status, _, rid = webhook(base, "1002", ts=int(time.time()) - 3600)
    assert status == 200 and row(db, rid)[0]["signature"] == "stale"

    # no secret on the account: unverified; no x-signature although the
    # account has a secret: it never bypasses enforce
    status, _, rid = webhook(base, "1003", secret="whatever", user_id=OTHER_COLLECTOR)
    assert status == 200 and row(db, rid)[0]["signature"] == "unverified"
    status, _, rid = webhook(base, "1004", secret=None)
    assert status == 401 and row(db, rid) == []

    # IPN signatures are ignored, however wrong
    rid = str(uuid.uuid4())
    status, _, _ = send(base, "POST", "/notifications?topic=payment&id=1005", None,
                        {"X-Request-Id": rid, "X-Signature": "ts=1,v1=" + "0" * 64})
    assert status == 200 and row(db, rid)[0]["signature"] == "unverified"

    # wrong signature: 401, nothing stored, counted, and a WARNING without secrets
    rejected = counter(db, "signatures_rejected")
    bad_v1 = "ab" * 32
    status, answer, rid = webhook(base, "1006", v1=bad_v1)
    assert status == 401 and answer == {"error": "invalid signature"}
    assert row(db, rid) == []
    status, _, rid = webhook(base, "1007", secret="not-the-secret")
    assert status == 401 and row(db, rid) == []
    rid = str(uuid.uuid4())
    status, _, _ = send(base, "POST", "/notifications?data.id=1008&type=payment", {"type": "payment"},
                        {"X-Request-Id": rid, "X-Signature": "garbage"})
    assert status == 401 and row(db, rid) == []
    assert counter(db, "signatures_rejected") == rejected + 3
    wait_for(lambda: "with an invalid signature" in db.log_text(), 70,
             what="the rejection WARNING")
    log = db.log_text()
    assert SECRET not in log and bad_v1 not in log


def test_record_policy_stores_invalid_and_unsigned(db, base):
    """The default policy: a signature that does not verify is stored as
    invalid and still fetches (QR notifications may not verify, and
    notifications are only triggers); so is an unsigned webhook, as
    unsigned.  Both take from the budget of unknown fetches."""
    assert db.scalar("SHOW mpqr.signature_policy") == "record"
    status, _, rid = webhook(base, "2001", v1="cd" * 32)
    assert status == 200
    r = row(db, rid)[0]
    assert r["signature"] == "invalid"
    assert r["triggered"] in ("queued", "rate_limited", "coalesced", "debounced")
    status, _, rid = webhook(base, "2002", secret=None)
    assert status == 200
    r = row(db, rid)[0]
    assert r["signature"] == "unsigned"
    assert r["triggered"] in ("queued", "rate_limited")


# -- errors ----------------------------------------------------------------

def test_paths_methods_and_sizes(db, base):
    assert send(base, "GET", "/nope")[0] == 404
    assert send(base, "POST", "/notificationsx")[0] == 404
    status, answer, resp = send(base, "GET", "/notifications")
    assert status == 405 and resp.getheader("Allow") == "POST"
    assert answer == {"error": "method not allowed"}
    status, _, resp = send(base, "POST", "/healthz", "{}")
    assert status == 405 and "GET" in resp.getheader("Allow")
    assert send(base, "HEAD", "/healthz")[0] == 200

    # 413 from Content-Length, before the body is read (curl waits for 100-continue)
    big = "x" * (64 * 1024 + 1)
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                          "-H", "Content-Type: application/json", "--data-binary", "@-",
                          base + "/notifications?topic=payment&id=1"],
                         input=big.encode(), capture_output=True, timeout=30)
    assert out.stdout.decode() == "413"

    # 413 while reading a chunked body
    c = connect(base)
    try:
        c.request("POST", "/notifications?topic=payment&id=2",
                  body=iter([b"{" + b" " * 40000, b" " * 40000 + b"}"]),
                  headers={"Transfer-Encoding": "chunked"}, encode_chunked=True)
        assert c.getresponse().status == 413
    finally:
        c.close()

    # a body just under the limit is fine
    rid = str(uuid.uuid4())
    body = json.dumps({"pad": "y" * (64 * 1024 - 100)})
    assert send(base, "POST", "/notifications", body, {"X-Request-Id": rid})[0] == 200
    assert len(row(db, rid)) == 1


def test_bad_json_gets_400_and_the_rest_of_its_batch_is_stored(db, base):
    """Hold the batch transaction on a lock so that a good and a bad request
    arrive meanwhile and are stored together, in the next batch."""
    good_conn, bad_conn = connect(base), connect(base)
    try:
        # open both connections first, so that they only need to be read
        assert send(base, "GET", "/healthz", conn=good_conn)[0] == 200
        assert send(base, "GET", "/healthz", conn=bad_conn)[0] == 200

        locker = db.connect(autocommit=False)
        results = {}
        try:
            with locker.cursor() as cur:
                cur.execute("LOCK TABLE mpqr.notifications IN SHARE MODE")
            first_rid = str(uuid.uuid4())
            first = threading.Thread(target=lambda: results.update(
                first=send(base, "POST", "/notifications?topic=payment&id=31", None,
                           {"X-Request-Id": first_rid})[0]))
            first.start()
            wait_for(lambda: db.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'mpqr listener'"
                " AND wait_event_type = 'Lock'") == 1, 10, what="the listener to wait")
            batches = counter(db, "listener_batches")

            good_rid, bad_rid = str(uuid.uuid4()), str(uuid.uuid4())
            good_conn.request("POST", "/notifications?topic=payment&id=32",
                              body=json.dumps({"topic": "payment"}),
                              headers={"X-Request-Id": good_rid})
            bad_conn.request("POST", "/notifications?topic=payment&id=33",
                             body="{\"topic\": \"payment\",", headers={"X-Request-Id": bad_rid})
        finally:
            locker.commit()
            locker.close()
        first.join(30)
        good = good_conn.getresponse()
        good_body = good.read()
        bad = bad_conn.getresponse()
        bad_body = json.loads(bad.read())
    finally:
        good_conn.close()
        bad_conn.close()

    assert results["first"] == 200 and len(row(db, first_rid)) == 1
    assert good.status == 200, good_body
    assert bad.status == 400 and bad_body == {"error": "malformed request"}
    assert len(row(db, good_rid)) == 1 and row(db, bad_rid) == []
    # the first batch, then one batch with both
    assert counter(db, "listener_batches") == batches + 2
    assert "invalid input syntax for type json" not in db.log_text()


def test_other_error_while_redoing_a_batch_answers_503_and_recovers(db, base):
    """A bad request makes the batch be redone one request at a time; if
    another error strikes then (here a cancel while waiting for a lock), the
    whole batch gets 503 and the listener goes on with the next batch."""
    pid = int(db.status()["listener_pid"])

    def waiting():
        return wait_for(lambda: db.scalar(
            "SELECT query FROM pg_stat_activity WHERE pid = %s"
            " AND wait_event_type = 'Lock'", (pid,)), 10, what="the listener to wait")

    exercised = 0
    # which of the two requests the batch reaches first is up to the server,
    # and only "bad first" exercises the redo; try both orders a few times
    for attempt in range(10):
        conns = [connect(base) for _ in range(3)]
        blocker, bad_conn, good_conn = conns
        try:
            for c in conns:
                assert send(base, "GET", "/healthz", conn=c)[0] == 200
            locker = db.connect(autocommit=False)
            try:
                with locker.cursor() as cur:
                    cur.execute("LOCK TABLE mpqr.requests IN ACCESS EXCLUSIVE MODE")
                # a first batch waits for the lock, so that the two requests
                # sent meanwhile arrive whole and make the next batch together
                blocker.request("POST", "/notifications?topic=payment&id=%d" % (300 + attempt),
                                headers={"X-Request-Id": str(uuid.uuid4())})
                waiting()
                sends = [lambda: bad_conn.request("POST", "/notifications?topic=payment&id=41", body="{oops",
                                                  headers={"X-Request-Id": str(uuid.uuid4())}),
                         lambda: good_conn.request("POST", "/notifications?topic=payment&id=%d" % (42 + attempt),
                                                   headers={"X-Request-Id": str(uuid.uuid4())})]
                for send_one in (sends if attempt % 2 == 0 else reversed(sends)):
                    send_one()
                db.execute("SELECT pg_cancel_backend(%s)", (pid,))
                first = blocker.getresponse()
                first.read()
                assert first.status == 503
                activity = waiting()
                db.execute("SELECT pg_cancel_backend(%s)", (pid,))
            finally:
                locker.rollback()
                locker.close()
            bad, good = bad_conn.getresponse(), good_conn.getresponse()
            bad.read()
            good.read()
            if activity.endswith("one by one"):
                exercised += 1
                assert (bad.status, good.status) == (503, 503)
        finally:
            for c in conns:
                c.close()
        # the same worker stores the next notification at once
        rid = str(uuid.uuid4())
        assert send(base, "POST", "/notifications?topic=payment&id=50", None,
                    {"X-Request-Id": rid})[0] == 200
        assert len(row(db, rid)) == 1
        assert int(db.status()["listener_pid"]) == pid
        if exercised:
            break
    assert exercised, "the batch was never redone one request at a time"


def test_invalid_utf8_body_is_400(db, base):
    assert send(base, "POST", "/notifications", b"{\"a\": \"\xff\"}")[0] == 400
    assert send(base, "POST", "/notifications", b"{\"a\": 1}\x00")[0] == 400
    rid = str(uuid.uuid4())
    assert send(base, "POST", "/notifications", "{\"a\": \"\u00e1\"}",
                {"X-Request-Id": rid})[0] == 200
    assert row(db, rid)[0]["body_json"] == {"a": "\u00e1"}


def test_healthz(db, base):
    status, answer, _ = send(base, "GET", "/healthz")
    assert status == 200 and answer == {"status": "ok"}
    db.drop_extension()
    status, answer, _ = send(base, "GET", "/healthz")
    assert status == 503 and answer == {"status": "unavailable"}
    assert send(base, "POST", "/notifications?topic=payment&id=1")[0] == 503


# -- load ------------------------------------------------------------------

def test_400_notifications_over_32_keepalive_connections(db, base):
    total, threads = 400, 32
    rids = [str(uuid.uuid4()) for _ in range(total)]
    statuses = [None] * total
    errors = []

    def client(k):
        c = connect(base)
        try:
            for i in range(k, total, threads):
                status, _, _ = send(base, "POST", "/notifications?topic=merchant_order&id=%d"
                                    % (7000 + i % 50),
                                    {"resource": "x", "topic": "merchant_order"},
                                    {"X-Request-Id": rids[i], "Content-Type": "application/json"},
                                    conn=c)
                statuses[i] = status
                # committed before the answer: visible right now
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))
        finally:
            c.close()

    batches = counter(db, "listener_batches")
    workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert not errors
    assert statuses == [200] * total
    stored = db.scalar("SELECT count(*) FROM mpqr.notifications WHERE request_id = ANY(%s)",
                       (rids,))
    assert stored == total
    # group commit: fewer transactions than requests
    assert counter(db, "listener_batches") - batches < total


# -- a cluster of its own: before CREATE EXTENSION, timeouts, crash ---------

@pytest.fixture(scope="module")
def aux(sim):
    settings = base_settings(sim)
    port = free_port()
    settings.update({"mpqr.listen_port": port, "mpqr.connection_timeout": "2s"})
    c = Cluster(settings, name="mpqr-aux").init().start()
    c.http_base = "http://127.0.0.1:%d" % port
    yield c
    c.destroy()


def test_503_before_create_extension(aux):
    base = aux.http_base
    status = wait_for(lambda: send(base, "GET", "/healthz")[0], 30, what="the listener")
    assert status == 503
    for i in range(5):
        assert send(base, "POST", "/notifications?topic=payment&id=%d" % i)[0] == 503
    assert aux.log_text().count("answers notifications with 503") == 1

    aux.execute("CREATE EXTENSION mpqr")
    aux.execute("SELECT mpqr_add_account('main', %s, %s, %s)", (COLLECTOR, TOKEN, SECRET))
    assert send(base, "GET", "/healthz")[0] == 200
    rid = str(uuid.uuid4())
    assert send(base, "POST", "/notifications?topic=payment&id=9", None,
                {"X-Request-Id": rid})[0] == 200
    assert aux.scalar("SELECT count(*) FROM mpqr.notifications WHERE request_id = %s",
                      (rid,)) == 1
    assert "listener stores notifications again" in aux.log_text()


def test_slowloris_does_not_block_others_and_times_out(aux):
    base = aux.http_base
    u = urlsplit(base)
    wait_for(lambda: send(base, "GET", "/healthz")[0] == 200, 30, what="a ready listener")
    slow_headers = socket.create_connection((u.hostname, u.port))
    slow_body = socket.create_connection((u.hostname, u.port))
    try:
        slow_headers.sendall(b"POST /notifications HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        slow_body.sendall(b"POST /notifications HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Length: 100\r\n\r\n{\"topic\":")
        started = time.monotonic()
        for i in range(5):
            assert send(base, "POST", "/notifications?topic=payment&id=%d" % i)[0] == 200
        assert time.monotonic() - started < 1.5     # well inside the 2 s timeout

        for s in (slow_headers, slow_body):
            s.settimeout(15)
            assert s.recv(4096) == b""              # closed by the server
        assert time.monotonic() - started < 10
    finally:
        slow_headers.close()
        slow_body.close()


def test_kill_9_of_the_listener(aux):
    base = aux.http_base
    wait_for(lambda: send(base, "GET", "/healthz")[0] == 200, 30, what="a ready listener")
    keep = connect(base)
    assert send(base, "GET", "/healthz", conn=keep)[0] == 200
    pid = int(aux.status()["listener_pid"])

    os.kill(pid, signal.SIGKILL)
    aux.wait_ready()
    wait_for(lambda: aux.status().get("listener_pid") not in (None, str(pid)), 60,
             what="a new listener")

    def healthy():
        try:
            return send(base, "GET", "/healthz")[0] == 200
        except OSError:
            return False
    wait_for(healthy, 60, what="the listener to serve again")
    keep.close()

    rid = str(uuid.uuid4())
    assert send(base, "POST", "/notifications?topic=payment&id=77", None,
                {"X-Request-Id": rid})[0] == 200
    assert aux.scalar("SELECT count(*) FROM mpqr.notifications WHERE request_id = %s",
                      (rid,)) == 1
