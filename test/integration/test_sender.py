"""Integration tests of the sender background worker.

The sender drains mpqr.requests with libcurl against the simulator over TLS.
These tests queue requests straight into the outbox with mpqr.enqueue() (a
GET of a merchant order search, which the simulator answers 200, or a POST
of a refund, which it answers 404) and watch the simulator's request log,
the outbox rows and the worker in pg_stat_activity.  They check transport:
TLS verification, retries of 503, 429 with Retry-After and dropped
connections, idling before CREATE EXTENSION, waking at commit.
"""
import datetime
import http.server
import os
import threading
import time

import pytest

from conftest import COLLECTOR, TOKEN, base_settings
from pgcluster import Cluster, wait_for
from simclient import make_certs

SEARCH = "/merchant_orders/search"


@pytest.fixture(scope="module")
def cluster(sim):
    """The module's cluster; errors are logged (log_min_messages puts LOG above ERROR)."""
    settings = base_settings(sim)
    settings["log_min_messages"] = "warning"
    c = Cluster(settings).init().start()
    yield c
    c.destroy()


@pytest.fixture
def acct(db, sim):
    """A fresh extension with one account that the simulator knows."""
    sim.account(user_id=COLLECTOR, token=TOKEN, site_id="MLA")
    db.execute("SELECT mpqr_add_account('main', %s, %s)", (COLLECTOR, TOKEN))
    return db


def enqueue_payment(c, payment_id):
    """Queue a GET of a payment (the simulator knows none: a final 404)."""
    return c.scalar("SELECT mpqr.enqueue('main', 'fetch_payment', 'GET', "
                    "mpqr.fetch_path('fetch_payment', %s), subject => %s)",
                    (str(payment_id), str(payment_id)))


def enqueue_search(c, ref, conn=None):
    """Queue a GET of a merchant order search; return the request id."""
    sql = ("SELECT mpqr.enqueue('main', 'search_merchant_orders', 'GET', "
           "mpqr.fetch_path('search_merchant_orders', %s), subject => %s)")
    if conn is None:
        return c.scalar(sql, (ref, ref))
    with conn.cursor() as cur:
        cur.execute(sql, (ref, ref))
        return cur.fetchone()[0]


def request_row(c, rid):
    rows = c.execute("SELECT state, http_status, attempts, error, response "
                     "FROM mpqr.requests WHERE id = %s", (rid,))
    assert rows, "request %s vanished" % rid
    return dict(zip(("state", "http_status", "attempts", "error", "response"), rows[0]))


def wait_finished(c, rid, timeout=30):
    """Wait until a request is done or failed; return its row."""
    def finished():
        r = request_row(c, rid)
        return r if r["state"] in ("done", "failed") else None
    return wait_for(finished, timeout, what="request %s to finish" % rid)


def sim_requests(sim, ref):
    """The simulator's log of the searches for one reference, oldest first."""
    rows = [r for r in sim.requests(SEARCH) if ref in r["query"]]
    return sorted(rows, key=lambda r: r["seq"])


def counters(c):
    return {k: int(v) for k, v in c.execute("SELECT name, value FROM mpqr.worker_status()")
            if k.startswith("requests_") or k == "sender_batches"}


def sender_activity(c):
    """The sender's row in pg_stat_activity, or None."""
    rows = c.execute("SELECT pid, backend_start, state_change FROM pg_stat_activity "
                     "WHERE backend_type = 'mpqr sender'")
    return rows[0] if rows else None


def sender_log_errors(c):
    return [line for line in c.log_text().splitlines()
            if "mpqr sender" in line and ("ERROR" in line or "FATAL" in line)]


def cpu_seconds(pid):
    """User and system CPU time of a process, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RawServer:
    """A plain HTTP server that answers every request with fixed bytes.

    For answers the simulator cannot give (invalid UTF-8, huge bodies)."""

    def __init__(self, body):
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def wait_sender_polling(c, seconds):
    """Wait until the sender has kept polling for the given time; return its pid."""
    first = wait_for(lambda: sender_activity(c), 30, what="the sender to start")
    start = datetime.datetime.now(datetime.timezone.utc)

    def polled_since():
        row = sender_activity(c)
        return row if row and row[2] and row[2] > start + datetime.timedelta(seconds=seconds) else None
    last = wait_for(polled_since, 30 + seconds, what="the sender to keep polling")
    assert last[0] == first[0], "the sender restarted while idle"
    return last[0]


def test_request_over_verified_tls(acct, sim):
    """A request reaches the API over verified TLS, with the expected headers."""
    c = acct
    before = counters(c)
    rid = enqueue_search(c, "ref-tls")
    row = wait_finished(c, rid)
    assert row["state"] == "done", row
    assert row["http_status"] == 200
    assert '"total"' in row["response"]

    (req,) = sim_requests(sim, "ref-tls")
    assert req["method"] == "GET"
    assert req["query"] == "external_reference=ref-tls"
    h = req["headers"]
    assert h["authorization"] == "Bearer " + TOKEN
    assert h["accept"] == "application/json"
    assert h["user-agent"].startswith("mpqr/")
    assert "content-type" not in h
    assert "expect" not in h

    after = counters(c)
    assert after["requests_sent"] - before["requests_sent"] == 1
    assert after["requests_2xx"] - before["requests_2xx"] == 1
    assert after["sender_batches"] > before["sender_batches"]


def test_body_and_idempotency_key_are_sent(acct, sim):
    """A POST carries its JSON body, Content-Type and X-Idempotency-Key; a 404 is final."""
    c = acct
    rid = c.scalar("SELECT mpqr.enqueue('main', 'refund', 'POST', '/v1/payments/424242/refunds', "
                   "body => '{\"amount\": 1.5}', subject => '424242', "
                   "idempotency_key => 'idem-123')")
    row = wait_finished(c, rid)
    assert row["state"] == "failed" and row["http_status"] == 404, row
    (req,) = sim.requests("/v1/payments/424242/refunds")
    assert req["method"] == "POST"
    assert req["body"] == '{"amount": 1.5}'
    assert req["headers"]["content-type"] == "application/json"
    assert req["headers"]["x-idempotency-key"] == "idem-123"
    assert "expect" not in req["headers"]
    assert "Bearer" not in (row["error"] or "")


def test_wrong_ca_is_a_network_error_and_retried(acct, sim, cluster):
    """With a CA that did not sign the API's certificate, nothing is sent: the
    failure is recorded as a network error and retried, and the request goes
    through once the right CA is back."""
    c = acct
    other = make_certs()
    before = counters(c)
    try:
        c.set(mpqr__ca_file=os.path.join(other, "ca.pem"))
        c.reload()
        # the reload is asynchronous: queue until one attempt fails on TLS
        rid = None

        def failed_on_tls():
            nonlocal rid
            if rid is None or request_row(c, rid)["state"] == "done":
                rid = enqueue_search(c, "ref-ca-%d" % time.monotonic_ns())
                return None
            r = request_row(c, rid)
            return r if r["http_status"] == 0 and r["attempts"] >= 2 else None
        row = wait_for(failed_on_tls, 30, interval=0.2, what="a TLS failure to be retried")
        assert row["state"] in ("queued", "inflight"), row
        assert "SSL certificate problem" in row["error"], row
        assert TOKEN not in row["error"]
        after = counters(c)
        assert after["requests_network_errors"] - before["requests_network_errors"] >= 2
        status = dict(c.execute("SELECT name, value FROM mpqr.worker_status()"))
        assert TOKEN not in (status.get("sender_last_error") or "")
    finally:
        c.set(mpqr__ca_file=sim.ca_file)
        c.reload()
    row = wait_finished(c, rid)
    assert row["state"] == "done" and row["http_status"] == 200, row


def test_503_is_retried_then_succeeds(acct, sim):
    c = acct
    sim.fault(method="GET", path=SEARCH, status=503, times=2)
    before = counters(c)
    rid = enqueue_search(c, "ref-503")
    row = wait_finished(c, rid)
    assert row["state"] == "done" and row["http_status"] == 200, row
    assert row["attempts"] == 3
    assert [r["status"] for r in sim_requests(sim, "ref-503")] == [503, 503, 200]
    after = counters(c)
    assert after["requests_5xx"] - before["requests_5xx"] == 2


def test_429_waits_for_retry_after(acct, sim):
    """The retry after a 429 waits for Retry-After, not only the (100 ms) backoff."""
    c = acct
    sim.fault(method="GET", path=SEARCH, status=429, retry_after=2, times=1)
    rid = enqueue_search(c, "ref-429")
    row = wait_finished(c, rid)
    assert row["state"] == "done" and row["attempts"] == 2, row
    first, second = sim_requests(sim, "ref-429")
    assert (first["status"], second["status"]) == (429, 200)
    assert second["ts"] - first["ts"] >= 1.9


def test_dropped_connection_is_retried(acct, sim):
    """A connection dropped before the answer is a network error, retried.

    libcurl itself re-sends once, at once, when a reused keep-alive connection
    dies before any byte of the answer, so two drops are needed to reach the
    sender's own retry."""
    c = acct
    sim.fault(method="GET", path=SEARCH, drop=True, times=2)
    before = counters(c)
    rid = enqueue_search(c, "ref-drop")
    row = wait_finished(c, rid)
    assert row["state"] == "done" and row["http_status"] == 200, row
    assert row["attempts"] in (2, 3), row
    assert [r["status"] for r in sim_requests(sim, "ref-drop")] == ["dropped", "dropped", 200]
    after = counters(c)
    assert after["requests_network_errors"] - before["requests_network_errors"] == row["attempts"] - 1


def test_slow_request_does_not_hold_back_others(acct, sim):
    """Outcomes are recorded while a slow request is still in flight."""
    c = acct
    sim.fault(method="GET", path="/v1/payments/777$", latency_ms=4000, times=1)
    slow = enqueue_payment(c, 777)
    wait_for(lambda: sim.requests("/v1/payments/777"), 10, what="the slow request to arrive")
    fast = enqueue_search(c, "ref-fast")
    row = wait_finished(c, fast, timeout=3)
    assert row["state"] == "done", row
    assert request_row(c, slow)["state"] == "inflight"
    assert wait_finished(c, slow)["http_status"] == 404


def test_wake_at_commit_and_rollback(acct, sim, cluster):
    """With a 60 s poll, a commit that queues a request still gets it sent at
    once; a rolled-back one is never sent."""
    c = acct
    try:
        c.set(mpqr__poll_interval="60s")
        c.reload()
        # the sender has taken the long poll once it stays idle well past 200 ms
        def quiet():
            row = sender_activity(c)
            now = c.scalar("SELECT clock_timestamp()")
            return row and (now - row[2]).total_seconds() > 1.5
        wait_for(quiet, 30, interval=0.1, what="the sender to take the 60 s poll")

        conn = c.connect(autocommit=False)
        try:
            enqueue_search(c, "ref-rollback", conn=conn)
            conn.rollback()
            t0 = time.monotonic()
            rid = enqueue_search(c, "ref-wake", conn=conn)
            conn.commit()
        finally:
            conn.close()
        sim.wait_requests(SEARCH, 1, timeout=10)
        assert time.monotonic() - t0 < 10
        assert wait_finished(c, rid, timeout=10)["state"] == "done"
        assert [r["query"] for r in sim.requests(SEARCH)] == ["external_reference=ref-wake"]
    finally:
        c.set(mpqr__poll_interval="200ms")
        c.reload()


def test_extension_recreated_under_in_flight_requests(acct, sim):
    """Dropping and re-creating the extension while requests are in flight
    neither crashes the sender nor records old outcomes into new rows."""
    c = acct
    pid = sender_activity(c)[0]
    sim.fault(method="GET", path="/v1/payments/1001$", latency_ms=3000, times=1)
    old = enqueue_payment(c, 1001)
    wait_for(lambda: sim.requests("/v1/payments/1001"), 10, what="the request to be in flight")
    c.drop_extension()
    c.execute("CREATE EXTENSION mpqr")
    c.execute("SELECT mpqr_add_account('main', %s, %s)", (COLLECTOR, TOKEN))
    # the new extension numbers its requests from 1 again
    sim.fault(method="GET", path="/v1/payments/1002$", latency_ms=8000, times=1)
    rid = enqueue_payment(c, 1002)
    assert rid == old
    wait_for(lambda: sim.requests("/v1/payments/1002"), 10, what="the new request to be in flight")
    # the old outcome arrives while the new request, with the same id, is in flight
    wait_for(lambda: sim.requests("/v1/payments/1001")[0]["status"] == 404, 10,
             what="the old request to be answered")
    later = enqueue_search(c, "ref-later")
    assert wait_finished(c, later)["state"] == "done"
    assert request_row(c, rid)["state"] == "inflight", "an old outcome was recorded into a new row"
    assert sender_activity(c)[0] == pid


_probe = {}


def probe(c, sim, raw):
    """Queue a search unless one is pending; return its row once it finished
    and was answered by the raw server (raw) or by the simulator (not raw)."""
    ref = _probe.get("ref")
    if ref is not None:
        row = request_row(c, _probe["rid"])
        if row["state"] in ("queued", "inflight"):
            return None
        _probe.clear()
        if bool(sim_requests(sim, ref)) != raw:
            return row
    ref = "ref-probe-%d" % time.monotonic_ns()
    _probe.update(ref=ref, rid=enqueue_search(c, ref))
    return None


@pytest.mark.parametrize("body, expect", [
    (b'{"a": "caf\xe9", "b": "\xff\x00x"}', '{"a": "caf\ufffd", "b": "\ufffd\ufffdx"}'),
    (b'{"pad": "' + b"x" * (2 * 1024 * 1024) + b'"}', None),
], ids=["invalid-utf8", "oversized"])
def test_unusual_bodies_are_recorded(acct, sim, body, expect):
    """A body that is not valid UTF-8 is recorded with its invalid bytes
    replaced; one above 1 MB is dropped; the sender goes on either way."""
    c = acct
    _probe.clear()
    server = RawServer(body)
    try:
        c.set(mpqr__api_base_url=server.url + "/")
        c.reload()
        # the reload is asynchronous: queue until one request reaches the raw server
        row = wait_for(lambda: probe(c, sim, raw=True), 30, interval=0.1,
                       what="a request to reach the raw server")
    finally:
        c.set(mpqr__api_base_url=sim.base_url)
        c.reload()
        server.close()
    assert row["http_status"] == 200, row
    if expect is not None:
        assert row["state"] == "done", row
        assert row["response"] == expect
    else:
        assert row["response"] is None
        status = dict(c.execute("SELECT name, value FROM mpqr.worker_status()"))
        assert status["sender_pid"]
    # the sender still works, against the simulator again
    wait_for(lambda: probe(c, sim, raw=False), 30, interval=0.1,
             what="requests to reach the simulator again")


def test_sigterm_restarts_the_sender(acct, sim):
    """A terminated sender is restarted and goes on sending."""
    c = acct
    pid = sender_activity(c)[0]
    assert c.scalar("SELECT pg_terminate_backend(%s)", (pid,))
    wait_for(lambda: (sender_activity(c) or [pid])[0] != pid, 30,
             what="the sender to be restarted")
    rid = enqueue_search(c, "ref-restarted")
    assert wait_finished(c, rid)["state"] == "done"


def test_idle_before_create_extension(sim):
    """Without the extension the sender idles quietly, then starts working
    as soon as the extension is created."""
    settings = base_settings(sim)
    settings["log_min_messages"] = "warning"
    c = Cluster(settings, name="mpqr-noext").init().start()
    try:
        pid = wait_for(lambda: sender_activity(c), 30, what="the sender to start")[0]
        cpu = cpu_seconds(pid)
        assert wait_sender_polling(c, 2) == pid
        assert sender_log_errors(c) == []
        # idle means idle: a 200 ms poll, not a busy loop
        assert cpu_seconds(pid) - cpu < 0.5
        assert not c.scalar("SELECT count(*) FROM pg_extension WHERE extname = 'mpqr'")

        sim.reset()
        sim.account(user_id=COLLECTOR, token=TOKEN, site_id="MLA")
        c.execute("CREATE EXTENSION mpqr")
        c.execute("SELECT mpqr_add_account('main', %s, %s)", (COLLECTOR, TOKEN))
        rid = enqueue_search(c, "ref-noext")
        assert wait_finished(c, rid)["state"] == "done"
        assert sender_activity(c)[0] == pid
        assert sender_log_errors(c) == []
    finally:
        c.destroy()
