"""The whole attended flow, for each API generation: publish, scan, pay,
notification, fetch, paid, receipt, NOTIFY; and what goes wrong on the way.

The simulator sends its notifications to the listener of this module's
cluster, whose port is fixed before the cluster starts, so that
mpqr.public_url can name it.
"""
import json
import select
import time
import uuid

import pytest

from conftest import COLLECTOR, SECRET, TOKEN, base_settings
from pgcluster import Cluster, free_port, wait_for

ORD_COLLECTOR = 222333444
ORD_TOKEN = "APP_USR-orders-token"
LOCATION = {"street_number": "1", "street_name": "Calle", "city_name": "Palermo",
            "state_name": "Capital Federal", "latitude": -34.6, "longitude": -58.4, "reference": "x"}


@pytest.fixture(scope="module")
def cluster(sim):
    port = free_port()
    settings = base_settings(sim)
    settings.update({"mpqr.listen_port": port,
                     "mpqr.public_url": "http://127.0.0.1:%d" % port,
                     # the sweep stays out of the way unless a test wants it
                     "mpqr.fast_check_after": "1h"})
    c = Cluster(settings, name="flow").init().start()
    c.listener = "http://127.0.0.1:%d" % port
    yield c
    c.destroy()


@pytest.fixture
def shop(db, sim):
    url = db.listener + "/notifications?account=ord"
    sim.account(user_id=COLLECTOR, token=TOKEN, site_id="MLA")
    sim.account(user_id=ORD_COLLECTOR, token=ORD_TOKEN, site_id="MLA", webhook_secret=SECRET,
                webhook_url=url)
    for uid, store, pos in ((COLLECTOR, "SUC001", "SUC001POS001"), (ORD_COLLECTOR, "SUC002", "SUC002POS001")):
        st = sim.store(user_id=uid, name="Centro", external_id=store, location=LOCATION)
        sim.pos(user_id=uid, name="Caja", fixed_amount=True, store_id=st["id"],
                external_store_id=store, external_id=pos)
    db.execute("SELECT mpqr_add_account('main', %s, %s, NULL, 'MLA', 'instore')", (COLLECTOR, TOKEN))
    db.execute("SELECT mpqr_add_account('ord', %s, %s, %s, 'MLA', 'orders')", (ORD_COLLECTOR, ORD_TOKEN, SECRET))
    db.execute("SELECT mpqr_add_pos('SUC001POS001', 'SUC001', 'Caja 1', register => false)")
    db.execute("SELECT mpqr_add_pos('SUC002POS001', 'SUC002', 'Caja 1', account => 'ord', register => false)")
    return db


def order(db, ref):
    rows = db.execute("SELECT status, paid_amount, mp_order_id, status_reason FROM mpqr.orders "
                      "WHERE external_reference = %s", (ref,))
    return rows[0] if rows else None


def wait_status(db, ref, status, timeout=30):
    return wait_for(lambda: order(db, ref)[0] == status, timeout,
                    what="order %s to become %s" % (ref, status))


def listen(db):
    conn = db.connect()
    conn.cursor().execute("LISTEN mpqr_order")
    return conn


def heard(conn, ref, status, timeout=30):
    """Wait for a NOTIFY about ref with status; return its payload."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn.poll()
        while conn.notifies:
            n = conn.notifies.pop(0)
            payload = json.loads(n.payload)
            if payload.get("external_reference") == ref and payload.get("status") == status:
                return payload
        select.select([conn], [], [], 0.2)
    raise TimeoutError("no NOTIFY of %s becoming %s" % (ref, status))


def put(db, pos, ref, amount, **kw):
    args = ", ".join("%s => %%(%s)s" % (k, k) for k in kw)
    sql = "SELECT mpqr_put_order(%%(pos)s, %%(ref)s, %%(amount)s%s)" % ((", " + args) if args else "")
    return db.scalar(sql, dict(pos=pos, ref=ref, amount=amount, **kw))


def test_instore_seed_flow(shop, sim):
    pos_listener = listen(shop)
    put(shop, "SUC001POS001", "ORDER-1001", 150, items=json.dumps(
        [{"title": "Pizza", "unit_price": 75, "quantity": 2}]))
    wait_status(shop, "ORDER-1001", "published")
    heard(pos_listener, "ORDER-1001", "published")

    # a scan makes no merchant order (API reference §12.5): a first, rejected
    # attempt does; its notification is stored and fetched, and an opened MO
    # changes nothing
    assert sim.scan(user_id=COLLECTOR, external_pos_id="SUC001POS001")["merchant_order_id"] is None
    rejected = sim.pay(user_id=COLLECTOR, external_pos_id="SUC001POS001", status="rejected")
    mo = rejected["merchant_order_id"]
    wait_for(lambda: shop.scalar("SELECT status FROM mpqr.merchant_orders WHERE id = %s", (mo,)) == "opened",
             30, what="the opened merchant order to be fetched")
    assert order(shop, "ORDER-1001")[0] == "published"

    pay = sim.pay(user_id=COLLECTOR, merchant_order_id=mo)
    assert pay["merchant_order_id"] == mo
    payload = heard(pos_listener, "ORDER-1001", "paid")
    assert float(payload["paid_amount"]) == 150
    status, paid, mp_id, _ = order(shop, "ORDER-1001")
    assert (status, float(paid), mp_id) == ("paid", 150.0, str(mo))
    p = shop.execute("SELECT id, status, amount FROM mpqr.payments WHERE order_id = "
                     "(SELECT id FROM mpqr.orders WHERE external_reference = 'ORDER-1001') ORDER BY id")
    assert p == [(str(rejected["payment_id"]), "rejected", 150), (str(pay["payment_id"]), "approved", 150)]
    assert shop.scalar("SELECT external_reference FROM mpqr.payments WHERE id = %s",
                       (str(pay["payment_id"]),)) == "ORDER-1001"
    # the notifications that made it happen were stored and triggered fetches
    n = shop.execute("SELECT topic, resource_id, triggered FROM mpqr.notifications WHERE resource_id = %s",
                     (str(mo),))
    assert len(n) >= 2
    receipt = shop.scalar("SELECT mpqr_receipt('ORDER-1001')")
    assert "RECEIPT" in receipt and "ORDER-1001" in receipt and str(pay["payment_id"]) in receipt
    assert "2 x Pizza" in receipt and "150.00" in receipt
    pos_listener.close()


def test_orders_api_seed_flow(shop, sim):
    pos_listener = listen(shop)
    put(shop, "SUC002POS001", "ORD-2001", 80, title="Menu")
    wait_status(shop, "ORD-2001", "published")
    mp_id = order(shop, "ORD-2001")[2]
    sim.pay(user_id=ORD_COLLECTOR, order_id=mp_id)
    heard(pos_listener, "ORD-2001", "paid")
    # the signed webhook was verified and stored
    sig = shop.scalar("SELECT signature FROM mpqr.notifications WHERE resource_id = %s LIMIT 1", (mp_id,))
    assert sig == "valid"
    receipt = shop.scalar("SELECT mpqr_receipt('ORD-2001')")
    assert "RECEIPT" in receipt and mp_id in receipt
    pos_listener.close()


def test_notification_while_the_previous_fetch_is_in_flight(shop, sim):
    put(shop, "SUC001POS001", "INFLIGHT-1", 40)
    wait_status(shop, "INFLIGHT-1", "published")
    # the fetch triggered by a first, rejected attempt is slow; the payment's
    # notification arrives while it is still in flight, and must get a fetch
    # of its own
    sim.fault(method="GET", path=r"^/merchant_orders/\d+$", latency_ms=2500, process=True, times=1)
    mo = sim.pay(user_id=COLLECTOR, external_pos_id="SUC001POS001", status="rejected")["merchant_order_id"]
    wait_for(lambda: shop.scalar("SELECT count(*) FROM mpqr.requests WHERE kind = 'fetch_merchant_order' "
                                 "AND subject = %s AND state = 'inflight'", (str(mo),)) == 1,
             30, what="the first fetch to be in flight")
    sim.pay(user_id=COLLECTOR, merchant_order_id=mo)
    wait_status(shop, "INFLIGHT-1", "paid")
    # the slow first fetch read the merchant order while it was opened; when
    # its answer lands after the second one, it must not move anything back
    wait_for(lambda: shop.scalar("SELECT count(*) FROM mpqr.requests WHERE kind = 'fetch_merchant_order' "
                                 "AND subject = %s AND state <> 'done'", (str(mo),)) == 0,
             30, what="every fetch of the merchant order to finish")
    fetches = shop.scalar("SELECT count(*) FROM mpqr.requests WHERE kind = 'fetch_merchant_order' "
                          "AND subject = %s", (str(mo),))
    assert fetches >= 2
    assert order(shop, "INFLIGHT-1")[0] == "paid"
    assert shop.scalar("SELECT status FROM mpqr.merchant_orders WHERE id = %s", (mo,)) == "closed"


def test_webhook_body_is_not_trusted(shop, sim):
    """A signed webhook says processed; the API still says created: nothing changes."""
    import http.client
    put(shop, "SUC002POS001", "LIAR-1", 30)
    wait_status(shop, "LIAR-1", "published")
    mp_id = order(shop, "LIAR-1")[2]
    rid, ts = str(uuid.uuid4()), str(int(time.time() * 1000))
    import hashlib
    import hmac
    v1 = hmac.new(SECRET.encode(), ("id:%s;request-id:%s;ts:%s;" % (mp_id, rid, ts)).encode(),
                  hashlib.sha256).hexdigest()
    body = {"action": "order.processed", "api_version": "v1", "type": "order", "user_id": str(ORD_COLLECTOR),
            "data": {"id": mp_id, "status": "processed", "status_detail": "accredited",
                     "total_amount": "30.00", "total_paid_amount": "30.00"}}
    port = int(shop.listener.rsplit(":", 1)[1])
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("POST", "/notifications?account=ord&data.id=%s&type=order" % mp_id, body=json.dumps(body),
              headers={"Content-Type": "application/json", "x-request-id": rid,
                       "x-signature": "ts=%s,v1=%s" % (ts, v1)})
    assert c.getresponse().status == 200
    c.close()
    # the fetch it triggered is answered by the API, which says created
    fetch = shop.scalar("SELECT fetch_request FROM mpqr.notifications WHERE request_id = %s", (rid,))
    assert fetch is not None
    wait_for(lambda: shop.scalar("SELECT state FROM mpqr.requests WHERE id = %s", (fetch,)) == "done",
             30, what="the fetch of the order")
    assert json.loads(shop.scalar("SELECT response FROM mpqr.requests WHERE id = %s", (fetch,)))["status"] == "created"
    assert order(shop, "LIAR-1")[0] == "published"
    assert float(order(shop, "LIAR-1")[1]) == 0


def test_partial_payment_leaves_it_published(shop, sim):
    put(shop, "SUC001POS001", "PART-1", 100)
    wait_status(shop, "PART-1", "published")
    mo = sim.pay(user_id=COLLECTOR, external_pos_id="SUC001POS001", amount=40)["merchant_order_id"]
    wait_for(lambda: float(order(shop, "PART-1")[1]) == 40, 30, what="the partial amount to show")
    assert order(shop, "PART-1")[0] == "published"
    sim.pay(user_id=COLLECTOR, merchant_order_id=mo, amount=60)
    wait_status(shop, "PART-1", "paid")
    assert float(order(shop, "PART-1")[1]) == 100


def test_duplicate_notifications_are_acknowledged_and_refetched(shop, sim):
    put(shop, "SUC001POS001", "DUP-1", 25)
    wait_status(shop, "DUP-1", "published")
    mo = sim.pay(user_id=COLLECTOR, external_pos_id="SUC001POS001")["merchant_order_id"]
    wait_status(shop, "DUP-1", "paid")
    before = shop.scalar("SELECT count(*) FROM mpqr.notifications")
    # MP delivers the same notifications again: all answered 200 and stored
    for d in sim.deliveries():
        if d["meta"].get("resource_id") == str(mo) and d["attempt"] == 0:
            sim.call("POST", "/_sim/notify", {"delivery_id": d["delivery_id"]})
    wait_for(lambda: all(d["status"] == 200 for d in sim.deliveries()), 30, what="every delivery answered 200")
    assert shop.scalar("SELECT count(*) FROM mpqr.notifications") > before
    assert order(shop, "DUP-1")[0] == "paid"


def test_unknown_merchant_order_changes_nothing(shop, sim):
    put(shop, "SUC001POS001", "KNOWN-1", 25)
    wait_status(shop, "KNOWN-1", "published")
    import http.client
    port = int(shop.listener.rsplit(":", 1)[1])
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("POST", "/notifications?account=main&topic=merchant_order&id=99999999999")
    assert c.getresponse().status == 200
    c.close()
    wait_for(lambda: shop.scalar("SELECT state FROM mpqr.requests WHERE kind = 'fetch_merchant_order' "
                                 "AND subject = '99999999999'") in ("done", "failed"),
             30, what="the fetch of the unknown merchant order")
    # MP answers 401 invalid_caller_id for a merchant order that is not the
    # caller's, or does not exist (API reference §12.1); a stray notification
    # must not pause the account (design §9)
    assert shop.scalar("SELECT http_status FROM mpqr.requests WHERE subject = '99999999999'") == 401
    assert order(shop, "KNOWN-1")[0] == "published"
    assert shop.scalar("SELECT paused_at FROM mpqr.accounts WHERE name = 'main'") is None
    put(shop, "SUC001POS001", "KNOWN-2", 26)
    wait_status(shop, "KNOWN-2", "published")
    assert shop.scalar("SELECT count(*) FROM mpqr.merchant_orders") == 0


def test_lost_notification_recovered_by_reconcile(shop, sim):
    sim.account(user_id=COLLECTOR, token=TOKEN, site_id="MLA", notify=[])
    put(shop, "SUC001POS001", "LOST-1", 60)
    wait_status(shop, "LOST-1", "published")
    sim.pay(user_id=COLLECTOR, external_pos_id="SUC001POS001")
    assert order(shop, "LOST-1")[0] == "published"
    assert shop.scalar("SELECT mpqr_reconcile()") == 1
    wait_status(shop, "LOST-1", "paid")


def test_expiry_then_a_late_payment_is_flagged(shop, sim):
    put(shop, "SUC001POS001", "LATE-1", 70)
    wait_status(shop, "LATE-1", "published")
    # the customer's first attempt is rejected: that makes the merchant order
    mo = sim.pay(user_id=COLLECTOR, external_pos_id="SUC001POS001", status="rejected")["merchant_order_id"]
    # the order reaches its expiry (the clock is moved by moving the expiry)
    shop.execute("UPDATE mpqr.orders SET expires_at = now() WHERE external_reference = 'LATE-1'")
    wait_status(shop, "LATE-1", "expired")
    status, shown = sim.api("GET", "/instore/qr/seller/collectors/%d/pos/SUC001POS001/orders" % COLLECTOR, TOKEN)
    assert status == 404, "the expired order must be removed from the POS"
    # the customer was already on the payment screen
    sim.pay(user_id=COLLECTOR, merchant_order_id=mo)
    wait_status(shop, "LATE-1", "paid")
    assert order(shop, "LATE-1")[3] == "late_payment"
    kinds = [r[0] for r in shop.execute("SELECT kind FROM mpqr.anomalies_open WHERE external_reference = 'LATE-1'")]
    assert kinds == ["late_payment"]


def test_the_sweep_finds_a_lost_payment_by_itself(shop, sim):
    sim.account(user_id=COLLECTOR, token=TOKEN, site_id="MLA", notify=[])
    put(shop, "SUC001POS001", "SWEPT-1", 35)
    wait_status(shop, "SWEPT-1", "published")
    sim.pay(user_id=COLLECTOR, external_pos_id="SUC001POS001")
    shop.execute("ALTER SYSTEM SET mpqr.fast_check_after = '1s'")
    shop.execute("ALTER SYSTEM SET mpqr.fast_check_interval = '1s'")
    shop.reload()
    try:
        wait_status(shop, "SWEPT-1", "paid", timeout=60)
        assert shop.scalar("SELECT count(*) FROM mpqr.notifications") == 0
        assert shop.scalar("SELECT count(*) FROM mpqr.requests WHERE kind = 'search_payments'") >= 1
    finally:
        shop.execute("ALTER SYSTEM RESET mpqr.fast_check_after")
        shop.execute("ALTER SYSTEM RESET mpqr.fast_check_interval")
        shop.reload()


def test_orders_api_discount_expiry_and_lost_notification(shop, sim):
    # paid below the total (a discount): paid, with the shortfall flagged
    put(shop, "SUC002POS001", "ODISC-1", 50)
    wait_status(shop, "ODISC-1", "published")
    mp_id = order(shop, "ODISC-1")[2]
    sim.pay(user_id=ORD_COLLECTOR, order_id=mp_id, amount=47.28)
    wait_status(shop, "ODISC-1", "paid")
    assert float(order(shop, "ODISC-1")[1]) == 47.28
    kinds = [r[0] for r in shop.execute("SELECT kind FROM mpqr.anomalies_open WHERE external_reference = 'ODISC-1'")]
    assert kinds == ["shortfall"]

    # MP expires an order: order.expired is notified, fetched, applied
    put(shop, "SUC002POS001", "OEXP-1", 20)
    wait_status(shop, "OEXP-1", "published")
    sim.expire(order_id=order(shop, "OEXP-1")[2])
    wait_status(shop, "OEXP-1", "expired")

    # a payment whose notification is lost is found by mpqr_reconcile()
    sim.account(user_id=ORD_COLLECTOR, token=ORD_TOKEN, site_id="MLA", webhook_secret=SECRET,
                webhook_url=shop.listener + "/notifications?account=ord", notify=[])
    put(shop, "SUC002POS001", "OLOST-1", 30)
    wait_status(shop, "OLOST-1", "published")
    sim.pay(user_id=ORD_COLLECTOR, order_id=order(shop, "OLOST-1")[2])
    assert order(shop, "OLOST-1")[0] == "published"
    assert shop.scalar("SELECT mpqr_reconcile()") >= 1
    wait_status(shop, "OLOST-1", "paid")
