"""Publishing orders end to end: mpqr_put_order -> sender -> the simulator over TLS."""
import json

import pytest

from conftest import COLLECTOR, TOKEN
from pgcluster import wait_for

ORDERS_COLLECTOR = 222333444
ORDERS_TOKEN = "APP_USR-orders-token"
INSTORE_PATH = r"^/instore/qr/seller/collectors/%d/stores/SUC001/pos/SUC001POS001/orders$" % COLLECTOR
ORDERS_PATH = r"^/v1/orders$"
SHOW_PATH = "/instore/qr/seller/collectors/%d/pos/SUC001POS001/orders" % COLLECTOR


@pytest.fixture
def shop(db, sim):
    """Two accounts (instore and Orders API), each with a store and a POS at MP and in mpqr."""
    sim.account(user_id=COLLECTOR, token=TOKEN, site_id="MLA")
    sim.account(user_id=ORDERS_COLLECTOR, token=ORDERS_TOKEN, site_id="MLA")
    location = {"street_number": "1", "street_name": "Calle", "city_name": "Palermo",
                "state_name": "Capital Federal", "latitude": -34.6, "longitude": -58.4, "reference": "x"}
    stores = {}
    for uid, store in ((COLLECTOR, "SUC001"), (ORDERS_COLLECTOR, "SUC002")):
        stores[store] = sim.store(user_id=uid, name="Centro", external_id=store, location=location)
    for uid, store, pos in ((COLLECTOR, "SUC001", "SUC001POS001"), (COLLECTOR, "SUC001", "SUC001POS002"),
                            (ORDERS_COLLECTOR, "SUC002", "SUC002POS001")):
        sim.pos(user_id=uid, name="Caja", fixed_amount=True, store_id=stores[store]["id"],
                external_store_id=store, external_id=pos)
    db.execute("SELECT mpqr_add_account('main', %s, %s, NULL, 'MLA', 'instore')", (COLLECTOR, TOKEN))
    db.execute("SELECT mpqr_add_account('ord', %s, %s, NULL, 'MLA', 'orders')", (ORDERS_COLLECTOR, ORDERS_TOKEN))
    db.execute("SELECT mpqr_add_pos('SUC001POS001', 'SUC001', 'Caja 1', register => false)")
    db.execute("SELECT mpqr_add_pos('SUC001POS002', 'SUC001', 'Caja 2', register => false)")
    db.execute("SELECT mpqr_add_pos('SUC002POS001', 'SUC002', 'Caja 1', account => 'ord', register => false)")
    return db


def order_status(db, ref):
    return db.scalar("SELECT status FROM mpqr.orders WHERE external_reference = %s", (ref,))


def wait_status(db, ref, status, timeout=30):
    return wait_for(lambda: order_status(db, ref) == status, timeout,
                    what="order %s to become %s (is %s)" % (ref, status, order_status(db, ref)))


def test_instore_publish_reaches_mp(shop, sim):
    shop.execute("""SELECT mpqr_put_order('SUC001POS001', 'ORDER-1001', 150.00,
                    '[{"title":"Pizza","unit_price":75,"quantity":2}]', title => 'Mesa 4')""")
    req = sim.wait_requests(INSTORE_PATH, method="PUT")[0]
    wait_status(shop, "ORDER-1001", "published")
    assert req["headers"]["authorization"] == "Bearer " + TOKEN
    assert req["headers"]["content-type"].startswith("application/json")
    body = json.loads(req["body"])
    assert body["external_reference"] == "ORDER-1001"
    assert body["total_amount"] == 150
    assert body["title"] == "Mesa 4" and body["description"] == "Mesa 4"
    assert body["items"] == [{"title": "Pizza", "unit_price": 75, "quantity": 2,
                              "unit_measure": "unit", "total_amount": 150}]
    assert "expiration_date" in body
    # MP shows it on the POS now
    status, shown = sim.api("GET", SHOW_PATH, TOKEN)
    assert status == 200 and shown[0]["external_reference"] == "ORDER-1001"
    published = shop.scalar("SELECT published_at IS NOT NULL FROM mpqr.orders WHERE external_reference = 'ORDER-1001'")
    assert published


def test_orders_api_publish(shop, sim):
    shop.execute("SELECT mpqr_put_order('SUC002POS001', 'ORD-1', 50.5, title => 'Cafe')")
    req = sim.wait_requests(ORDERS_PATH, method="POST")[0]
    wait_status(shop, "ORD-1", "published")
    key = shop.scalar("SELECT idempotency_key FROM mpqr.orders WHERE external_reference = 'ORD-1'")
    assert req["headers"]["x-idempotency-key"] == key
    assert req["headers"]["authorization"] == "Bearer " + ORDERS_TOKEN
    body = json.loads(req["body"])
    assert body["type"] == "qr"
    assert body["total_amount"] == "50.50"
    assert body["transactions"] == {"payments": [{"amount": "50.50"}]}
    assert body["config"]["qr"]["external_pos_id"] == "SUC002POS001"
    assert body["expiration_time"].startswith("PT")
    mp_id = shop.scalar("SELECT mp_order_id FROM mpqr.orders WHERE external_reference = 'ORD-1'")
    assert mp_id and mp_id.startswith("ORD")


def test_rollback_sends_nothing(shop, sim):
    conn = shop.connect(autocommit=False)
    with conn.cursor() as cur:
        cur.execute("SELECT mpqr_put_order('SUC001POS002', 'ROLLED-BACK', 10)")
    conn.rollback()
    conn.close()
    # a committed order on another POS, put afterwards, is the barrier: once it
    # arrived, the sender has drained everything committed before it
    shop.execute("SELECT mpqr_put_order('SUC001POS001', 'COMMITTED', 10)")
    sim.wait_requests(INSTORE_PATH, method="PUT")
    wait_status(shop, "COMMITTED", "published")
    sent = [json.loads(r["body"])["external_reference"] for r in sim.requests(r"/orders$") if r["body"]]
    assert "ROLLED-BACK" not in sent
    assert shop.scalar("SELECT count(*) FROM mpqr.requests WHERE state <> 'done'") == 0


def test_5xx_and_429_are_retried(shop, sim):
    sim.fault(method="PUT", path=INSTORE_PATH, status=503, times=2)
    sim.fault(method="PUT", path=INSTORE_PATH, status=429, times=1, retry_after=1)
    shop.execute("SELECT mpqr_put_order('SUC001POS001', 'RETRY-1', 10)")
    reqs = sim.wait_requests(INSTORE_PATH, count=4, method="PUT")
    wait_status(shop, "RETRY-1", "published")
    statuses = [r["status"] for r in reqs[:4]]
    assert statuses == [503, 503, 429, 204]
    # the attempt after the 429 waited for its Retry-After
    assert reqs[3]["ts"] - reqs[2]["ts"] >= 0.95
    assert shop.scalar("SELECT failures FROM mpqr.requests WHERE kind = 'publish'") == 3


def test_dropped_connection_is_retried(shop, sim):
    sim.fault(method="PUT", path=INSTORE_PATH, drop=True, times=1)
    shop.execute("SELECT mpqr_put_order('SUC001POS001', 'DROP-1', 10)")
    sim.wait_requests(INSTORE_PATH, count=2, method="PUT")
    wait_status(shop, "DROP-1", "published")


def test_400_is_final(shop, sim):
    sim.fault(method="PUT", path=INSTORE_PATH, status=400, times=1,
              body='{"error":"invalid_total_amount","message":"total_amount must be number","status":400}')
    shop.execute("SELECT mpqr_put_order('SUC001POS001', 'BAD-1', 10)")
    wait_status(shop, "BAD-1", "failed")
    err = shop.scalar("SELECT error_body FROM mpqr.orders WHERE external_reference = 'BAD-1'")
    assert err["error"] == "invalid_total_amount"
    assert len(sim.requests(INSTORE_PATH)) == 1


def test_401_pauses_the_account_until_a_new_token(shop, sim):
    shop.execute("SELECT mpqr_set_account('main', access_token => 'APP_USR-revoked')")
    shop.execute("SELECT mpqr_put_order('SUC001POS001', 'PAUSE-1', 10)")
    wait_for(lambda: shop.scalar("SELECT paused_at IS NOT NULL FROM mpqr.accounts WHERE name = 'main'"),
             30, what="the account to be paused")
    assert order_status(shop, "PAUSE-1") == "queued"
    status = shop.status()
    assert "account_paused:main" in status
    assert "401" in status["account_paused:main"]
    assert "APP_USR-revoked" not in shop.log_text()
    # the other account is not paused and still works
    shop.execute("SELECT mpqr_put_order('SUC002POS001', 'OTHER-1', 10)")
    wait_status(shop, "OTHER-1", "published")
    assert order_status(shop, "PAUSE-1") == "queued"
    shop.execute("SELECT mpqr_set_account('main', access_token => %s)", (TOKEN,))
    wait_status(shop, "PAUSE-1", "published")


def test_second_order_supersedes_the_first_instore(shop, sim):
    shop.execute("SELECT mpqr_put_order('SUC001POS001', 'FIRST', 10)")
    wait_status(shop, "FIRST", "published")
    shop.execute("SELECT mpqr_put_order('SUC001POS001', 'SECOND', 20)")
    wait_status(shop, "SECOND", "published")
    row = shop.execute("SELECT status, status_reason FROM mpqr.orders WHERE external_reference = 'FIRST'")[0]
    assert row == ("cancelled", "superseded")
    status, shown = sim.api("GET", SHOW_PATH, TOKEN)
    assert status == 200 and [o["external_reference"] for o in shown] == ["SECOND"]


def test_second_order_supersedes_the_first_orders_api(shop, sim):
    shop.execute("SELECT mpqr_put_order('SUC002POS001', 'OFIRST', 10)")
    wait_status(shop, "OFIRST", "published")
    first_id = shop.scalar("SELECT mp_order_id FROM mpqr.orders WHERE external_reference = 'OFIRST'")
    shop.execute("SELECT mpqr_put_order('SUC002POS001', 'OSECOND', 20)")
    wait_status(shop, "OSECOND", "published")
    row = shop.execute("SELECT status, status_reason FROM mpqr.orders WHERE external_reference = 'OFIRST'")[0]
    assert row == ("cancelled", "superseded")
    cancel = sim.requests(r"^/v1/orders/%s/cancel$" % first_id)
    assert len(cancel) == 1 and cancel[0]["status"] == 200
    posts = sim.requests(ORDERS_PATH)
    assert cancel[0]["seq"] < posts[-1]["seq"]
    assert cancel[0]["headers"]["x-idempotency-key"] != posts[-1]["headers"]["x-idempotency-key"]


def test_queued_order_of_a_paused_account_expires_without_a_call(shop, sim):
    shop.execute("SELECT mpqr_set_account('main', access_token => 'APP_USR-revoked')")
    shop.execute("SELECT mpqr_put_order('SUC001POS001', 'PAUSED-EXP', 10)")
    wait_for(lambda: shop.scalar("SELECT paused_at IS NOT NULL FROM mpqr.accounts WHERE name = 'main'"),
             30, what="the account to be paused")
    # its expiry comes while it waits (the clock is moved by moving the expiry)
    shop.execute("UPDATE mpqr.orders SET expires_at = now() WHERE external_reference = 'PAUSED-EXP'")
    wait_status(shop, "PAUSED-EXP", "expired")
    shop.execute("SELECT mpqr_set_account('main', access_token => %s)", (TOKEN,))
    shop.execute("SELECT mpqr_put_order('SUC001POS002', 'AFTER-EXP', 10)")
    wait_status(shop, "AFTER-EXP", "published")
    sent = [json.loads(r["body"])["external_reference"] for r in sim.requests(r"/orders$") if r["status"] == 204]
    assert "PAUSED-EXP" not in sent


def test_empty_public_url_is_warned_about_once(shop, sim):
    shop.execute("SELECT mpqr_put_order('SUC001POS001', 'WARN-1', 10)")
    shop.execute("SELECT mpqr_put_order('SUC001POS002', 'WARN-2', 10)")
    wait_status(shop, "WARN-2", "published")
    body = json.loads(sim.requests(INSTORE_PATH)[0]["body"])
    assert "notification_url" not in body
    assert shop.log_text().count("mpqr.public_url is empty") == 1


def test_lock_timeout_while_recording_is_retried_not_failed(shop, sim):
    """A user transaction holds the order while its 204 comes back: the record
    times out on the lock, fails as a whole, and is tried again; the request
    is not failed for good."""
    shop.execute("ALTER SYSTEM SET mpqr.worker_lock_timeout = '300ms'")
    shop.reload()
    try:
        # MP takes 3 s to answer, so the lock below is taken long before the 204
        sim.fault(method="PUT", path=INSTORE_PATH, latency_ms=3000, times=1)
        shop.execute("SELECT mpqr_put_order('SUC001POS001', 'LOCKED-1', 10)")
        oid = shop.scalar("SELECT id FROM mpqr.orders WHERE external_reference = 'LOCKED-1'")
        holder = shop.connect(autocommit=False)
        with holder.cursor() as cur:
            cur.execute("SELECT 1 FROM mpqr.orders WHERE id = %s FOR UPDATE", (oid,))
        sim.wait_requests(INSTORE_PATH, method="PUT")
        wait_for(lambda: "lock timeout" in (shop.status().get("sender_last_error") or ""),
                 30, what="the sender's record to time out on the lock")
        assert shop.scalar("SELECT state FROM mpqr.requests WHERE order_id = %s", (oid,)) == "inflight"
        holder.rollback()
        holder.close()
        wait_status(shop, "LOCKED-1", "published")
        assert shop.scalar("SELECT state FROM mpqr.requests WHERE order_id = %s", (oid,)) == "done"
        assert len(sim.requests(INSTORE_PATH)) == 1
    finally:
        shop.execute("ALTER SYSTEM RESET mpqr.worker_lock_timeout")
        shop.reload()
