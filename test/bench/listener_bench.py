"""Listener benchmark: notifications stored per second, against pgbench.

mpqr: wrk POSTs notifications (an IPN naming no known resource, so that the
measure is the listener's own work: HTTP, the ingest function, the group
commit) over 32 keep-alive connections; each answer 200 means a committed row.
Baseline, in the same run and the same cluster: pgbench inserting single rows
of the same shape into a plain table, with 8 and 32 clients, each insert its
own transaction.  synchronous_commit is on for both.  Rounds are interleaved.
"""
import os
import re
import sys
import tempfile

from benchlib import interleave, machine, report, run
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
  io.write(string.format("RESULT requests=%d non2xx=%d errors=%d\n", summary.requests,
           summary.errors.status, summary.errors.connect + summary.errors.read +
           summary.errors.write + summary.errors.timeout))
end
"""

SQL_BASELINE = """
\\set n random(1, 1000000000)
INSERT INTO bench_baseline (query, headers, body)
VALUES (jsonb_build_object('topic', 'point_integration_ipn', 'id', :n),
        '{"content-type": "application/json", "user-agent": "wrk"}',
        '{"resource":"https://api.mercadolibre.com/merchant_orders/1","topic":"merchant_order"}');
"""


def main():
    port = free_port()
    c = Cluster({"mpqr.listen_port": port, "mpqr.api_base_url": "http://127.0.0.1:9",
                 "max_connections": 100, "shared_buffers": "256MB"}, name="bench").init().start()
    tmp = tempfile.mkdtemp(prefix="mpqr-bench-")
    try:
        c.execute("CREATE EXTENSION mpqr")
        c.execute("SELECT mpqr_add_account('main', 123456789, 'APP_USR-bench')")
        c.execute("CREATE TABLE bench_baseline (id bigserial PRIMARY KEY, received_at timestamptz "
                  "DEFAULT clock_timestamp(), query jsonb, headers jsonb, body text)")
        lua = os.path.join(tmp, "post.lua")
        with open(lua, "w") as f:
            f.write(LUA)
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

        def listener():
            before = c.scalar("SELECT count(*) FROM mpqr.notifications")
            out = run(["wrk", "-t2", "-c32", "-d%ds" % SECONDS, "-s", lua, "http://127.0.0.1:%d" % port])
            m = re.search(r"RESULT requests=(\d+) non2xx=(\d+) errors=(\d+)", out)
            stored = c.scalar("SELECT count(*) FROM mpqr.notifications") - before
            if int(m.group(2)) or int(m.group(3)):
                print("  wrk saw %s non-2xx answers and %s socket errors" % (m.group(2), m.group(3)))
            # answered requests can be a few more than SECONDS' worth; count rows
            return stored / float(SECONDS)

        print("Listener benchmark on %s, %d s per run, %d rounds" % (machine(), SECONDS, ROUNDS))
        results = interleave(ROUNDS, [("pgbench -c8 single inserts", pgbench(8)),
                                      ("mpqr listener, 32 conns", listener),
                                      ("pgbench -c32 single inserts", pgbench(32))])
        report("Notifications stored per second (rows committed):", results, "pgbench -c8 single inserts")
        batches = c.scalar("SELECT value FROM mpqr_status() WHERE name = 'listener_batches'")
        stored = c.scalar("SELECT value FROM mpqr_status() WHERE name = 'notifications_stored'")
        print("  rows per group commit: %.1f" % (int(stored) / max(int(batches), 1)))
    finally:
        c.destroy()


if __name__ == "__main__":
    sys.exit(main())
