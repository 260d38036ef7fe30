"""Sender benchmark: API requests drained per second, against the HTTP ceiling.

Target: a local nginx over TLS that answers 204 to everything, as in the
prototype recorded in the design notes.  Baseline, in the same run: wrk
against the same nginx, TLS and keep-alive, 64 connections: the ceiling of
this machine.  mpqr: N requests are committed to the outbox in one
transaction (a GET each, whose 204 applies nothing, so the measure is the
sender: claim, libcurl, record), and the time from commit to the last one
recorded is measured, with mpqr.max_in_flight at its default (64) and at
512.  P2: N orders on N POS (instore, whose PUT nginx's 204 answers as MP
does), put in one transaction; the time from commit to the last order
published, against wrk on the same PUT path.  Rounds are interleaved;
medians are reported.
"""
import os
import re
import sys
import time

from benchlib import interleave, machine, report, run
from nginx_stub import NginxStub
from pgcluster import Cluster, wait_for

N = int(os.environ.get("BENCH_REQUESTS", "20000"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))

def main():
    with NginxStub() as stub:
        c = Cluster(dict(stub.settings(), **{"mpqr.listen_port": 0, "mpqr.poll_interval": "1s",
                                             "shared_buffers": "256MB"}), name="bench").init().start()
        try:
            c.execute("CREATE EXTENSION mpqr")
            c.execute("SELECT mpqr_add_account('main', 123456789, 'APP_USR-bench', api => 'instore')")
            rounds = iter(range(1, 1000))

            def ceiling(path):
                def go():
                    out = run(["wrk", "-t2", "-c64", "-d%ds" % SECONDS, stub.base + path])
                    return float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
                return go

            def with_in_flight(in_flight, fn):
                def go():
                    c.execute("ALTER SYSTEM SET mpqr.max_in_flight = %d" % in_flight)
                    c.reload()
                    wait_for(lambda: c.scalar("SELECT setting FROM pg_settings "
                                              "WHERE name = 'mpqr.max_in_flight'") == str(in_flight), 10)
                    return fn()
                return go

            def timed(fill, done):
                conn = c.connect(autocommit=False)
                with conn.cursor() as cur:
                    fill(cur)
                    cur.execute("SELECT mpqr.wake_sender_at_commit()")
                start = time.monotonic()
                conn.commit()
                conn.close()
                wait_for(done, 900, interval=0.1, what="the outbox to drain")
                return N / (time.monotonic() - start)

            def fetches():
                def fill(cur):
                    cur.execute("INSERT INTO mpqr.requests (account, kind, method, path, subject) "
                                "SELECT 'main', 'fetch_payment', 'GET', '/v1/payments/' || g, g::text "
                                "FROM generate_series(1, %s) g", (N,))
                rate = timed(fill, lambda: not c.scalar("SELECT EXISTS (SELECT FROM mpqr.requests "
                                                        "WHERE state IN ('queued', 'inflight'))"))
                bad = c.scalar("SELECT count(*) FROM mpqr.requests WHERE http_status <> 204")
                if bad:
                    print("  %d requests did not get a 204" % bad)
                c.execute("DELETE FROM mpqr.requests")
                c.execute("VACUUM mpqr.requests")
                return rate

            def publishes():
                # N orders on N POS of their own (a fresh set each round), put
                # in one transaction: each is claimed, PUT and recorded
                tag = "B%d" % next(rounds)
                c.execute("INSERT INTO mpqr.pos (external_id, account, store_external_id, name, status) "
                          "SELECT %s || 'P' || g, 'main', 'S1', 'Caja ' || g, 'linked' "
                          "FROM generate_series(1, %s) g", (tag, N))

                def fill(cur):
                    cur.execute("SELECT count(mpqr_put_order(%s || 'P' || g, %s || 'R' || g, 10)) "
                                "FROM generate_series(1, %s) g", (tag, tag, N))
                rate = timed(fill, lambda: not c.scalar("SELECT EXISTS (SELECT FROM mpqr.orders "
                                                        "WHERE status = 'queued')"))
                bad = c.scalar("SELECT count(*) FROM mpqr.orders WHERE status <> 'published' "
                               "AND pos_id LIKE %s", (tag + "P%",))
                if bad:
                    print("  %d orders were not published" % bad)
                return rate

            print("Sender benchmark on %s, %d requests per drain, %d rounds" % (machine(), N, ROUNDS))
            put_path = "/instore/qr/seller/collectors/123456789/stores/S1/pos/B1P1/orders"
            results = interleave(ROUNDS, [("wrk ceiling, 64 conns", ceiling("/v1/payments/1")),
                                          ("mpqr fetches, 64 in flight", with_in_flight(64, fetches)),
                                          ("mpqr fetches, 512 in flight", with_in_flight(512, fetches))])
            report("API requests per second (TLS, keep-alive, nginx answering 204):", results,
                   "wrk ceiling, 64 conns")
            results = interleave(ROUNDS, [("wrk ceiling, PUT path", ceiling(put_path)),
                                          ("mpqr publishes, 64 in flight", with_in_flight(64, publishes))])
            report("P2: orders published per second, %d orders on %d POS (target ratio >= 0.15):"
                   % (N, N), results, "wrk ceiling, PUT path")
        finally:
            c.destroy()


if __name__ == "__main__":
    sys.exit(main())
