"""R: orders in flight at a kill -9 of the sender, all published how soon after.

The simulator holds every publish for a few seconds, so that when N orders
(200 by default) are on the wire the sender is killed with SIGKILL;
PostgreSQL then restarts every process.  Measured: the time from the kill to
the last of the N orders published, and what Mercado Pago (the simulator)
saw: for the instore API one PUT per order (a PUT that may have landed is
checked, not re-sent blindly), for the Orders API one MP order per order
(a POST is re-sent with its idempotency key).  Default settings otherwise
(the lease is 60 s: a recovery that waited for it would show),
but mpqr.max_in_flight = 256, so that all N are on the wire at once.  Target:
all published within 15 s (aim 3 s), none sent twice, for both APIs.
"""
import os
import signal
import statistics
import sys
import time
from collections import Counter

from benchlib import machine
from pgcluster import Cluster, wait_for
from simclient import Sim, make_certs

N = int(os.environ.get("BENCH_ORDERS", "200"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
HOLD_MS = 3000
COLLECTOR = 123456789
TOKEN = "APP_USR-crash-bench"
LOCATION = {"street_number": "1", "street_name": "Calle", "city_name": "Palermo",
            "state_name": "Capital Federal", "latitude": -34.6, "longitude": -58.4, "reference": "x"}
PATHS = {"instore": ("PUT", r"^/instore/qr/seller/collectors/%d/stores/S1/pos/[^/]+/orders$" % COLLECTOR),
         "orders": ("POST", r"^/v1/orders$")}


def one_round(c, sim, api, n):
    sim.reset()
    c.drop_extension()
    c.execute("DROP SCHEMA IF EXISTS mpqr CASCADE")
    c.execute("CREATE EXTENSION mpqr")
    sim.account(user_id=COLLECTOR, token=TOKEN, site_id="MLA")
    st = sim.store(user_id=COLLECTOR, name="Centro", external_id="S1", location=LOCATION)
    c.execute("SELECT mpqr_add_account('main', %s, %s, NULL, 'MLA', %s)", (COLLECTOR, TOKEN, api))
    for i in range(n):
        sim.pos(user_id=COLLECTOR, name="Caja %d" % i, fixed_amount=True, store_id=st["id"],
                external_store_id="S1", external_id="S1P%d" % i)
    c.execute("SELECT mpqr_add_pos('S1P' || g, 'S1', 'Caja ' || g, register => false) "
              "FROM generate_series(0, %s) g", (n - 1,))
    method, path = PATHS[api]
    sim.fault(method=method, path=path, latency_ms=HOLD_MS, times=n)
    c.execute("SELECT mpqr_put_order('S1P' || g, 'R' || g, 10) FROM generate_series(0, %s) g", (n - 1,))
    pid = int(c.status()["sender_pid"])
    sim.wait_requests(path, count=n, timeout=60, method=method)
    def held():
        k = c.scalar("SELECT count(*) FROM mpqr.requests WHERE state = 'inflight'")
        return k if k >= n else None
    inflight = wait_for(held, 10, interval=0.02, what="every publish in flight")
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: c.scalar("SELECT count(*) FROM mpqr.orders WHERE status = 'published'") == n,
             120, interval=0.05, what="every order to be published")
    elapsed = time.monotonic() - killed
    sent = [r for r in sim.requests(path) if r["method"] == method]
    if api == "instore":
        per_order = Counter(r["path"] for r in sent)
    else:
        per_order = Counter(o["external_reference"] for o in sim.state()["orders"])
    doubled = sum(1 for v in per_order.values() if v > 1)
    keys = {r["headers"].get("x-idempotency-key") for r in sent} if api == "orders" else set()
    print("  %-8s in flight at the kill: %3d   all %d published %.2f s after it   "
          "requests sent: %d   orders sent twice at MP: %d%s"
          % (api, inflight, n, elapsed, len(sent), doubled,
             "   idempotency keys: %d" % len(keys) if keys else ""), flush=True)
    return elapsed, doubled


def main():
    certs = make_certs()
    sim = Sim(certs)
    c = None
    try:
        c = Cluster({"mpqr.api_base_url": sim.base_url, "mpqr.ca_file": sim.ca_file,
                     "mpqr.listen_port": 0, "mpqr.max_in_flight": 256},
                    name="bench-crash").init().start()
        print("R on %s: %d orders in flight at kill -9 of the sender, %d rounds per API"
              % (machine(), N, ROUNDS))
        results = {"instore": [], "orders": []}
        for _ in range(ROUNDS):
            for api in results:
                results[api].append(one_round(c, sim, api, N))
        print()
        print("R: seconds from the kill to the last order published (target <= 15, aim <= 3):")
        for api, runs in results.items():
            print("  %-8s median %.2f s   worst %.2f s   doubled orders: %d   (runs: %s)"
                  % (api, statistics.median(r[0] for r in runs), max(r[0] for r in runs),
                     sum(r[1] for r in runs), ", ".join("%.2f" % r[0] for r in runs)))
    finally:
        if c:
            c.destroy()
        sim.stop()


if __name__ == "__main__":
    sys.exit(main())
