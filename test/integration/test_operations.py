"""Operations, as a DBA meets them (design §9): dump and restore, a copy that
knows it is a copy, ALTER EXTENSION UPDATE from 0.1.0, misconfiguration, a
standby promoted, the README's TLS proxy, and plpgsql_check.

The module's cluster serves database "shop".  The tests run in file order
on one shop (the shop fixture fills it once): the later ones drop and
restore it, and the last one promotes a standby of it.  The publishes of
the POS named in STUCK_POS fail with 503 while a test wants orders to stay
queued (an outage at Mercado Pago), so that a dump holds queued work.
"""
import http.client
import os
import re
import ssl
import subprocess
import tempfile
import time

import pytest

from conftest import COLLECTOR, TOKEN, base_settings
from dbsnap import catalog, catalog_diff, rows, sequences
from pgcluster import PG_BIN, PG_USER, Cluster, free_port, wait_for
from simclient import ROOT, Sim

LOCATION = {"street_number": "1", "street_name": "Calle", "city_name": "Palermo",
            "state_name": "Capital Federal", "latitude": -34.6, "longitude": -58.4, "reference": "x"}
POS = "SUC001POS001"
STUCK_POS = ["SUC001POS002", "SUC001POS003", "SUC001POS004", "SUC001POS005", "SUC001POS006"]
# the standby's orders go to POS that have shown no order yet (see notes-ops.md:
# a publish answered 503 on a POS that shows an older order of mpqr's own
# fails as "replaced")
STANDBY_POS = STUCK_POS[2:]
STUCK_PATH = "/pos/(%s)/orders" % "|".join(STUCK_POS)


def run_pg(argv, **kw):
    """Run a PostgreSQL client program as the postgres OS user; never raises."""
    argv = [os.path.join(PG_BIN, argv[0])] + list(argv[1:])
    if os.geteuid() == 0:
        argv = ["runuser", "-u", PG_USER, "--"] + argv
    return subprocess.run(argv, capture_output=True, text=True, **kw)


def settings_for(sim, **more):
    s = base_settings(sim)
    # an outage at MP (STUCK_POS) lasts as long as a test wants: no giving up
    s.update({"mpqr.database": "shop", "mpqr.fast_check_after": "1h", "mpqr.max_attempts": 1000})
    s.update(more)
    return s


@pytest.fixture(scope="module")
def nodb(sim):
    """A cluster whose mpqr.database names no database, started first: the
    last test but one reads what its workers logged."""
    c = Cluster(settings_for(sim, **{"mpqr.database": "nosuch"}), name="nodb").init().start()
    c.started = time.time()
    yield c
    c.destroy()


@pytest.fixture(scope="module")
def cluster(sim, nodb):
    port = free_port()
    c = Cluster(settings_for(sim, **{"mpqr.listen_port": port,
                                     "mpqr.public_url": "http://127.0.0.1:%d" % port}),
                name="ops").init().start()
    c.listener_port = port
    c.execute("CREATE DATABASE shop")
    yield c
    c.destroy()


def publish_ok(sim, ref):
    """The successful publishes of ref that the simulator received."""
    return [r for r in sim.requests("/instore/qr/seller/collectors/") if r["method"] == "PUT"
            and '"%s"' % ref in r["body"] and r["status"] in (200, 201, 204)]


def status_of(c, ref, dbname="shop"):
    return c.scalar("SELECT status FROM mpqr.orders WHERE external_reference = %s", (ref,), dbname)


def wait_status(c, ref, status, dbname="shop", timeout=30):
    wait_for(lambda: status_of(c, ref, dbname) == status, timeout,
             what="order %s to become %s" % (ref, status))


def sim_shop(sim):
    sim.account(user_id=COLLECTOR, token=TOKEN, site_id="MLA")
    st = sim.store(user_id=COLLECTOR, name="Centro", external_id="SUC001", location=LOCATION)
    for pos in [POS] + STUCK_POS:
        sim.pos(user_id=COLLECTOR, name="Caja", fixed_amount=True, store_id=st["id"],
                external_store_id="SUC001", external_id=pos)


def stall_publishes(sim):
    sim.fault(method="PUT", path=STUCK_PATH, status=503, times=100000)


def clear_faults(sim):
    sim.call("DELETE", "/_sim/faults")


@pytest.fixture(scope="module")
def shop(cluster, sim):
    """Orders in every state that money leaves behind, notifications,
    payments, merchant orders, a refund, and an order that stays queued."""
    sim.reset()
    sim_shop(sim)
    db = "shop"
    cluster.execute("CREATE EXTENSION mpqr", dbname=db)
    cluster.execute("SELECT mpqr_add_account('main', %s, %s, api => 'instore')", (COLLECTOR, TOKEN), db)
    for pos in [POS] + STUCK_POS:
        cluster.execute("SELECT mpqr_add_pos(%s, 'SUC001', 'Caja', register => false)", (pos,), db)
    for ref in ("OP-PAID", "OP-REFUNDED"):
        cluster.execute("SELECT mpqr_put_order(%s, %s, 100)", (POS, ref), db)
        wait_status(cluster, ref, "published")
        sim.pay(user_id=COLLECTOR, external_pos_id=POS)
        wait_status(cluster, ref, "paid")
    cluster.execute("SELECT mpqr_refund('OP-REFUNDED')", dbname=db)
    wait_status(cluster, "OP-REFUNDED", "refunded")
    cluster.execute("SELECT mpqr_put_order(%s, 'OP-CANCELLED', 30)", (POS,), db)
    wait_status(cluster, "OP-CANCELLED", "published")
    cluster.execute("SELECT mpqr_cancel_order('OP-CANCELLED')", dbname=db)
    wait_status(cluster, "OP-CANCELLED", "cancelled")
    cluster.execute("SELECT mpqr_put_order(%s, 'OP-PUBLISHED', 40)", (POS,), db)
    wait_status(cluster, "OP-PUBLISHED", "published")
    stall_publishes(sim)
    cluster.execute("SELECT mpqr_put_order(%s, 'OP-QUEUED', 50)", (STUCK_POS[0],), db)
    sim.wait_requests(STUCK_POS[0], 1)
    assert cluster.scalar("SELECT count(*) FROM mpqr.notifications", dbname=db) >= 2
    assert cluster.scalar("SELECT count(*) FROM mpqr.payments", dbname=db) == 2
    return cluster


def dump(c, dbname, path):
    """pg_dump -Fc of dbname, and what it holds: (rows, sequences) as read
    in the snapshot the dump was taken in.  Sequences are not transactional:
    the dump is taken again should one move meanwhile."""
    for _ in range(5):
        conn = c.connect(dbname, autocommit=False)
        try:
            cur = conn.cursor()
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cur.execute("SELECT pg_export_snapshot()")
            snap = cur.fetchone()[0]
            seqs = sequences(conn)
            data = rows(conn)
            r = run_pg(["pg_dump", "-Fc", "--snapshot", snap, "-f", path, "-d", c.dsn(dbname)])
            assert r.returncode == 0, r.stderr
            again = sequences(conn)
        finally:
            conn.close()
        if again == seqs:
            return data, seqs
    raise AssertionError("the sequences of %s kept moving during pg_dump" % dbname)


def restore(c, dbname, path):
    r = run_pg(["pg_restore", "-d", c.dsn(dbname), path])
    assert r.returncode == 0, r.stderr
    return r


def table_rows(c, dbname):
    conn = c.connect(dbname)
    try:
        return rows(conn), sequences(conn)
    finally:
        conn.close()


def without(data, table, columns):
    """data with some columns of one table left out."""
    import json
    out = dict(data)
    out[table] = sorted(json.dumps({k: v for k, v in json.loads(s).items() if k not in columns},
                                   sort_keys=True) for s in data[table])
    return out


# -- 3. upgrade from 0.1.0 -------------------------------------------------

FILL_010 = """
SELECT mpqr_add_account('main', 123456789, 'APP_USR-upgrade-main', NULL, 'MLA', 'instore');
SELECT mpqr_add_account('ord', 222333444, 'APP_USR-upgrade-ord', 'a-webhook-secret', 'MLB', 'orders');
SELECT mpqr_add_store('main', 'SUC001', 'Centro', '{"street_number": "1", "street_name": "Calle",
    "city_name": "Palermo", "state_name": "Capital Federal", "latitude": -34.6, "longitude": -58.4,
    "reference": "x"}');
SELECT mpqr_add_pos('SUC001POS001', 'SUC001', 'Caja 1');
SELECT mpqr_add_pos('SUC001POS002', 'SUC001', 'Caja 2', register => false);
SELECT mpqr_add_pos('SUC002POS001', 'SUC002', 'Caja 1', account => 'ord', register => false);
SELECT mpqr_put_order('SUC001POS002', 'UP-' || i, 10 * i) FROM generate_series(1, 6) i;
SELECT mpqr_put_order('SUC002POS001', 'UP-ORD', 77);
-- what the sender and the reconciliation would have made of them
UPDATE mpqr.orders SET status = (ARRAY['published', 'paid', 'cancelled', 'expired', 'failed', 'refunded'])[
        substr(external_reference, 4)::int],
       published_at = now(), paid_amount = CASE WHEN external_reference IN ('UP-2', 'UP-6') THEN total_amount
                                                ELSE 0 END,
       refunded_amount = CASE WHEN external_reference = 'UP-6' THEN total_amount ELSE 0 END,
       mp_order_id = '9000' || substr(external_reference, 4), previous_mp_order_ids = ARRAY['8000']
 WHERE external_reference LIKE 'UP-_';
INSERT INTO mpqr.order_events (order_id, from_status, to_status, reason, detail)
SELECT id, 'queued', status, 'upgrade test', '{"k": 1}' FROM mpqr.orders;
INSERT INTO mpqr.merchant_orders (id, account, order_id, external_reference, status, order_status,
                                  total_amount, paid_amount, refunded_amount, last_updated, body)
SELECT 9000 + substr(external_reference, 4)::int, 'main', id, external_reference, 'closed', 'paid',
       total_amount, total_amount, 0, now(), '{"id": 1}'
  FROM mpqr.orders WHERE external_reference IN ('UP-2', 'UP-6');
INSERT INTO mpqr.payments (id, account, order_id, external_reference, merchant_order_id, status,
                           status_detail, amount, amount_refunded, currency, operation_type,
                           approved_at, last_modified, body)
SELECT '7000' || substr(external_reference, 4), 'main', id, external_reference,
       9000 + substr(external_reference, 4)::int, CASE WHEN refunded_amount > 0 THEN 'refunded' ELSE 'approved' END,
       'accredited', total_amount, refunded_amount, 'ARS', 'regular_payment', now(), now(), '{"id": 2}'
  FROM mpqr.orders WHERE external_reference IN ('UP-2', 'UP-6');
INSERT INTO mpqr.refunds (order_id, payment_id, amount, status, mp_refund_id, idempotency_key)
SELECT id, '70006', total_amount, 'approved', '555', 'refund-key-1' FROM mpqr.orders WHERE external_reference = 'UP-6';
INSERT INTO mpqr.anomalies (order_id, kind, detail)
SELECT id, 'late_payment', '{"key": "x"}' FROM mpqr.orders WHERE external_reference = 'UP-2';
-- notifications: 0.1.0's trigger queues their fetches
INSERT INTO mpqr.notifications (account, query, headers, body, body_json, topic, resource_id, signature)
VALUES ('main', '{"topic": "merchant_order", "id": "90002"}', '{"user-agent": "MercadoPago"}', NULL, NULL,
        'merchant_order', '90002', 'unverified'),
       ('ord', '{"data.id": "ORD1", "type": "order"}', '{}', '{"action": "order.processed"}',
        '{"action": "order.processed"}', 'order', 'ORD1', 'valid'),
       (NULL, '{}', '{}', '{"user_id": 1}', '{"user_id": 1}', 'payment', '1', 'unverified');
UPDATE mpqr.requests SET state = 'done', attempts = 1, sent_at = now(), finished_at = now(), http_status = 200,
                         response = '{}' WHERE kind = 'create_store';
UPDATE mpqr.requests SET state = 'inflight', attempts = 1, lease_until = now() + interval '1 minute'
 WHERE kind = 'create_pos';
"""


def test_upgrade_from_0_1_0_matches_a_fresh_install(cluster):
    for d in ("upgraded", "fresh"):
        cluster.execute("DROP DATABASE IF EXISTS %s" % d)
        cluster.execute("CREATE DATABASE %s" % d)
    # a grant made by the DBA survives the update (and is made in the fresh one alike)
    cluster.execute("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pos_app') "
                    "THEN CREATE ROLE pos_app; END IF; END $$")
    fresh = cluster.connect("fresh")
    fresh.cursor().execute("CREATE EXTENSION mpqr")
    fresh.cursor().execute("GRANT EXECUTE ON FUNCTION mpqr_cancel_order(text, text) TO pos_app")
    version = cluster.scalar("SELECT extversion FROM pg_extension WHERE extname = 'mpqr'", dbname="fresh")
    fresh.close()

    conn = cluster.connect("upgraded")
    cur = conn.cursor()
    cur.execute("CREATE EXTENSION mpqr VERSION '0.1.0'")
    cur.execute("GRANT EXECUTE ON FUNCTION mpqr_cancel_order(text, text) TO pos_app")
    cur.execute(FILL_010)
    cur.execute("SELECT table_name, array_agg(column_name::text) FROM information_schema.columns "
                "WHERE table_schema = 'mpqr' GROUP BY 1")
    old_columns = dict(cur.fetchall())
    before = rows(conn)
    old_seqs = sequences(conn)
    for t in ("orders", "requests", "notifications", "payments", "refunds", "merchant_orders",
              "anomalies", "order_events", "accounts", "stores", "pos"):
        assert before.get(t), "the 0.1.0 fill left mpqr.%s empty" % t
    assert cluster.scalar("SELECT count(*) FROM mpqr.requests WHERE kind LIKE 'fetch%'",
                          dbname="upgraded") == 2

    cur.execute("ALTER EXTENSION mpqr UPDATE")
    cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'mpqr'")
    assert cur.fetchone()[0] == version

    # the catalog is the fresh install's, object for object
    a, b = catalog(cluster, "fresh"), catalog(cluster, "upgraded")
    assert len(a["functions"]) > 50 and len(a["columns"]) > 100 and a["comments"]
    diff = catalog_diff(a, b)
    assert diff == [], "\n".join(diff)
    # (and the comparison sees a difference where there is one)
    cur.execute("COMMENT ON COLUMN mpqr.orders.mode IS 'changed'")
    assert catalog_diff(a, catalog(cluster, "upgraded")) != []
    cur.execute("COMMENT ON COLUMN mpqr.orders.mode IS %s",
                (cluster.scalar("SELECT col_description('mpqr.orders'::regclass, "
                                "(SELECT attnum FROM pg_attribute WHERE attrelid = 'mpqr.orders'::regclass "
                                "AND attname = 'mode'))", dbname="fresh"),))

    # the data is what it was; the new columns say what 0.1.0 meant
    after = rows(conn, columns=old_columns)
    assert {t: v for t, v in after.items() if t in before} == before
    assert {t: v for t, v in after.items() if t not in before} == {"catchups": []}
    assert sequences(conn) == old_seqs
    cur.execute("SELECT DISTINCT origin_system = (pg_control_system()).system_identifier, origin_database "
                "FROM mpqr.accounts")
    assert cur.fetchall() == [(True, "upgraded")]
    cur.execute("SELECT DISTINCT mode FROM mpqr.orders")
    assert cur.fetchall() == [("static",)]
    # and it works: an order is put, the status answers
    cur.execute("SELECT mpqr_put_order('SUC001POS001', 'UP-AFTER', 5)")
    cur.execute("SELECT value FROM mpqr_status() WHERE name = 'orders_queued'")
    assert int(cur.fetchone()[0]) >= 1
    conn.close()


# -- 4. misconfiguration --------------------------------------------------

def test_create_extension_elsewhere_says_so(cluster):
    cluster.execute("DROP DATABASE IF EXISTS elsewhere")
    cluster.execute("CREATE DATABASE elsewhere")
    conn = cluster.connect("elsewhere")
    conn.cursor().execute("CREATE EXTENSION mpqr")
    warnings = [n for n in conn.notices if n.startswith("WARNING")]
    conn.close()
    assert len(warnings) == 1, conn.notices
    assert '"elsewhere"' in warnings[0] and '"mpqr.database" is "shop"' in warnings[0]
    assert cluster.status("elsewhere")["database_served"] == "false"
    cluster.execute("DROP DATABASE elsewhere")


# -- 1. and 2. dump and restore --------------------------------------------

def test_dump_restores_exactly_into_a_new_database(shop):
    assert shop.status("shop")["database_served"] == "true"
    path = os.path.join(shop.base, "shop.dump")
    data, seqs = dump(shop, "shop", path)
    assert data["orders"] and seqs["requests_id_seq"][0] > 1
    shop.execute("CREATE DATABASE copy")
    restore(shop, "copy", path)
    assert table_rows(shop, "copy") == (data, seqs)
    st = shop.status("copy")
    assert (st["database_served"], st["accounts_restored_copy"]) == ("false", "1")
    shop.execute("DROP DATABASE copy")


@pytest.fixture(scope="module")
def other(certs):
    """Another cluster (a staging server) with a simulator of its own: every
    request it makes is its own."""
    sim2 = Sim(certs)
    c = Cluster(settings_for(sim2), name="staging").init().start()
    c.sim = sim2
    yield c
    c.destroy()
    sim2.stop()


def test_copy_on_another_cluster_sends_nothing_until_confirmed(shop, other):
    path = os.path.join(shop.base, "staging.dump")
    data, seqs = dump(shop, "shop", path)
    assert status_of(shop, "OP-QUEUED") == "queued"
    sim_shop(other.sim)
    other.execute("CREATE DATABASE shop")
    restore(other, "shop", path)

    def paused():
        return other.execute("SELECT name, pause_reason FROM mpqr.accounts WHERE paused_at IS NOT NULL",
                             dbname="shop")
    (name, reason), = wait_for(paused, 30, what="the copy's accounts to be paused")
    assert name == "main" and reason.startswith("restored copy: configured in database \"shop\" of cluster ")
    assert "mpqr_confirm_copy()" in reason
    got, got_seqs = table_rows(other, "shop")
    assert without(got, "accounts", {"paused_at", "pause_reason"}) == \
        without(data, "accounts", {"paused_at", "pause_reason"})
    assert got_seqs == seqs
    st = other.status("shop")
    assert st["account_paused:main"].startswith("restored copy")
    # work put on the copy waits too; the sender, awake, sends nothing
    other.execute("SELECT mpqr_put_order(%s, 'ST-NEW', 12)", (STUCK_POS[1],), "shop")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.0:      # ten of the sender's polls
        assert other.sim.requests() == []
        time.sleep(0.2)
    assert "restored copy" in other.log_text()

    assert other.scalar("SELECT mpqr_confirm_copy()", dbname="shop") == 1
    for ref in ("OP-QUEUED", "ST-NEW"):
        wait_status(other, ref, "published")
        assert len(publish_ok(other.sim, ref)) == 1
    assert other.status("shop")["accounts_paused"] == "0"


def test_restore_in_place_after_an_accident(shop, sim):
    """DROP DATABASE by mistake; the documented path: create it again and
    pg_restore the last dump into it.  While the restore runs the workers
    leave the database alone; then the queued work goes out once."""
    path = os.path.join(shop.base, "accident.dump")
    data, seqs = dump(shop, "shop", path)
    assert status_of(shop, "OP-QUEUED") == "queued"
    shop.execute("DROP DATABASE shop WITH (FORCE)")
    shop.execute("CREATE DATABASE shop")
    clear_faults(sim)
    seen = len(sim.requests())

    script = run_pg(["pg_restore", "-f", "-", path])
    assert script.returncode == 0, script.stderr
    argv = [os.path.join(PG_BIN, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", shop.dsn("shop")]
    if os.geteuid() == 0:
        argv = ["runuser", "-u", PG_USER, "--"] + argv
    psql = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        psql.stdin.write(script.stdout + "\n\\echo RESTORE-LOADED\n")
        psql.stdin.flush()
        for line in psql.stdout:
            if line.strip() == "RESTORE-LOADED":
                break
        # loaded, the session still open: the restore is not over
        assert shop.status("shop")["restore_in_progress"] == "true"
        url = "/notifications?account=main&topic=merchant_order&id=1"
        # the workers, killed by the DROP, are back, and wait
        wait_for(lambda: shop.status("shop")["sender_pid"] and shop.status("shop")["listener_pid"], 30,
                 what="the workers to start again")
        assert wait_for(lambda: http_post(shop.listener_port, url), 30, what="the listener to answer") == 503
        assert table_rows(shop, "shop") == (data, seqs)
        # the queued publish is due, and the sender, awake, leaves it alone
        wait_for(lambda: shop.scalar("SELECT bool_and(not_before < now() - interval '200ms') "
                                     "FROM mpqr.requests WHERE state = 'queued'", dbname="shop"), 30,
                 what="the queued requests to be due")
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:      # five of the sender's polls
            assert len(sim.requests()) == seen
            time.sleep(0.2)
        assert status_of(shop, "OP-QUEUED") == "queued"
    finally:
        psql.stdin.close()
        assert psql.wait(60) == 0, psql.stderr.read()
    wait_status(shop, "OP-QUEUED", "published")
    assert len(publish_ok(sim, "OP-QUEUED")) == 1
    assert shop.status("shop")["accounts_paused"] == "0"
    wait_for(lambda: http_post(shop.listener_port, url) == 200, 30, what="the listener to store again")


def http_post(port, target):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("POST", target, body=b"")
        return c.getresponse().status
    finally:
        c.close()


# -- 6. the TLS proxy of the README ----------------------------------------

def readme_nginx():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    blocks = re.findall(r"```nginx\n(.*?)```", text, re.S)
    assert len(blocks) == 1, "the README shows one nginx configuration"
    return blocks[0]


def test_readme_tls_proxy_delivers_to_the_listener(shop, certs):
    port = free_port()
    server = readme_nginx()
    assert "listen 443 ssl;" in server and "proxy_pass http://127.0.0.1:8484/;" in server
    server = (server.replace("listen 443 ssl;", "listen 127.0.0.1:%d ssl;" % port)
              .replace("/etc/letsencrypt/live/shop.example.com/fullchain.pem", os.path.join(certs, "server.pem"))
              .replace("/etc/letsencrypt/live/shop.example.com/privkey.pem", os.path.join(certs, "server.key"))
              .replace("127.0.0.1:8484", "127.0.0.1:%d" % shop.listener_port))
    d = tempfile.mkdtemp(prefix="mpqr-proxy-")
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write("daemon off;\nworker_processes 1;\npid %s/nginx.pid;\nerror_log %s/error.log warn;\n"
                "events { worker_connections 64; }\nhttp {\n    access_log off;\n"
                "    client_body_temp_path %s/body;\n    proxy_temp_path %s/proxy;\n%s}\n"
                % (d, d, d, d, server))
    nginx = subprocess.Popen(["nginx", "-c", conf, "-p", d])
    try:
        ctx = ssl.create_default_context(cafile=os.path.join(certs, "ca.pem"))

        def post():
            c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
            try:
                c.request("POST", "/mp/notifications?account=main&topic=merchant_order&id=424242",
                          body=b'{"resource": "424242", "topic": "merchant_order"}',
                          headers={"Content-Type": "application/json", "Host": "shop.example.com"})
                return c.getresponse().status
            finally:
                c.close()
        assert wait_for(lambda: post() == 200, 20, what="nginx to pass a notification through")
        stored = shop.execute("SELECT topic, account, headers ? 'x-forwarded-for' FROM mpqr.notifications "
                              "WHERE resource_id = '424242'", dbname="shop")
        assert stored and stored[0][:2] == ("merchant_order", "main")
    finally:
        nginx.terminate()
        nginx.wait(10)


# -- 8. plpgsql_check ------------------------------------------------------

# plpgsql_check's extra warnings that are by design (notes-ops.md explains each)
EXPLAINED = {
    ("mpqr.publish_target(mpqr.requests,mpqr.accounts,mpqr.orders)", 'unmodified OUT variable "headers"'),
    ("mpqr.cancel_target(mpqr.requests,mpqr.accounts,mpqr.orders)", 'unmodified OUT variable "body"'),
    ("mpqr.cancel_target(mpqr.requests,mpqr.accounts,mpqr.orders)", 'unmodified OUT variable "headers"'),
    ("mpqr.create_target(mpqr.requests,mpqr.accounts)", 'unmodified OUT variable "headers"'),
    ("mpqr.refund_target(mpqr.requests,mpqr.accounts,mpqr.orders)", 'unused parameter "a"'),
    ("mpqr.cancel_answer(mpqr.requests,text,integer,text,text)", 'unused parameter "error"'),
    ("mpqr.refund_answer(mpqr.requests,text,integer,text,text)", 'unused parameter "error"'),
    ("mpqr.create_answer(mpqr.requests,text,integer,text,text)", 'unused parameter "error"'),
}


def test_plpgsql_check_finds_no_error(cluster):
    cluster.execute("DROP DATABASE IF EXISTS checked")
    cluster.execute("CREATE DATABASE checked")
    cluster.execute("CREATE EXTENSION mpqr", dbname="checked")
    cluster.execute("CREATE EXTENSION plpgsql_check", dbname="checked")
    found = cluster.execute("""
        SELECT p.oid::regprocedure::text, r.level, r.message, r.lineno, r.statement
          FROM pg_proc p
          JOIN pg_language l ON l.oid = p.prolang AND l.lanname = 'plpgsql'
          JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
          JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'mpqr'
         CROSS JOIN LATERAL plpgsql_check_function_tb(p.oid, fatal_errors => false,
                                                      other_warnings => true, extra_warnings => true,
                                                      performance_warnings => false) r""",
                            dbname="checked")
    n = cluster.scalar("""
        SELECT count(*) FROM pg_proc p
          JOIN pg_language l ON l.oid = p.prolang AND l.lanname = 'plpgsql'
          JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
          JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'mpqr'""", dbname="checked")
    print("plpgsql_check: %d functions, %d findings" % (n, len(found)))
    assert n > 40
    assert cluster.scalar("SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                          "WHERE c.relnamespace = 'mpqr'::regnamespace AND NOT t.tgisinternal",
                          dbname="checked") == 0       # no trigger function to check with a relation
    errors = [f for f in found if f[1] == "error"]
    assert errors == [], errors
    unexplained = [f for f in found if (f[0], f[2]) not in EXPLAINED]
    assert unexplained == [], unexplained
    cluster.execute("DROP DATABASE checked WITH (FORCE)")


# -- 4. a database that does not exist -------------------------------------

def test_workers_wait_for_a_missing_database_with_a_backoff(nodb):
    window = 20.0
    left = nodb.started + window + 1 - time.time()
    if left > 0:
        time.sleep(left)    # the window is what is measured
    stamp = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)")
    lines = [ln for ln in nodb.log_text().splitlines() if stamp.match(ln)]
    times = [time.mktime(time.strptime(stamp.match(ln).group(1)[:19], "%Y-%m-%d %H:%M:%S")) for ln in lines]
    first = next(t for t, ln in zip(times, lines) if "nosuch" in ln)
    inside = [ln for t, ln in zip(times, lines) if t < first + window]
    fatal = [ln for ln in inside if "FATAL" in ln]
    checks = [ln for ln in inside if 'named by "mpqr.database" does not exist' in ln]
    exits = [ln for ln in inside if "exited with exit code" in ln]
    print("in %.0f s: %d FATAL, %d checks, %d exits" % (window, len(fatal), len(checks), len(exits)))
    assert len(fatal) <= 2 and len(exits) <= 2, "\n".join(fatal + exits)
    assert 4 <= len(checks) <= 14, "\n".join(checks)
    delays = [int(x) for x in re.findall(r"checks again in (\d+) seconds", nodb.log_text())]
    assert delays[:2] == [1, 1] or delays[:2] == [1, 2]
    assert max(delays) <= 60 and max(delays) >= 8
    nodb.execute("CREATE EXTENSION mpqr")
    st = nodb.status()
    assert st["database_served"] == "false" and st["sender_database_missing"] == "nosuch"


# -- 5. a standby, promoted ------------------------------------------------

def test_standby_sends_the_queued_orders_once_after_promotion(shop, sim):
    stall_publishes(sim)
    refs = ["SB-%d" % i for i in range(len(STANDBY_POS))]
    for pos, ref in zip(STANDBY_POS, refs):
        shop.execute("SELECT mpqr_put_order(%s, %s, 9)", (pos, ref), "shop")
    for pos in STANDBY_POS:
        sim.wait_requests(pos, 1)

    standby = Cluster(dict(shop.settings), name="standby")
    standby.settings.update({"port": standby.port, "unix_socket_directories": "'%s'" % standby.base,
                             "mpqr.listen_port": 0})
    r = run_pg(["pg_basebackup", "-D", standby.data, "-R", "-X", "stream", "-c", "fast", "-d", shop.dsn()])
    assert r.returncode == 0, r.stderr
    standby.write_conf()
    standby.start()
    try:
        lsn = shop.scalar("SELECT pg_current_wal_lsn()")
        wait_for(lambda: standby.scalar("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)), 30,
                 what="the standby to catch up")
        assert standby.scalar("SELECT pg_is_in_recovery()")
        assert standby.scalar("SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'mpqr%'") == 0
        assert standby.status("shop")["sender_pid"] is None
        assert standby.execute("SELECT external_reference, status FROM mpqr.orders WHERE external_reference "
                               "LIKE 'SB-%%' ORDER BY 1", dbname="shop") == [(x, "queued") for x in refs]

        shop.stop()
        clear_faults(sim)
        t0 = time.monotonic()
        r = run_pg(["pg_ctl", "-D", standby.data, "-w", "promote"])
        assert r.returncode == 0, r.stderr
        wait_for(lambda: standby.status("shop")["sender_pid"], 30, what="the sender to start")
        print("sender started %.2f s after pg_ctl promote" % (time.monotonic() - t0))
        for ref in refs:
            wait_status(standby, ref, "published")
            assert len(publish_ok(sim, ref)) == 1
        assert standby.execute("SELECT external_reference, status FROM mpqr.orders "
                               "WHERE external_reference LIKE 'OP-%%' ORDER BY 1", dbname="shop") == [
            ("OP-CANCELLED", "cancelled"), ("OP-PAID", "paid"), ("OP-PUBLISHED", "published"),
            ("OP-QUEUED", "published"), ("OP-REFUNDED", "refunded")]
    finally:
        standby.destroy()
