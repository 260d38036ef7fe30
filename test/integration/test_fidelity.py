"""mpqr follows design section 9, "Mercado Pago as it is", against the
simulator's model of API reference section 12: one test per item.

Like test_flow.py, the module's cluster has a listener on a port fixed
before it starts, so that mpqr.public_url names it and the simulator's
notifications reach it.  The sweep stays out of the way (fast_check_after
1h), so that what makes an order move is the item under test.
"""
import datetime
import http.client
import json
import re

import psycopg2
import pytest

from conftest import COLLECTOR, SECRET, TOKEN, base_settings
from pgcluster import Cluster, free_port, wait_for
from test_flow import LOCATION, ORD_COLLECTOR, ORD_TOKEN, heard, listen, order, put, wait_status

FOREIGN = 777888999
FOREIGN_TOKEN = "APP_USR-foreign-token"


@pytest.fixture(scope="module")
def cluster(sim):
    port = free_port()
    settings = base_settings(sim)
    settings.update({"mpqr.listen_port": port,
                     "mpqr.public_url": "http://127.0.0.1:%d" % port,
                     "mpqr.fast_check_after": "1h"})
    c = Cluster(settings, name="fidelity").init().start()
    c.listener = "http://127.0.0.1:%d" % port
    yield c
    c.destroy()


def sim_pos(sim, uid, store, pos):
    st = sim.store(user_id=uid, name="Centro", external_id=store, location=LOCATION)
    return sim.pos(user_id=uid, name="Caja", fixed_amount=True, store_id=st["id"],
                   external_store_id=store, external_id=pos)


@pytest.fixture
def shop(db, sim):
    """instore account main (SUC001POS001) and Orders API account ord
    (SUC002POS001, SUC002POS002), both in the simulator and in mpqr."""
    sim.account(user_id=COLLECTOR, token=TOKEN, site_id="MLA")
    sim.account(user_id=ORD_COLLECTOR, token=ORD_TOKEN, site_id="MLA", webhook_secret=SECRET,
                webhook_url=db.listener + "/notifications?account=ord")
    sim_pos(sim, COLLECTOR, "SUC001", "SUC001POS001")
    sim_pos(sim, ORD_COLLECTOR, "SUC002", "SUC002POS001")
    sim.pos(user_id=ORD_COLLECTOR, name="Caja 2", fixed_amount=True, external_store_id="SUC002",
            external_id="SUC002POS002")
    db.execute("SELECT mpqr_add_account('main', %s, %s, NULL, 'MLA', 'instore')", (COLLECTOR, TOKEN))
    db.execute("SELECT mpqr_add_account('ord', %s, %s, %s, 'MLA', 'orders')", (ORD_COLLECTOR, ORD_TOKEN, SECRET))
    db.execute("SELECT mpqr_add_pos('SUC001POS001', 'SUC001', 'Caja 1', register => false)")
    db.execute("SELECT mpqr_add_pos('SUC002POS001', 'SUC002', 'Caja 1', account => 'ord', register => false)")
    db.execute("SELECT mpqr_add_pos('SUC002POS002', 'SUC002', 'Caja 2', account => 'ord', register => false)")
    return db


def ipn(db, account, topic, rid):
    """Deliver an IPN to the listener, as anyone on the internet can."""
    port = int(db.listener.rsplit(":", 1)[1])
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("POST", "/notifications?account=%s&topic=%s&id=%s" % (account, topic, rid))
    status = c.getresponse().status
    c.close()
    return status


def request_done(db, kind, subject, timeout=30):
    """Wait for mpqr's request of kind about subject to finish; return (state, http_status)."""
    sql = ("SELECT state, http_status FROM mpqr.requests WHERE kind = %s AND subject = %s "
           "AND state IN ('done', 'failed') ORDER BY id DESC LIMIT 1")
    return wait_for(lambda: (db.execute(sql, (kind, str(subject))) or [None])[0], timeout,
                    what="the %s of %s to finish" % (kind, subject))


def sqlstate(db, sql, params=None):
    """The SQLSTATE that sql raises (None if it does not)."""
    try:
        db.execute(sql, params)
    except psycopg2.Error as e:
        return e.pgcode
    return None


def paused(db, account):
    return db.execute("SELECT paused_at, pause_reason FROM mpqr.accounts WHERE name = %s", (account,))[0]


def paid_order(db, sim, ref, amount, pos="SUC001POS001"):
    """Put an instore order, have it paid; return the payment's id."""
    put(db, pos, ref, amount)
    wait_status(db, ref, "published")
    pay = sim.pay(user_id=COLLECTOR, external_pos_id=pos)
    wait_status(db, ref, "paid")
    return pay["payment_id"]


def set_conf(db, **settings):
    for k, v in settings.items():
        if v is None:
            db.execute("ALTER SYSTEM RESET mpqr.%s" % k)
        else:
            db.execute("ALTER SYSTEM SET mpqr.%s = %%s" % k, (v,))
    db.reload()
    # a new connection sees the reloaded value once the postmaster has it
    for k, v in settings.items():
        if v is not None:
            wait_for(lambda: db.scalar("SELECT current_setting('mpqr.%s')" % k) is not None, 10,
                     what="the setting to load")


# -- 401/403 on a fetch: not yours, never a pause ---------------------------

def test_foreign_fetches_do_not_pause_the_account(shop, sim):
    # another collector's payment and merchant order, made at its own POS
    sim.account(user_id=FOREIGN, token=FOREIGN_TOKEN, site_id="MLA", notify=[])
    sim_pos(sim, FOREIGN, "FOR001", "FOR001POS001")
    status, _ = sim.api("PUT", "/instore/qr/seller/collectors/%d/pos/FOR001POS001/orders" % FOREIGN,
                        FOREIGN_TOKEN, {"external_reference": "THEIRS-1", "title": "x", "description": "x",
                                        "total_amount": 10,
                                        "items": [{"title": "x", "unit_price": 10, "quantity": 1,
                                                   "unit_measure": "unit", "total_amount": 10}]})
    assert status in (200, 201, 204)
    theirs = sim.pay(user_id=FOREIGN, external_pos_id="FOR001POS001")

    assert ipn(shop, "main", "payment", theirs["payment_id"]) == 200
    assert ipn(shop, "main", "merchant_order", theirs["merchant_order_id"]) == 200
    assert request_done(shop, "fetch_payment", theirs["payment_id"]) == ("failed", 403)
    assert request_done(shop, "fetch_merchant_order", theirs["merchant_order_id"]) == ("failed", 401)
    # the token itself is judged through GET /users/me, which works
    assert request_done(shop, "check_token", "token") == ("done", 200)
    assert sim.wait_requests("^/users/me$", method="GET")
    assert paused(shop, "main") == (None, None)
    put(shop, "SUC001POS001", "MINE-1", 25)
    wait_status(shop, "MINE-1", "published")


def test_a_refused_token_is_judged_by_users_me(shop, sim):
    # MP no longer takes mpqr's token: the fetch's 401 alone pauses nothing,
    # the probe of the token does
    sim.account(user_id=COLLECTOR, token="APP_USR-another-token", site_id="MLA")
    assert ipn(shop, "main", "merchant_order", 31337) == 200
    assert request_done(shop, "fetch_merchant_order", 31337) == ("failed", 401)
    assert request_done(shop, "check_token", "token") == ("done", 401)
    at, reason = paused(shop, "main")
    assert at is not None and "check_token" in reason, reason
    assert [r["status"] for r in sim.requests("^/users/me$")] == [401]


# -- signature_policy ---------------------------------------------------------

@pytest.mark.parametrize("signature,stored", [("invalid", "invalid"), ("none", "unsigned")])
def test_unverifiable_qr_webhook_still_pays_under_record(shop, sim, signature, stored):
    assert shop.scalar("SELECT current_setting('mpqr.signature_policy')") == "record"
    sim.account(user_id=ORD_COLLECTOR, token=ORD_TOKEN, site_id="MLA", webhook_secret=SECRET,
                webhook_url=shop.listener + "/notifications?account=ord", signature=signature)
    put(shop, "SUC002POS001", "SIG-1", 30)
    wait_status(shop, "SIG-1", "published")
    mp_id = order(shop, "SIG-1")[2]
    sim.pay(user_id=ORD_COLLECTOR, order_id=mp_id)
    wait_status(shop, "SIG-1", "paid")
    sigs = {r[0] for r in shop.execute("SELECT signature FROM mpqr.notifications WHERE resource_id = %s", (mp_id,))}
    assert sigs == {stored}


def test_unsigned_webhook_does_not_bypass_enforce(shop, sim):
    sim.account(user_id=ORD_COLLECTOR, token=ORD_TOKEN, site_id="MLA", webhook_secret=SECRET,
                webhook_url=shop.listener + "/notifications?account=ord", signature="none")
    set_conf(shop, signature_policy="enforce")
    try:
        wait_for(lambda: shop.scalar("SELECT current_setting('mpqr.signature_policy')") == "enforce", 10,
                 what="enforce to be set")
        put(shop, "SUC002POS001", "ENF-1", 30)
        wait_status(shop, "ENF-1", "published")
        mp_id = order(shop, "ENF-1")[2]
        sim.pay(user_id=ORD_COLLECTOR, order_id=mp_id)
        first = wait_for(lambda: [d for d in sim.deliveries() if d["meta"].get("resource_id") == mp_id
                                  and d["status"] is not None] or None, 30, what="a delivery to be answered")
        assert all("x-signature" not in d["headers"] for d in first)
        assert {d["status"] for d in first} == {401}
        assert shop.scalar("SELECT count(*) FROM mpqr.notifications WHERE resource_id = %s", (mp_id,)) == 0
        assert order(shop, "ENF-1")[0] == "published"
    finally:
        set_conf(shop, signature_policy=None)


# -- a payment decides on its own ----------------------------------------------

def test_approved_payment_counts_while_the_merchant_order_lags(shop, sim):
    sim.call("POST", "/_sim/config", {"mo_payment_lag": 600})
    put(shop, "SUC001POS001", "LAG-1", 100)
    wait_status(shop, "LAG-1", "published")
    pay = sim.pay(user_id=COLLECTOR, external_pos_id="SUC001POS001")
    wait_status(shop, "LAG-1", "paid")
    assert float(order(shop, "LAG-1")[1]) == 100
    # the merchant order did not show the payment yet
    mo = [m for m in sim.state()["merchant_orders"] if m["id"] == pay["merchant_order_id"]][0]
    assert mo["status"] == "opened"
    assert shop.scalar("SELECT count(*) FROM mpqr.merchant_orders WHERE status = 'closed'") == 0

    # the amount guard holds: a payment of another amount does not pay it
    put(shop, "SUC001POS001", "LAG-2", 100)
    wait_status(shop, "LAG-2", "published")
    short = sim.pay(user_id=COLLECTOR, external_pos_id="SUC001POS001", amount=60)
    wait_for(lambda: shop.scalar("SELECT status FROM mpqr.payments WHERE id = %s",
                                 (str(short["payment_id"]),)) == "approved", 30, what="the payment to be fetched")
    status, paid = order(shop, "LAG-2")[:2]
    assert (status, float(paid)) == ("published", 60.0)


# -- Pix refunds in process; transient 409/422 ------------------------------

def test_pix_refund_in_process_keeps_its_amount_reserved(shop, sim):
    sim.account(user_id=COLLECTOR, token=TOKEN, site_id="MLA", payment_method_id="pix")
    pid = paid_order(shop, sim, "PIX-1", 100)
    assert shop.scalar("SELECT mpqr_refund('PIX-1', 40)") == 40
    wait_for(lambda: shop.scalar("SELECT status FROM mpqr.refunds") == "in_process", 30,
             what="the refund to be in process")
    sent = [r for r in sim.requests("^/v1/payments/%s/refunds$" % pid) if r["method"] == "POST"]
    assert sent and all(r["headers"].get("x-render-in-process-refunds") == "true" for r in sent)
    # 60 remains: more is refused, at once
    assert sqlstate(shop, "SELECT mpqr_refund('PIX-1', 70)") == "22023"
    assert shop.scalar("SELECT count(*) FROM mpqr.refunds") == 1
    assert float(shop.scalar("SELECT refunded_amount FROM mpqr.orders WHERE external_reference = 'PIX-1'")) == 0
    # the bank pays it out later; mpqr's re-check sees it
    sim.call("POST", "/_sim/complete_refunds", {"payment_id": pid, "status": "approved"})
    wait_for(lambda: shop.scalar("SELECT status FROM mpqr.refunds") == "approved", 30,
             what="the refund to be approved")
    wait_for(lambda: float(shop.scalar("SELECT refunded_amount FROM mpqr.orders "
                                       "WHERE external_reference = 'PIX-1'")) == 40, 30,
             what="the refunded amount to show")
    assert shop.scalar("SELECT mpqr_refund('PIX-1', 60)") == 60


def test_transient_409_and_422_on_refund_are_retried(shop, sim):
    put(shop, "SUC002POS001", "TRANS-1", 50)
    wait_status(shop, "TRANS-1", "published")
    mp_id = order(shop, "TRANS-1")[2]
    sim.pay(user_id=ORD_COLLECTOR, order_id=mp_id)
    wait_status(shop, "TRANS-1", "paid")
    path = "^/v1/orders/%s/refund$" % mp_id
    sim.fault(method="POST", path=path, code="processor_communication_error", times=1)
    sim.fault(method="POST", path=path, code="unprocessable_entity", times=1)
    shop.execute("SELECT mpqr_refund('TRANS-1')")
    wait_for(lambda: shop.scalar("SELECT status FROM mpqr.refunds") in ("processing", "processed"), 30,
             what="the refund to be accepted")
    assert [r["status"] for r in sim.requests(path) if r["method"] == "POST"][:3] == [409, 422, 201]
    sim.call("POST", "/_sim/complete_refunds", {"order_id": mp_id})
    wait_status(shop, "TRANS-1", "refunded")


# -- chargebacks ------------------------------------------------------------------

def test_chargeback_opens_an_anomaly(shop, sim):
    pid = paid_order(shop, sim, "CB-1", 45)
    cb = sim.call("POST", "/_sim/chargeback", {"payment_id": pid, "status": "charged_back"})
    wait_for(lambda: shop.execute("SELECT kind FROM mpqr.anomalies_open WHERE external_reference = 'CB-1'")
             == [("chargeback",)], 30, what="the chargeback anomaly")
    assert request_done(shop, "fetch_chargeback", cb["chargeback_id"]) == ("done", 200)


# -- expiry within MP's bounds -------------------------------------------------

def test_expiry_within_mercado_pagos_bounds(shop, sim):
    assert shop.scalar("SELECT current_setting('mpqr.default_expires_in')") == "10min"
    put(shop, "SUC001POS001", "EXP-1", 10)
    assert shop.scalar("SELECT expires_in FROM mpqr.orders WHERE external_reference = 'EXP-1'") == \
        datetime.timedelta(minutes=10)
    for pos, ref, ttl, mode in (("SUC001POS001", "EXP-2", "29 seconds", "static"),
                                ("SUC001POS001", "EXP-3", "11 minutes", "static"),
                                ("SUC002POS001", "EXP-4", "11 minutes", "static"),
                                ("SUC002POS001", "EXP-5", "29 seconds", "dynamic"),
                                ("SUC002POS001", "EXP-6", "3601 hours", "hybrid")):
        assert sqlstate(shop, "SELECT mpqr_put_order(%s, %s, 10, expires_in => %s, mode => %s)",
                        (pos, ref, ttl, mode)) == "22023", (ref, ttl, mode)
    assert shop.scalar("SELECT count(*) FROM mpqr.orders") == 1
    # a dynamic QR may live longer
    put(shop, "SUC002POS002", "EXP-7", 10, expires_in="2 hours", mode="dynamic")
    assert shop.scalar("SELECT expires_in FROM mpqr.orders WHERE external_reference = 'EXP-7'") == \
        datetime.timedelta(hours=2)
    # a longer default is never believed for a static QR
    set_conf(shop, default_expires_in="1h")
    try:
        wait_for(lambda: shop.scalar("SELECT current_setting('mpqr.default_expires_in')") == "1h", 10,
                 what="the default to be 1h")
        put(shop, "SUC001POS001", "EXP-8", 10)
        assert shop.scalar("SELECT expires_in FROM mpqr.orders WHERE external_reference = 'EXP-8'") == \
            datetime.timedelta(minutes=10)
    finally:
        set_conf(shop, default_expires_in=None)


# -- dynamic and hybrid QR ---------------------------------------------------------

@pytest.mark.parametrize("mode", ["dynamic", "hybrid"])
def test_dynamic_and_hybrid_keep_qr_data(shop, sim, mode):
    conn = listen(shop)
    try:
        put(shop, "SUC002POS002", "QR-1", 12.5, mode=mode)
        payload = heard(conn, "QR-1", "published")
    finally:
        conn.close()
    mp_id = order(shop, "QR-1")[2]
    status, mp = sim.api("GET", "/v1/orders/%s" % mp_id, ORD_TOKEN)
    assert status == 200
    qr = mp["type_response"]["qr_data"]
    assert qr.startswith("000201")
    assert payload["qr_data"] == qr and payload["mode"] == mode
    assert shop.scalar("SELECT qr_data FROM mpqr.orders WHERE external_reference = 'QR-1'") == qr
    assert json.loads([r for r in sim.requests("^/v1/orders$") if r["method"] == "POST"][0]["body"])["config"]["qr"]["mode"] == mode


# -- new accounts default to the Orders API --------------------------------------

def test_new_accounts_default_to_the_orders_api(shop, sim):
    uid, token = 444555666, "APP_USR-new-token"
    sim.account(user_id=uid, token=token, site_id="MLA")
    sim_pos(sim, uid, "NEW001", "NEW001POS001")
    shop.execute("SELECT mpqr_add_account('new', %s, %s)", (uid, token))
    assert shop.scalar("SELECT api FROM mpqr.accounts WHERE name = 'new'") == "orders"
    shop.execute("SELECT mpqr_add_pos('NEW001POS001', 'NEW001', 'Caja', account => 'new', register => false)")
    put(shop, "NEW001POS001", "NEW-1", 20)
    wait_status(shop, "NEW-1", "published")
    posts = [r for r in sim.requests("^/v1/orders$") if r["method"] == "POST"]
    assert len(posts) == 1 and '"NEW-1"' in posts[0]["body"]
    assert not [r for r in sim.requests("^/instore/") if r["method"] == "PUT"]


# -- errors and dates as MP sends them ------------------------------------------

def test_delete_on_a_pos_mp_does_not_know_is_nothing_to_remove(shop, sim):
    put(shop, "SUC001POS001", "GONE-1", 15)
    wait_status(shop, "GONE-1", "published")
    # the POS still shows the order when mpqr looks, and is deleted in MP's
    # app before the DELETE: MP answers as for a POS it does not know (§12.6)
    path = "^/instore/qr/seller/collectors/%d/pos/SUC001POS001/orders$" % COLLECTOR
    sim.fault(method="DELETE", path=path, status=400, code="pos_obtainment_by_external_id_error", times=1)
    shop.execute("SELECT mpqr_cancel_order('GONE-1')")
    wait_status(shop, "GONE-1", "cancelled")
    deletes = [r for r in sim.requests(path) if r["method"] == "DELETE"]
    assert [r["status"] for r in deletes] == [400]
    assert order(shop, "GONE-1")[3] == "cancelled"
    # and then mpqr looked for payments, found none, and closed it
    assert sim.requests("^/v1/payments/search$")
    assert request_done(shop, "cancel", "SUC001POS001") == ("done", 200)


FORMS = {"offset": r"[0-9T:-]{19}\.[0-9]{3}[+-][0-9]{2}:[0-9]{2}",
         "z": r"[0-9T:-]{19}\.[0-9]{3}Z",
         "micro": r"[0-9T:-]{19}\.[0-9]{6}[+-][0-9]{2}:[0-9]{2}"}


@pytest.mark.parametrize("style", sorted(FORMS))
def test_dates_in_mercado_pagos_formats_are_read(shop, sim, style):
    sim.account(user_id=COLLECTOR, token=TOKEN, site_id="MLA", date_format=style)
    pid = paid_order(shop, sim, "DATE-1", 33)
    sent = sim.api("GET", "/v1/payments/%s" % pid, TOKEN)[1]["date_approved"]
    assert re.fullmatch(FORMS[style], sent), (style, sent)
    approved = shop.scalar("SELECT approved_at FROM mpqr.payments WHERE id = %s", (str(pid),))
    assert approved is not None
    assert approved == shop.scalar("SELECT %s::timestamptz", (sent,)), (style, sent)
    assert abs((approved - shop.scalar("SELECT now()")).total_seconds()) < 120


def test_a_malformed_date_does_not_stop_a_payment(shop, sim):
    sim.account(user_id=COLLECTOR, token=TOKEN, site_id="MLA", date_format="malformed")
    pid = paid_order(shop, sim, "DATE-2", 34)
    assert shop.scalar("SELECT status FROM mpqr.payments WHERE id = %s", (str(pid),)) == "approved"


def test_unsupported_properties_is_final_and_kept(shop, sim):
    sim.fault(method="POST", path="^/v1/orders$", status=400, code="unsupported_properties", times=1)
    put(shop, "SUC002POS001", "UNSUP-1", 20)
    wait_status(shop, "UNSUP-1", "failed")
    error, body = shop.execute("SELECT error, error_body FROM mpqr.orders WHERE external_reference = 'UNSUP-1'")[0]
    assert "unsupported_properties" in (error or "") + json.dumps(body)
    assert len([r for r in sim.requests("^/v1/orders$") if r["method"] == "POST"]) == 1
