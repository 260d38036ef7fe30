"""The mpqr demo: two sales told as a story, for a cashier and a DBA.

Everything runs here: a throwaway PostgreSQL cluster with mpqr preloaded,
and test/mpsim playing Mercado Pago (and the customer's phone).  Nothing
reaches the internet.  Every step shows the SQL it runs.  The account is on
the Orders API (the default); one sale uses the POS's printed (static) QR,
the other a dynamic QR the POS draws on its screen, both drawn here with
qrencode.
"""
import json
import os
import select
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "integration"))

from pgcluster import Cluster, free_port, wait_for  # noqa: E402
from simclient import Sim, make_certs  # noqa: E402

COLLECTOR = 123456789
TOKEN = "APP_USR-demo-token"
SECRET = "demo-webhook-secret"


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


def draw_qr(text):
    """The QR a customer scans, drawn in the terminal by Debian's qrencode."""
    out = subprocess.run(["qrencode", "-t", "UTF8", "-m", "2", text], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    for line in out.splitlines():
        say("    " + line)


def heard_paid(pos, refs, timeout=60):
    """Wait until the POS connection has heard each reference become paid."""
    deadline = time.monotonic() + timeout
    heard = {}
    while set(heard) != set(refs) and time.monotonic() < deadline:
        select.select([pos], [], [], 0.5)
        pos.poll()
        while pos.notifies:
            p = json.loads(pos.notifies.pop(0).payload)
            if p.get("status") == "paid" and p.get("external_reference") in refs:
                heard[p["external_reference"]] = p
    if set(heard) != set(refs):
        raise SystemExit("the POS never heard that every order was paid")
    return heard


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
        say("== The mpqr demo: two sales, from the cash register to the receipt ==")
        say("Mercado Pago is played by a local simulator at %s (TLS verified with a test CA)." % sim.base_url)
        cluster.init().start()
        say("A throwaway PostgreSQL cluster is running, as the postgres user, with")
        say("shared_preload_libraries = 'mpqr'. Its listener takes notifications on 127.0.0.1:%d." % port)

        step(1, "The DBA installs mpqr and adds the merchant's Mercado Pago account")
        sql(cluster, "CREATE EXTENSION mpqr")
        sim.account(user_id=COLLECTOR, token=TOKEN, site_id="MLA", webhook_secret=SECRET,
                    webhook_url="http://127.0.0.1:%d/notifications?account=main" % port)
        sql(cluster, "SELECT mpqr_add_account('main', collector_id => %s, access_token => %s, "
                     "webhook_secret => %s, site_id => 'MLA')", (COLLECTOR, TOKEN, SECRET), show=False)
        say("  SQL> SELECT mpqr_add_account('main', collector_id => %d, access_token => '<token>', "
            "webhook_secret => '<secret>', site_id => 'MLA')" % COLLECTOR)
        say("  (The Orders API, the default. In production the token comes from a file:")
        say("  access_token => pg_read_file('/etc/mpqr/main.token'), and it is never logged.)")

        step(2, "The DBA creates the store and two cash registers (POS) at Mercado Pago")
        sql(cluster, """SELECT mpqr_add_store('main', external_id => 'SUC001', name => 'Centro',
                        location => '{"street_number":"123","street_name":"Av. Corrientes",
                                      "city_name":"Palermo","state_name":"Capital Federal",
                                      "latitude":-34.6,"longitude":-58.4,"reference":"Local 2"}')""")
        sql(cluster, "SELECT mpqr_add_pos('SUC001POS001', store => 'SUC001', name => 'Caja 1')")
        sql(cluster, "SELECT mpqr_add_pos('SUC001POS002', store => 'SUC001', name => 'Caja 2')")
        wait_for(lambda: cluster.scalar("SELECT count(*) FROM mpqr.pos WHERE status = 'created' "
                                        "AND qr_code IS NOT NULL") == 2, 60, what="the POS to be created")
        say("  The sender created them at Mercado Pago; each POS keeps its printed QR.")
        say("  The sticker on Caja 1 (mpqr.pos.qr_code) -- the static QR:")
        draw_qr(cluster.scalar("SELECT qr_code FROM mpqr.pos WHERE external_id = 'SUC001POS001'"))

        step(3, "The cashier of Caja 1 rings up two pizzas; the POS listens for news about its sales")
        pos = cluster.connect()
        pos.cursor().execute("LISTEN mpqr_order")
        say("  SQL> LISTEN mpqr_order   -- the POS's own connection")
        sql(cluster, """SELECT mpqr_put_order('SUC001POS001', 'ORDER-1001', 150.00,
                        '[{"title":"Pizza","unit_price":75,"quantity":2}]')""")
        wait_status(cluster, "ORDER-1001", "published")
        row = sql(cluster, "SELECT status, total_amount, currency FROM mpqr.orders "
                           "WHERE external_reference = 'ORDER-1001'")[0]
        say("  The order is %s: the sender worker sent it to Mercado Pago once the transaction" % row[0])
        say("  committed, and the sticker of Caja 1 now shows %s %s." % (row[2], row[1]))

        step(4, "The cashier of Caja 2 sells a coffee with a QR of its own, on the POS's screen")
        sql(cluster, """SELECT mpqr_put_order('SUC001POS002', 'ORDER-1002', 35.50,
                        '[{"title":"Coffee","unit_price":35.50,"quantity":1}]', mode => 'dynamic')""")
        wait_status(cluster, "ORDER-1002", "published")
        qr_data = cluster.scalar("SELECT qr_data FROM mpqr.orders WHERE external_reference = 'ORDER-1002'")
        say("  The order is published; Mercado Pago answered with its EMVCo QR data, kept in")
        say("  mpqr.orders.qr_data and in the published NOTIFY. The POS draws it -- the dynamic QR:")
        draw_qr(qr_data)

        step(5, "The customers scan the QR codes with the Mercado Pago app and pay in the app")
        for ref in ("ORDER-1001", "ORDER-1002"):
            mp_id = cluster.scalar("SELECT mp_order_id FROM mpqr.orders WHERE external_reference = %s", (ref,))
            pay = sim.pay(user_id=COLLECTOR, order_id=mp_id)
            say("  %s: payment %s is %s; Mercado Pago's order %s is %s." %
                (ref, pay["payment_id"], pay["status"], mp_id, pay["order_status"]))
        wait_for(lambda: cluster.scalar("SELECT count(*) FROM mpqr.notifications") > 0, 30,
                 what="the first notification")
        say("  The listener stored the notifications, committed, and only then answered 200.")
        heard = heard_paid(pos, ("ORDER-1001", "ORDER-1002"))
        say("  The POS hears, on channel mpqr_order:")
        for ref in ("ORDER-1001", "ORDER-1002"):
            say("    " + json.dumps({k: heard[ref][k] for k in ("external_reference", "status", "paid_amount")}))

        step(6, "What happened inside: notifications, calls to the API, and the orders' history")
        for r in sql(cluster, "SELECT topic, resource_id, signature, triggered FROM mpqr.notifications "
                              "ORDER BY id"):
            say("    notification: topic=%s id=%s signature=%s -> %s" % r)
        for r in sql(cluster, "SELECT method, kind, http_status FROM mpqr.requests ORDER BY id"):
            say("    API call: %s %s -> HTTP %s" % r)
        for r in sql(cluster, "SELECT o.external_reference, from_status, to_status FROM mpqr.order_events e "
                              "JOIN mpqr.orders o ON o.id = e.order_id ORDER BY e.id"):
            say("    %s: %s -> %s" % (r[0], r[1] or "(new)", r[2]))
        for row in sql(cluster, "SELECT external_reference, status, paid_amount, mp_order_id FROM mpqr.orders "
                                "ORDER BY id"):
            say("  %s is %s: %s paid, confirmed by order %s read back from the API." % row)

        step(7, "The cashier of Caja 1 prints the receipt")
        receipt = sql(cluster, "SELECT mpqr_receipt('ORDER-1001')")[0][0]
        for line in receipt.splitlines():
            say("    " + line)

        pos.close()
        say()
        say("Both sales are paid and the receipt is printed, in %.0f seconds. Cleaning up." %
            (time.monotonic() - started))
    finally:
        cluster.destroy()
        sim.stop()
        shutil.rmtree(certs, ignore_errors=True)
    say("Done: the cluster and the simulator are stopped, and their files removed.")


if __name__ == "__main__":
    main()
