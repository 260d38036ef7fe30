"""The mpqr demo: a sale told as a story, for a cashier and a DBA.

Everything runs here: a throwaway PostgreSQL cluster with mpqr preloaded,
and test/mpsim playing Mercado Pago (and the customer's phone).  Nothing
reaches the internet.  Every step shows the SQL it runs.
"""
import json
import os
import select
import shutil
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "integration"))

from pgcluster import Cluster, free_port, wait_for  # noqa: E402
from simclient import Sim, make_certs  # noqa: E402

COLLECTOR = 123456789
TOKEN = "APP_USR-demo-token"


def say(text=""):
    print(text, flush=True)


def step(n, title):
    say()
    say("Step %d. %s" % (n, title))
    say("-" * (len(title) + 9))


def sql(db, query, params=None, show=True):
    if show:
        say("  SQL> " + " ".join(query.split()))
    return db.execute(query, params)


def wait_status(db, ref, status, timeout=60):
    return wait_for(lambda: db.scalar("SELECT status FROM mpqr.orders WHERE external_reference = %s",
                                      (ref,)) == status, timeout, what="%s to become %s" % (ref, status))


def main():
    started = time.monotonic()
    certs = make_certs()
    sim = Sim(certs)
    port = free_port()
    cluster = Cluster({
        "mpqr.api_base_url": sim.base_url,
        "mpqr.ca_file": sim.ca_file,
        "mpqr.listen_port": port,
        "mpqr.public_url": "http://127.0.0.1:%d" % port,
        "mpqr.poll_interval": "200ms",
    }, name="demo")
    try:
        say("== The mpqr demo: one sale, from the cash register to the receipt ==")
        say("Mercado Pago is played by a local simulator at %s (TLS verified with a test CA)." % sim.base_url)
        cluster.init().start()
        say("A throwaway PostgreSQL cluster is running, as the postgres user, with")
        say("shared_preload_libraries = 'mpqr'. Its listener takes notifications on 127.0.0.1:%d." % port)

        step(1, "The DBA installs mpqr and adds the merchant's Mercado Pago account")
        sql(cluster, "CREATE EXTENSION mpqr")
        sim.account(user_id=COLLECTOR, token=TOKEN, site_id="MLA")
        st = sim.store(user_id=COLLECTOR, name="Centro", external_id="SUC001",
                       location={"street_number": "123", "street_name": "Av. Corrientes",
                                 "city_name": "Palermo", "state_name": "Capital Federal",
                                 "latitude": -34.6, "longitude": -58.4, "reference": "Local 2"})
        sim.pos(user_id=COLLECTOR, name="Caja 1", fixed_amount=True, store_id=st["id"],
                external_store_id="SUC001", external_id="SUC001POS001")
        sql(cluster, "SELECT mpqr_add_account('main', collector_id => %s, access_token => %s, "
                     "site_id => 'MLA', api => 'instore')", (COLLECTOR, TOKEN), show=False)
        say("  SQL> SELECT mpqr_add_account('main', collector_id => %d, access_token => '<token>', "
            "site_id => 'MLA', api => 'instore')" % COLLECTOR)
        say("  (In production the token comes from a file: access_token => pg_read_file('/etc/mpqr/main.token').)")

        step(2, "The DBA links the cash register's QR code (POS SUC001POS001, already set up at Mercado Pago)")
        sql(cluster, "SELECT mpqr_add_pos('SUC001POS001', store => 'SUC001', name => 'Caja 1', register => false)")

        step(3, "The cashier rings up two pizzas; the POS listens for news about its sales")
        pos = cluster.connect()
        pos.cursor().execute("LISTEN mpqr_order")
        say("  SQL> LISTEN mpqr_order   -- the POS's own connection")
        sql(cluster, """SELECT mpqr_put_order('SUC001POS001', 'ORDER-1001', 150.00,
                        '[{"title":"Pizza","unit_price":75,"quantity":2}]')""")
        wait_status(cluster, "ORDER-1001", "published")
        row = sql(cluster, "SELECT status, total_amount, currency FROM mpqr.orders "
                           "WHERE external_reference = 'ORDER-1001'")[0]
        say("  The order is %s: the sender worker sent it to Mercado Pago once the transaction" % row[0])
        say("  committed, and the QR code of Caja 1 now shows %s %s." % (row[2], row[1]))

        step(4, "The customer scans the QR code with the Mercado Pago app")
        sim.scan(user_id=COLLECTOR, external_pos_id="SUC001POS001")
        say("  The app shows the order. Mercado Pago makes no merchant order yet: that")
        say("  happens at payment. Nothing has reached the merchant.")

        step(5, "The customer pays in the app")
        pay = sim.pay(user_id=COLLECTOR, external_pos_id="SUC001POS001")
        mo = pay["merchant_order_id"]
        say("  Payment %s is approved; merchant order %s is now %s." %
            (pay["payment_id"], mo, pay.get("merchant_order_status", "closed")))
        wait_for(lambda: cluster.scalar("SELECT count(*) FROM mpqr.notifications WHERE resource_id "
                                        "IN (%s, %s)", (str(mo), str(pay["payment_id"]))) > 0, 30,
                 what="the first notification")
        say("  The listener stored the notifications, committed, and only then answered 200.")
        deadline = time.monotonic() + 60
        heard = None
        while heard is None and time.monotonic() < deadline:
            select.select([pos], [], [], 0.5)
            pos.poll()
            while pos.notifies:
                p = json.loads(pos.notifies.pop(0).payload)
                if p.get("status") == "paid":
                    heard = p
        if heard is None:
            raise SystemExit("the POS never heard that the order was paid")
        say("  The POS hears, on channel mpqr_order:")
        say("    " + json.dumps({k: heard[k] for k in ("external_reference", "status", "paid_amount")}))

        step(6, "What happened inside: notifications, fetches from the API, and the order's history")
        for r in sql(cluster, "SELECT topic, resource_id, signature, triggered FROM mpqr.notifications "
                              "ORDER BY id"):
            say("    notification: topic=%s id=%s signature=%s -> %s" % r)
        for r in sql(cluster, "SELECT method, kind, http_status FROM mpqr.requests ORDER BY id"):
            say("    API call: %s %s -> HTTP %s" % r)
        for r in sql(cluster, "SELECT from_status, to_status FROM mpqr.order_events e JOIN mpqr.orders o "
                              "ON o.id = e.order_id WHERE o.external_reference = 'ORDER-1001' ORDER BY e.id"):
            say("    status: %s -> %s" % (r[0] or "(new)", r[1]))
        row = sql(cluster, "SELECT status, paid_amount, mp_order_id FROM mpqr.orders "
                           "WHERE external_reference = 'ORDER-1001'")[0]
        say("  The order is %s: %s paid, confirmed by merchant order %s read back from the API." % row)

        step(7, "The cashier prints the receipt")
        receipt = sql(cluster, "SELECT mpqr_receipt('ORDER-1001')")[0][0]
        for line in receipt.splitlines():
            say("    " + line)

        pos.close()
        say()
        say("The sale is paid and the receipt is printed, in %.0f seconds. Cleaning up." %
            (time.monotonic() - started))
    finally:
        cluster.destroy()
        sim.stop()
        shutil.rmtree(certs, ignore_errors=True)
    say("Done: the cluster and the simulator are stopped, and their files removed.")


if __name__ == "__main__":
    main()
