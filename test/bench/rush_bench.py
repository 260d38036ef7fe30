"""Busy hours (issue 10): burst, P4 and storm, against the simulator.

burst  200 customers pay within 2 s, each on a merchant order mpqr has not
       seen yet (MP creates it at payment): seconds from the first payment
       to all 200 orders paid.  Target <= 20 s, aim <= 5 s.
P4     300 payments at 100/s: for each, from the arrival of its first
       notification at the listener (notifications.received_at) to the
       NOTIFY mpqr_order saying paid (heard by a LISTENing client).  Target
       p99 <= 50 ms, aim <= 20 ms.
storm  300 unsigned webhooks (and 300 IPNs) naming one known order, sent
       by anyone who can reach the listener: the fetches of that order that
       Mercado Pago (the simulator) sees.  Target <= 10, aim <= 3.

Real parts: the simulator over TLS delivers the notifications as MP does;
the listener, the sender and the reconciliation are mpqr's own.  Default
settings, but for the listener's port and public URL.
"""
import concurrent.futures
import json
import os
import select
import statistics
import sys
import threading
import time
import urllib.request

from benchlib import machine
from pgcluster import Cluster, free_port, wait_for
from simclient import Sim, make_certs

COLLECTOR = 123456789
TOKEN = "APP_USR-rush-bench"
ORD = 222333444
ORD_TOKEN = "APP_USR-rush-orders"
SECRET = "rush-secret"
LOCATION = {"street_number": "1", "street_name": "Calle", "city_name": "Palermo",
            "state_name": "Capital Federal", "latitude": -34.6, "longitude": -58.4, "reference": "x"}


class Shop:
    def __init__(self, c, sim, listener):
        self.c, self.sim, self.listener = c, sim, listener

    def fresh(self, n, api="instore"):
        """A fresh extension and simulator, one account, n published orders on n POS."""
        c, sim = self.c, self.sim
        sim.reset()
        c.drop_extension()
        c.execute("DROP SCHEMA IF EXISTS mpqr CASCADE")
        c.execute("CREATE EXTENSION mpqr")
        uid, token = (COLLECTOR, TOKEN) if api == "instore" else (ORD, ORD_TOKEN)
        extra = {} if api == "instore" else {
            "webhook_secret": SECRET, "webhook_url": self.listener + "/notifications?account=main"}
        sim.account(user_id=uid, token=token, site_id="MLA", **extra)
        st = sim.store(user_id=uid, name="Centro", external_id="S1", location=LOCATION)
        for i in range(n):
            sim.pos(user_id=uid, name="Caja %d" % i, fixed_amount=True, store_id=st["id"],
                    external_store_id="S1", external_id="S1P%d" % i)
        c.execute("SELECT mpqr_add_account('main', %s, %s, %s, 'MLA', %s)",
                  (uid, token, SECRET if api == "orders" else None, api))
        c.execute("SELECT mpqr_add_pos('S1P' || g, 'S1', 'Caja ' || g, register => false) "
                  "FROM generate_series(0, %s) g", (n - 1,))
        c.execute("SELECT mpqr_put_order('S1P' || g, 'R' || g, 10) FROM generate_series(0, %s) g", (n - 1,))
        wait_for(lambda: c.scalar("SELECT count(*) FROM mpqr.orders WHERE status = 'published'") == n,
                 120, what="the orders to be published")
        return uid

    def paid(self):
        return self.c.scalar("SELECT count(*) FROM mpqr.orders WHERE status = 'paid'")


class Heard(threading.Thread):
    """A LISTEN mpqr_order client that notes when it heard each order paid."""

    def __init__(self, c):
        super().__init__(daemon=True)
        self.conn = c.connect()
        self.conn.cursor().execute("LISTEN mpqr_order")
        self.at = {}
        self.stop = False

    def run(self):
        while not self.stop:
            if select.select([self.conn], [], [], 0.2)[0]:
                self.conn.poll()
                now = time.time()
                while self.conn.notifies:
                    p = json.loads(self.conn.notifies.pop(0).payload)
                    if p.get("status") == "paid":
                        self.at.setdefault(p["external_reference"], now)


def burst(shop, n=200, within=2.0):
    uid = shop.fresh(n)
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        def pay(i):
            time.sleep(max(0.0, start + within * i / n - time.monotonic()))
            return shop.sim.pay(user_id=uid, external_pos_id="S1P%d" % i)
        list(pool.map(pay, range(n)))
    paid_in = time.monotonic() - start
    wait_for(lambda: shop.paid() == n, 300, interval=0.05, what="every order to be paid")
    elapsed = time.monotonic() - start
    trig = dict(shop.c.execute("SELECT triggered, count(*) FROM mpqr.notifications GROUP BY 1"))
    print("  burst: %d payments made in %.2f s; all %d paid %.2f s after the first; "
          "notifications: %s" % (n, paid_in, n, elapsed, trig), flush=True)
    return elapsed


def p4(shop, n=300, rate=100.0):
    uid = shop.fresh(n)
    heard = Heard(shop.c)
    heard.start()
    start = time.monotonic()
    pays = {}
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        def pay(i):
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
            pays["R%d" % i] = shop.sim.pay(user_id=uid, external_pos_id="S1P%d" % i)
        list(pool.map(pay, range(n)))
    wait_for(lambda: len(heard.at) == n, 120, interval=0.05, what="every order heard paid")
    heard.stop = True
    arrival = {}
    for ref, p in pays.items():
        arrival[ref] = shop.c.scalar(
            "SELECT extract(epoch FROM min(received_at)) FROM mpqr.notifications "
            "WHERE resource_id IN (%s, %s)", (str(p["payment_id"]), str(p["merchant_order_id"])))
    lat = sorted((heard.at[ref] - float(arrival[ref])) * 1000.0 for ref in pays)
    p50, p99 = lat[len(lat) // 2], lat[int(len(lat) * 0.99) - 1]
    print("  P4: %d payments at %.0f/s: notification arrival -> NOTIFY paid: p50 %.1f ms, "
          "p99 %.1f ms, max %.1f ms" % (n, rate, p50, p99, lat[-1]), flush=True)
    return p50, p99


def storm(shop, n=300):
    uid = shop.fresh(1, api="orders")
    mp_id = shop.c.scalar("SELECT mp_order_id FROM mpqr.orders")
    path = "/v1/orders/" + mp_id
    before = len([r for r in shop.sim.requests("^" + path + "$") if r["method"] == "GET"])

    def forge(i):
        if i % 2:
            url = shop.listener + "/notifications?account=main&data.id=%s&type=order" % mp_id
            body = {"action": "order.processed", "type": "order", "data": {"id": mp_id},
                    "user_id": str(uid), "id": 900000 + i}
        else:
            url = shop.listener + "/notifications?topic=order&id=%s" % mp_id
            body = {"resource": mp_id, "topic": "order"}
        req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(forge, range(n)))
    sent_in = time.monotonic() - start
    # let what was queued or debounced run, then count
    wait_for(lambda: shop.c.scalar("SELECT count(*) FROM mpqr.requests WHERE state IN "
                                   "('queued', 'inflight') AND kind = 'fetch_order'") == 0, 60,
             what="the fetches to settle")
    fetches = len([r for r in shop.sim.requests("^" + path + "$") if r["method"] == "GET"]) - before
    print("  storm: %d forged notifications (unsigned webhooks and IPNs) in %.2f s, answers %s; "
          "fetches of the order at MP: %d" % (n, sent_in, sorted(set(codes)), fetches), flush=True)
    return fetches


def main():
    rounds = int(os.environ.get("BENCH_ROUNDS", "2"))
    certs = make_certs()
    sim = Sim(certs)
    port = free_port()
    c = None
    try:
        c = Cluster({"mpqr.api_base_url": sim.base_url, "mpqr.ca_file": sim.ca_file,
                     "mpqr.listen_port": port, "mpqr.public_url": "http://127.0.0.1:%d" % port,
                     "max_connections": 60}, name="bench-rush").init().start()
        shop = Shop(c, sim, "http://127.0.0.1:%d" % port)
        print("Busy hours on %s, %d rounds" % (machine(), rounds))
        res = {"burst": [], "p4": [], "storm": []}
        for _ in range(rounds):
            res["burst"].append(burst(shop))
            res["p4"].append(p4(shop))
            res["storm"].append(storm(shop))
        print()
        print("burst: 200 payments within 2 s -> all paid (target <= 20 s, aim <= 5 s): median %.2f s (runs: %s)"
              % (statistics.median(res["burst"]), ", ".join("%.2f" % v for v in res["burst"])))
        print("P4: notification -> NOTIFY paid at 100/s (target p99 <= 50 ms, aim <= 20 ms): "
              "p99 median %.1f ms (runs: %s)" % (statistics.median(r[1] for r in res["p4"]),
                                                 ", ".join("p50 %.1f / p99 %.1f" % r for r in res["p4"])))
        print("storm: 300 forged notifications about one order -> fetches (target <= 10, aim <= 3): "
              "worst %d (runs: %s)" % (max(res["storm"]), ", ".join(str(v) for v in res["storm"])))
    finally:
        if c:
            c.destroy()
        sim.stop()


if __name__ == "__main__":
    sys.exit(main())
