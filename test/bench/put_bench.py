"""P1: mpqr_put_order() per second, against the same writes done by hand.

pgbench, 8 clients, each transaction one mpqr_put_order() on a random POS of
20,000, with the sender running and publishing to a local nginx over TLS
that answers 204.  Baseline, in the same run: one transaction that inserts
an order row, its history row and a 600-byte outbox row into plain tables
(what a put has to write, done by hand).  Rounds are interleaved; medians
are reported.  Target: a ratio of at least 0.6 (aim 0.8).
"""
import os
import re
import sys
import tempfile

from benchlib import interleave, machine, report, run
from nginx_stub import NginxStub
from pgcluster import PG_BIN, Cluster, as_pg_user

SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "8"))
POS = 20000

BASELINE_SETUP = """
CREATE SCHEMA bench;
CREATE TABLE bench.orders (id bigserial PRIMARY KEY, account text NOT NULL,
    external_reference text NOT NULL, pos_id text NOT NULL, total_amount numeric NOT NULL,
    currency text NOT NULL, title text NOT NULL, description text NOT NULL, items jsonb NOT NULL,
    expires_at timestamptz NOT NULL, status text NOT NULL, idempotency_key text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE bench.order_events (id bigserial PRIMARY KEY, order_id bigint NOT NULL,
    to_status text NOT NULL, reason text, at timestamptz NOT NULL DEFAULT now());
CREATE TABLE bench.outbox (id bigserial PRIMARY KEY, kind text NOT NULL, method text NOT NULL,
    path text NOT NULL, body text NOT NULL, state text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now());
"""

BASELINE_SCRIPT = """\\set pos random(1, %d)
BEGIN;
INSERT INTO bench.orders (account, external_reference, pos_id, total_amount, currency, title,
    description, items, expires_at, status, idempotency_key)
VALUES ('main', 'R' || txid_current(), 'POS' || :pos, 10.00, 'ARS', 'Order', 'Order',
    '[{"title":"Order","unit_price":10,"quantity":1,"unit_measure":"unit"}]', now() + interval '10 min',
    'queued', gen_random_uuid()::text) RETURNING id \\gset
INSERT INTO bench.order_events (order_id, to_status, reason) VALUES (:id, 'queued', 'put');
INSERT INTO bench.outbox (kind, method, path, body, state)
VALUES ('publish', 'PUT', '/instore/qr/seller/collectors/123456789/stores/S1/pos/POS' || :pos || '/orders',
    repeat('x', 600), 'queued');
END;
""" % POS

PUT_SCRIPT = """\\set pos random(1, %d)
SELECT mpqr_put_order('POS' || :pos, 'R' || txid_current(), 10.00);
""" % POS


def pgbench(cluster, script_text, seconds):
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script_text)
    os.chmod(f.name, 0o644)
    out = as_pg_user([os.path.join(PG_BIN, "pgbench"), "-n", "-M", "prepared",
                      "-c", str(CLIENTS), "-j", "2", "-T", str(seconds), "-f", f.name,
                      "-h", cluster.base, "-p", str(cluster.port), "-U", "postgres", "postgres"],
                     stdout=-1, stderr=-2, text=True).stdout
    os.unlink(f.name)
    return float(re.search(r"tps = ([0-9.]+)", out).group(1))


def main():
    with NginxStub() as stub:
        c = Cluster(dict(stub.settings(), **{"mpqr.listen_port": 0, "shared_buffers": "256MB",
                                             "max_connections": 50}), name="bench-put").init().start()
        try:
            c.execute("CREATE EXTENSION mpqr")
            c.execute("SELECT mpqr_add_account('main', 123456789, 'APP_USR-bench', api => 'instore')")
            c.execute("INSERT INTO mpqr.pos (external_id, account, store_external_id, name, status) "
                      "SELECT 'POS' || g, 'main', 'S1', 'Caja ' || g, 'linked' FROM generate_series(1, %d) g"
                      % POS)
            c.execute(BASELINE_SETUP)

            def baseline():
                return pgbench(c, BASELINE_SCRIPT, SECONDS)

            def put():
                return pgbench(c, PUT_SCRIPT, SECONDS)

            print("P1 on %s: pgbench -c%d, %d s per run, %d rounds, %d POS"
                  % (machine(), CLIENTS, SECONDS, ROUNDS, POS))
            results = interleave(ROUNDS, [("same writes by hand", baseline),
                                          ("mpqr_put_order", put)])
            report("P1: transactions per second (pgbench, synchronous_commit on, sender running):",
                   results, "same writes by hand")
            published = c.scalar("SELECT count(*) FROM mpqr.orders WHERE status <> 'queued'")
            total = c.scalar("SELECT count(*) FROM mpqr.orders")
            print("  orders put: %d, published or superseded by the sender meanwhile: %d" % (total, published))
        finally:
            c.destroy()


if __name__ == "__main__":
    sys.exit(main())
