"""Listener benchmark: notifications stored per second, against pgbench.

mpqr: wrk POSTs notifications (an IPN naming no known resource, so that the
measure is the listener's own work: HTTP, the ingest function, the group
commit) over 32 keep-alive connections; each answer 200 means a committed row.
Baseline, in the same run and the same cluster: pgbench inserting single rows
of the same shape into a plain table, with 8 and 32 clients, each insert its
own transaction.  synchronous_commit is on for both.  Rounds are interleaved.
P3 (issue 10): the same with each notification naming a merchant order mpqr
has seen, so that each one queues the fetch of it (or joins a queued one),
while the sender fetches them from a local nginx that answers 204.
"""
import os
import re
import statistics
import sys
import tempfile

from benchlib import interleave, machine, report, run
from nginx_stub import NginxStub
from pgcluster import Cluster, free_port

SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"

LUA = r"""
wrk.method = "POST"
wrk.body = '{"resource":"https://api.mercadolibre.com/merchant_orders/1","topic":"merchant_order"}'
wrk.headers["Content-Type"] = "application/json"
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, "/notifications?topic=point_integration_ipn&id=" .. counter)
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d non2xx=%d errors=%d p99us=%d\n", summary.requests,
           summary.errors.status, summary.errors.connect + summary.errors.read +
           summary.errors.write + summary.errors.timeout, latency:percentile(99)))
end
"""

# P3: each notification names a merchant order mpqr knows, so that each one
# queues (or joins) the fetch of it: the ingest as a payment rush makes it
LUA_MO = LUA.replace(
    'return wrk.format(nil, "/notifications?topic=point_integration_ipn&id=" .. counter)',
    'return wrk.format(nil, "/notifications?topic=merchant_order&id=" .. (counter * 7919 + OFFSET) % COUNT + 1)')
KNOWN_MO = 2000000

SQL_BASELINE = """
\\set n random(1, 1000000000)
INSERT INTO bench_baseline (query, headers, body)
VALUES (jsonb_build_object('topic', 'point_integration_ipn', 'id', :n),
        '{"content-type": "application/json", "user-agent": "wrk"}',
        '{"resource":"https://api.mercadolibre.com/merchant_orders/1","topic":"merchant_order"}');
"""


def main():
    port = free_port()
    stub = NginxStub().__enter__()
    c = Cluster(dict(stub.settings(), **{"mpqr.listen_port": port, "max_connections": 100,
                                         "shared_buffers": "256MB"}), name="bench").init().start()
    tmp = tempfile.mkdtemp(prefix="mpqr-bench-")
    try:
        c.execute("CREATE EXTENSION mpqr")
        c.execute("SELECT mpqr_add_account('main', 123456789, 'APP_USR-bench')")
        # merchant orders mpqr has seen, so that news of them is fetched: the
        # sender fetches them from nginx, which answers 204 (nothing to apply)
        c.execute("INSERT INTO mpqr.merchant_orders (id, account, body) "
                  "SELECT g, 'main', '{}' FROM generate_series(1, %d) g" % KNOWN_MO)
        c.execute("VACUUM ANALYZE")
        c.execute("CREATE TABLE bench_baseline (id bigserial PRIMARY KEY, received_at timestamptz "
                  "DEFAULT clock_timestamp(), query jsonb, headers jsonb, body text)")
        lua = os.path.join(tmp, "post.lua")
        with open(lua, "w") as f:
            f.write(LUA)
        lua_mo = os.path.join(tmp, "post_mo.lua")
        with open(lua_mo, "w") as f:
            f.write(LUA_MO.replace("OFFSET", "12345").replace("COUNT", str(KNOWN_MO)))
        script = os.path.join(tmp, "insert.sql")
        with open(script, "w") as f:
            f.write(SQL_BASELINE)
        os.chmod(tmp, 0o755)
        os.chmod(script, 0o644)

        def pgbench(clients):
            def go():
                out = run([PGBENCH, "-n", "-h", c.base, "-p", str(c.port), "-U", "postgres",
                           "-c", str(clients), "-j", "2", "-T", str(SECONDS), "-f", script, "postgres"])
                return float(re.search(r"tps = ([0-9.]+)", out).group(1))
            return go

        p99 = {}

        def listener(script_path, name):
            def go():
                before = c.scalar("SELECT count(*) FROM mpqr.notifications")
                queued = c.scalar("SELECT count(*) FROM mpqr.requests")
                out = run(["wrk", "-t2", "-c32", "-d%ds" % SECONDS, "-s", script_path,
                           "http://127.0.0.1:%d" % port])
                m = re.search(r"RESULT requests=(\d+) non2xx=(\d+) errors=(\d+) p99us=(\d+)", out)
                stored = c.scalar("SELECT count(*) FROM mpqr.notifications") - before
                fetches = c.scalar("SELECT count(*) FROM mpqr.requests") - queued
                if int(m.group(2)) or int(m.group(3)):
                    print("  wrk saw %s non-2xx answers and %s socket errors" % (m.group(2), m.group(3)))
                p99.setdefault(name, []).append(int(m.group(4)) / 1000.0)
                if script_path == lua_mo:
                    print("    %d stored, %d fetches queued (the rest joined one), p99 %.1f ms"
                          % (stored, fetches, int(m.group(4)) / 1000.0))
                # answered requests can be a few more than SECONDS' worth; count rows
                return stored / float(SECONDS)
            return go

        print("Listener benchmark on %s, %d s per run, %d rounds" % (machine(), SECONDS, ROUNDS))
        results = interleave(ROUNDS, [("pgbench -c8 single inserts", pgbench(8)),
                                      ("listener, IPN naming nothing", listener(lua, "nothing")),
                                      ("P3 listener, known MO", listener(lua_mo, "mo")),
                                      ("pgbench -c32 single inserts", pgbench(32))])
        report("Notifications stored per second (rows committed; P3 target ratio >= 1.0, aim 1.5):",
               results, "pgbench -c8 single inserts")
        for name, values in p99.items():
            print("  p99 latency, %-8s median %.1f ms (runs: %s)"
                  % (name, statistics.median(values), ", ".join("%.1f" % v for v in values)))
        batches = c.scalar("SELECT value FROM mpqr_status() WHERE name = 'listener_batches'")
        stored = c.scalar("SELECT value FROM mpqr_status() WHERE name = 'notifications_stored'")
        print("  rows per group commit: %.1f" % (int(stored) / max(int(batches), 1)))
    finally:
        c.destroy()
        stub.__exit__(None, None, None)


if __name__ == "__main__":
    sys.exit(main())
