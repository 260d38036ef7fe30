"""A worker killed between send and record: nothing is sent twice blindly.

PostgreSQL 15 treats a background worker killed by a signal as a crash, and
restarts every process.  The new sender recovers at once what the dead one
held, and checks before it sends again (design: the crash window); a check
that finds nothing looks again until the lost request could no longer
arrive.  The simulator delays its answer, so that the kill lands while the
request is on the wire.
"""
import json
import os
import signal

import pytest

from conftest import COLLECTOR, TOKEN, base_settings
from pgcluster import Cluster, wait_for

ORD = 222333444
ORD_TOKEN = "APP_USR-orders-token"
PUT_PATH = r"^/instore/qr/seller/collectors/%d/stores/SUC001/pos/SUC001POS001/orders$" % COLLECTOR
SHOW_PATH = "/instore/qr/seller/collectors/%d/pos/SUC001POS001/orders" % COLLECTOR
LOCATION = {"street_number": "1", "street_name": "Calle", "city_name": "Palermo",
            "state_name": "Capital Federal", "latitude": -34.6, "longitude": -58.4, "reference": "x"}


@pytest.fixture(scope="module")
def cluster(sim):
    settings = base_settings(sim)
    settings.update({"mpqr.request_lease": "5s", "mpqr.http_timeout": "20s"})
    c = Cluster(settings, name="crash").init().start()
    yield c
    c.destroy()


@pytest.fixture
def shop(db, sim):
    sim.account(user_id=COLLECTOR, token=TOKEN, site_id="MLA")
    sim.account(user_id=ORD, token=ORD_TOKEN, site_id="MLA")
    for uid, store, pos in ((COLLECTOR, "SUC001", "SUC001POS001"), (ORD, "SUC002", "SUC002POS001")):
        st = sim.store(user_id=uid, name="Centro", external_id=store, location=LOCATION)
        sim.pos(user_id=uid, name="Caja", fixed_amount=True, store_id=st["id"],
                external_store_id=store, external_id=pos)
    db.execute("SELECT mpqr_add_account('main', %s, %s, NULL, 'MLA', 'instore')", (COLLECTOR, TOKEN))
    db.execute("SELECT mpqr_add_account('ord', %s, %s, NULL, 'MLA', 'orders')", (ORD, ORD_TOKEN))
    db.execute("SELECT mpqr_add_pos('SUC001POS001', 'SUC001', 'Caja 1', register => false)")
    db.execute("SELECT mpqr_add_pos('SUC002POS001', 'SUC002', 'Caja 1', account => 'ord', register => false)")
    return db


def status_of(db, ref):
    return db.scalar("SELECT status FROM mpqr.orders WHERE external_reference = %s", (ref,))


def kill_sender_during(db, sim, path, method):
    """Wait for the request to reach MP, then kill -9 the sender; wait for recovery."""
    pid = int(db.status()["sender_pid"])
    sim.wait_requests(path, method=method)
    os.kill(pid, signal.SIGKILL)
    db.wait_ready()
    wait_for(lambda: db.status().get("sender_pid") not in (None, str(pid)), 60,
             what="a new sender after the crash restart")


def test_instore_put_is_checked_not_resent(shop, sim):
    sim.fault(method="PUT", path=PUT_PATH, latency_ms=3000, times=1)
    shop.execute("SELECT mpqr_put_order('SUC001POS001', 'CRASH-1', 10)")
    kill_sender_during(shop, sim, PUT_PATH, "PUT")
    wait_for(lambda: status_of(shop, "CRASH-1") == "published", 60, what="the order to be published")
    # the PUT landed (MP applied it after the kill); the check found it on
    # the POS, looking again while the lost PUT could still arrive, and
    # never sent it again
    assert len(sim.requests(PUT_PATH)) == 1
    checks = sim.requests(r"^/instore/qr/seller/collectors/%d/pos/SUC001POS001/orders$" % COLLECTOR)
    assert checks and {r["method"] for r in checks} == {"GET"}
    status, shown = sim.api("GET", SHOW_PATH, TOKEN)
    assert status == 200 and shown[0]["external_reference"] == "CRASH-1"


def test_instore_put_never_overwrites_a_newer_order(shop, sim):
    sim.fault(method="PUT", path=PUT_PATH, status=503, latency_ms=3000, times=1)
    shop.execute("SELECT mpqr_put_order('SUC001POS001', 'CRASH-2', 10)")
    kill_sender_during(shop, sim, PUT_PATH, "PUT")
    # meanwhile another cash register program put a newer order on that POS
    status, _ = sim.api("PUT", SHOW_PATH, TOKEN, {
        "external_reference": "NEWER", "title": "x", "description": "x", "total_amount": 5,
        "items": [{"title": "x", "unit_price": 5, "quantity": 1, "unit_measure": "unit", "total_amount": 5}]})
    assert status == 204
    wait_for(lambda: status_of(shop, "CRASH-2") == "failed", 60, what="the order to fail")
    sent = [json.loads(r["body"])["external_reference"] for r in sim.requests(PUT_PATH)]
    assert sent == ["CRASH-2"]
    status, shown = sim.api("GET", SHOW_PATH, TOKEN)
    assert shown[0]["external_reference"] == "NEWER"


def test_orders_api_post_is_resent_with_the_same_key(shop, sim):
    sim.fault(method="POST", path=r"^/v1/orders$", latency_ms=3000, times=1)
    shop.execute("SELECT mpqr_put_order('SUC002POS001', 'CRASH-3', 10)")
    kill_sender_during(shop, sim, r"^/v1/orders$", "POST")
    wait_for(lambda: status_of(shop, "CRASH-3") == "published", 60, what="the order to be published")
    posts = sim.requests(r"^/v1/orders$")
    assert len(posts) == 2
    assert posts[0]["headers"]["x-idempotency-key"] == posts[1]["headers"]["x-idempotency-key"]
    at_mp = [o for o in sim.state()["orders"] if o["external_reference"] == "CRASH-3"]
    assert len(at_mp) == 1
    assert shop.scalar("SELECT mp_order_id FROM mpqr.orders WHERE external_reference = 'CRASH-3'") == at_mp[0]["id"]
