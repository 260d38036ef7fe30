"""The budget for fetching resources mpqr has not seen yet follows real traffic.

Every first notification of a payment names a merchant order or a payment
mpqr has not seen.  Those fetches share one budget: a base rate
(mpqr.unknown_fetch_rate), plus mpqr.unknown_fetch_per_order for each order
that starts waiting for its customer.  A rush of real payments is never
throttled; notifications forged by anyone who can reach the listener still
cannot buy unlimited calls with the merchant's token.
"""
import concurrent.futures
import time
import urllib.request

import pytest

from conftest import COLLECTOR, TOKEN, base_settings
from pgcluster import Cluster, free_port, wait_for

LOCATION = {"street_number": "1", "street_name": "Calle", "city_name": "Palermo",
            "state_name": "Capital Federal", "latitude": -34.6, "longitude": -58.4, "reference": "x"}
RATE = 10


@pytest.fixture(scope="module")
def cluster(sim):
    port = free_port()
    settings = base_settings(sim)
    settings.update({"mpqr.listen_port": port, "mpqr.public_url": "http://127.0.0.1:%d" % port,
                     "mpqr.unknown_fetch_rate": RATE, "mpqr.unknown_fetch_per_order": 8})
    c = Cluster(settings, name="budget").init().start()
    c.listener = "http://127.0.0.1:%d" % port
    yield c
    c.destroy()


def post_ipns(db, ids):
    """POST one merchant-order IPN per id, 16 at a time; return the seconds it took."""
    def post(mo):
        req = urllib.request.Request(db.listener + "/notifications?topic=merchant_order&id=%d" % mo,
                                     data=b'{"topic":"merchant_order"}', method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(post, ids))
    return time.monotonic() - start


def triggered(db):
    return dict(db.execute("SELECT triggered, count(*) FROM mpqr.notifications GROUP BY 1"))


def test_forged_news_of_unknown_resources_is_budgeted(db):
    db.execute("SELECT mpqr_add_account('main', %s, %s, NULL, 'MLA', 'instore')", (COLLECTOR, TOKEN))
    took = post_ipns(db, range(910000000, 910000300))
    t = triggered(db)
    # one second of burst plus the base rate while they arrived; no order
    # waits for news, so nothing else funds them
    assert t.get("queued", 0) <= RATE + RATE * took + 5, (t, took)
    assert t.get("rate_limited", 0) >= 300 - (2 * RATE + RATE * took + 5), t


def test_a_rush_of_real_payments_is_not_throttled(db, sim):
    n = 30
    sim.account(user_id=COLLECTOR, token=TOKEN, site_id="MLA")
    st = sim.store(user_id=COLLECTOR, name="Centro", external_id="S1", location=LOCATION)
    for i in range(n):
        sim.pos(user_id=COLLECTOR, name="Caja %d" % i, fixed_amount=True, store_id=st["id"],
                external_store_id="S1", external_id="S1P%d" % i)
    db.execute("SELECT mpqr_add_account('main', %s, %s, NULL, 'MLA', 'instore')", (COLLECTOR, TOKEN))
    db.execute("SELECT mpqr_add_pos('S1P' || g, 'S1', 'Caja ' || g, register => false) "
               "FROM generate_series(0, %s) g", (n - 1,))
    db.execute("SELECT mpqr_put_order('S1P' || g, 'R' || g, 10) FROM generate_series(0, %s) g", (n - 1,))
    wait_for(lambda: db.scalar("SELECT count(*) FROM mpqr.orders WHERE status = 'published'") == n,
             60, what="the orders to be published")
    # six first notifications per payment (IPN and webhook, merchant order
    # and payment, created and updated), each naming something not seen yet
    post_ipns(db, range(920000000, 920000000 + 6 * n))
    t = triggered(db)
    assert t.get("rate_limited", 0) == 0, t
    assert t.get("queued", 0) == 6 * n, t
