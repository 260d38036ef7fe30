"""Self-test of the Mercado Pago simulator.

    /usr/bin/python3 -m pytest -q test/mpsim

Starts mpsim over TLS with certificates from make_certs.sh, plus a small HTTP
receiver for notifications, and drives both through the API and /_sim/.
Conditions are polled with timeouts; nothing sleeps for a fixed time.
"""

import hashlib
import hmac
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
UID = 123456789
TOKEN = "APP_USR-test-token"
SECRET = "s3cret"
AUTH = {"Authorization": "Bearer " + TOKEN}


def wait_for(cond, timeout=5.0, what="condition"):
    deadline = time.time() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.time() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.02)


class Receiver:
    """Records notifications; answers 500 to the first `fail` requests to a
    path ending in /flaky (so that late deliveries of other tests cannot use
    them up)."""

    def __init__(self):
        self.items = []
        self.fail = 0
        self.lock = threading.Lock()
        rec = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n).decode()
                parts = urlsplit(self.path)
                with rec.lock:
                    flaky = parts.path.endswith("/flaky")
                    status = 500 if flaky and rec.fail > 0 else 200
                    if flaky:
                        rec.fail = max(0, rec.fail - 1)
                    rec.items.append({"path": parts.path, "query": parts.query,
                                      "q": {k: v[0] for k, v in parse_qs(parts.query).items()},
                                      "headers": {k.lower(): v for k, v in self.headers.items()},
                                      "body": body, "status": status})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d/notifications" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def find(self, **q):
        with self.lock:
            return [i for i in self.items if all(i["q"].get(k) == v for k, v in q.items())]

    def bodies(self, **match):
        with self.lock:
            out = []
            for i in self.items:
                try:
                    b = json.loads(i["body"])
                except ValueError:
                    continue
                if all(b.get(k) == v for k, v in match.items()):
                    out.append((i, b))
            return out


class Sim:
    def __init__(self, tmp):
        self.tmp = tmp
        subprocess.run([os.path.join(HERE, "make_certs.sh"), tmp], check=True)
        self.cafile = os.path.join(tmp, "ca.pem")
        ready = os.path.join(tmp, "port")
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", os.path.join(HERE, "mpsim.py"), "--port", "0",
             "--cert", os.path.join(tmp, "server.pem"), "--key", os.path.join(tmp, "server.key"),
             "--ready-file", ready, "--retry-delays", "0.1,0.1,0.1"])
        wait_for(lambda: os.path.exists(ready), 10, "ready file")
        self.port = int(open(ready).read())
        self.ctx = ssl.create_default_context(cafile=self.cafile)

    def conn(self):
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=10)

    def request(self, method, path, body=None, headers=None, conn=None):
        c = conn or self.conn()
        data = None
        if body is not None:
            data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        raw = r.read()
        if conn is None:
            c.close()
        try:
            js = json.loads(raw) if raw else None
        except ValueError:
            js = raw
        return r.status, {k.lower(): v for k, v in r.getheaders()}, js

    def api(self, method, path, body=None, headers=None, **kw):
        h = dict(AUTH)
        h.update(headers or {})
        return self.request(method, path, body, h, **kw)

    def ctl(self, path, body=None, method="POST"):
        status, _, js = self.request(method, "/_sim/" + path, body if body is not None else {})
        assert status < 300, (path, status, js)
        return js

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    s = Sim(str(tmp_path_factory.mktemp("mpsim")))
    yield s
    s.stop()
    assert s.proc.returncode == 0


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture
def env(sim, receiver):
    """A clean simulator with one account, one store and one POS."""
    sim.ctl("reset")
    # deliveries of the previous test still in flight land before the clear
    wait_for(lambda: sim.ctl("health", method="GET")["pending"] == 0, what="quiet notifier")
    receiver.items.clear()
    receiver.fail = 0
    sim.ctl("accounts", {"user_id": UID, "token": TOKEN, "site_id": "MLA",
                         "webhook_secret": SECRET, "webhook_url": receiver.url})
    store = sim.ctl("stores", {"user_id": UID, "name": "Centro", "external_id": "SUC001",
                               "location": STORE_LOC})
    pos = sim.ctl("pos", {"user_id": UID, "name": "Caja 1", "fixed_amount": True,
                          "store_id": int(store["id"]), "external_store_id": "SUC001",
                          "external_id": "SUC001POS001"})
    return sim, receiver, store, pos


STORE_LOC = {"street_number": "3039", "street_name": "Caseros", "city_name": "Belgrano",
             "state_name": "Capital Federal", "latitude": -32.8897322, "longitude": -68.8443222,
             "reference": "Near the park"}
ORDERS_PATH = "/instore/qr/seller/collectors/%d/stores/SUC001/pos/SUC001POS001/orders" % UID
SHORT_PATH = "/instore/qr/seller/collectors/%d/pos/SUC001POS001/orders" % UID


def instore_order(ref="ORDER-1001", total=150, **kw):
    body = {"external_reference": ref, "title": "Venta", "description": "Pizza x2",
            "total_amount": total,
            "items": [{"sku_number": "A1", "category": "FOOD", "title": "Pizza",
                       "unit_price": total / 2, "quantity": 2, "unit_measure": "unit",
                       "total_amount": total}]}
    body.update(kw)
    return body


def qr_order(ref="R-1", amount="50.00", pos="SUC001POS001", **kw):
    body = {"type": "qr", "total_amount": amount, "external_reference": ref,
            "config": {"qr": {"external_pos_id": pos, "mode": "static"}},
            "transactions": {"payments": [{"amount": amount}]}}
    body.update(kw)
    return body


def check_signature(item, secret=SECRET):
    parts = dict(p.split("=", 1) for p in item["headers"]["x-signature"].split(","))
    manifest = "id:%s;request-id:%s;ts:%s;" % (item["q"]["data.id"],
                                               item["headers"]["x-request-id"], parts["ts"])
    want = hmac.new(secret.encode(), manifest.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, parts["v1"])


# ------------------------------------------------------------------- tests


def test_tls_keepalive_and_instore_cycle(env):
    sim, _, _, _ = env
    c = sim.conn()
    st, h, body = sim.api("PUT", ORDERS_PATH, instore_order(), conn=c)
    assert st == 204 and body is None and "content-length" not in h
    st, _, body = sim.api("GET", SHORT_PATH, conn=c)
    assert st == 200 and body[0]["external_reference"] == "ORDER-1001"
    st, _, _ = sim.api("PUT", SHORT_PATH, instore_order("ORDER-1002", 80), conn=c)
    assert st == 204
    st, _, body = sim.api("GET", SHORT_PATH, conn=c)
    assert body[0]["external_reference"] == "ORDER-1002" and body[0]["total_amount"] == 80
    st, _, _ = sim.api("DELETE", SHORT_PATH, conn=c)
    assert st == 204
    st, _, body = sim.api("GET", SHORT_PATH, conn=c)
    assert st == 404 and body["error"] == "point_of_sale_in_store_order_not_found"
    assert body["message"] == "No associated order found."
    c.close()
    if shutil.which("curl"):
        out = subprocess.run(["curl", "-sS", "--cacert", sim.cafile, "-o", "/dev/null", "-w",
                              "%{http_code}", "https://127.0.0.1:%d/_sim/health" % sim.port],
                             capture_output=True, text=True, timeout=10)
        assert out.stdout == "200", out.stderr


def test_instore_validation(env):
    sim, _, _, _ = env
    cases = [
        (instore_order(ref="bad ref!"), "invalid_external_reference"),
        (instore_order(ref="x" * 65), "invalid_external_reference"),
        ({k: v for k, v in instore_order().items() if k != "description"}, "invalid_description"),
        (dict(instore_order(), total_amount="150"), "invalid_total_amount"),
        ({k: v for k, v in instore_order().items() if k != "items"},
         "error_creating_seller_qr_order"),
        (instore_order(items=[{"title": "A", "unit_price": 1, "quantity": 1,
                               "unit_measure": "kg", "total_amount": 1}]), "invalid_unit_measure"),
        (instore_order(items=[{"unit_price": 1, "quantity": 1, "unit_measure": "unit",
                               "total_amount": 1}]), "invalid_items.title"),
        (instore_order(expiration_date="2020-01-01T00:00:00.000-04:00"), "invalid_expiration_date"),
        (instore_order(expiration_date="2099-01-01T00:00:00"), "invalid_expiration_date"),
        (instore_order(notification_url="www.yourserver.com"), "invalid_notification_url"),
    ]
    for body, key in cases:
        st, _, js = sim.api("PUT", ORDERS_PATH, body)
        assert (st, js["error"]) == (400, key), (body, js)
    st, _, js = sim.api("PUT", ORDERS_PATH.replace(str(UID), "abc"), instore_order())
    assert (st, js["error"]) == (400, "invalid_collectorId")
    st, _, js = sim.api("PUT", ORDERS_PATH, instore_order(), {"Authorization": "Bearer nope"})
    assert st == 401 and js["error"] == "unauthorized"
    st, _, js = sim.api("PUT", ORDERS_PATH.replace("SUC001/", "SUC999/"), instore_order())
    assert st == 404
    st, _, js = sim.api("PUT", SHORT_PATH.replace("POS001/", "POS999/"), instore_order())
    assert st == 404
    st, _, _ = sim.api("PUT", ORDERS_PATH, instore_order(
        expiration_date="2099-01-01T00:00:00.000-04:00", notification_url="https://x.test/n?a=1"))
    assert st == 204


def test_stores_and_pos(env):
    sim, _, store, pos = env
    assert isinstance(store["id"], str)
    st, _, js = sim.api("POST", "/users/%d/stores" % UID,
                        {"name": "Otra", "external_id": "SUC001", "location": STORE_LOC})
    assert (st, js["error"], js["message"]) == (400, "VALIDATION_ERROR", "External_id-already-used-")
    st, _, js = sim.api("POST", "/users/%d/stores" % UID,
                        {"name": "Norte", "external_id": "SUC002", "location": STORE_LOC,
                         "business_hours": {"monday": [{"open": "08:00", "close": "12:00"}]}})
    assert st == 201 and js["external_id"] == "SUC002"
    st, _, js = sim.api("GET", "/users/%d/stores/search?external_id=SUC002" % UID)
    assert st == 200 and js["paging"]["total"] == 1 and js["results"][0]["id"] == \
        sim.api("GET", "/stores/" + js["results"][0]["id"])[2]["id"]
    newpos = {"name": "Caja 2", "fixed_amount": True, "store_id": int(store["id"]),
              "external_store_id": "SUC001", "external_id": "SUC001POS002", "category": 621102}
    st, _, js = sim.api("POST", "/pos", newpos)
    assert st == 201
    for k in ("image", "template_document", "template_image"):
        assert js["qr"][k].startswith("https://")
    assert js["uuid"] and js["qr_code"].startswith("000201") and js["store_id"] == store["id"]
    st, _, js = sim.api("POST", "/pos", newpos)
    assert st == 409
    st, _, js = sim.api("POST", "/pos", dict(newpos, external_id="X-1"))
    assert js["error"] == "INVALID_EXTERNAL_ID"
    st, _, js = sim.api("POST", "/pos", dict(newpos, external_id="P3", external_store_id="SUC002"))
    assert js["error"] == "EXTERNAL_STORE_ID_NOT_MATCH"
    st, _, js = sim.api("POST", "/pos", dict(newpos, external_id="P3", name="n" * 45))
    assert js["error"] == "NAME_TOO_LONG"
    st, _, js = sim.api("GET", "/pos?external_id=SUC001POS002")
    assert js["paging"]["total"] == 1 and js["results"][0]["external_id"] == "SUC001POS002"
    st, _, js = sim.api("GET", "/pos/%d" % pos["id"])
    assert st == 200 and js["external_id"] == "SUC001POS001"
    st, h, js = sim.api("PATCH", "/pos")
    assert st == 405
    st, _, js = sim.api("GET", "/nowhere")
    assert st == 404


def test_scan_pay_closes_mo_and_notifies(env):
    sim, rcv, _, _ = env
    nurl = rcv.url + "?account=main"
    assert sim.api("PUT", ORDERS_PATH, instore_order(notification_url=nurl))[0] == 204
    st, _, js = sim.api("GET", "/merchant_orders/search?external_reference=ORDER-1001")
    assert js == {"elements": None, "next_offset": 0, "total": 0}
    # a rejected attempt creates the merchant order (§12.5), which stays opened
    first = sim.ctl("pay", {"user_id": UID, "external_pos_id": "SUC001POS001",
                            "status": "rejected"})
    mo_id = first["merchant_order_id"]
    assert first["merchant_order_status"] == "opened"
    ipn = wait_for(lambda: rcv.find(topic="merchant_order", id=str(mo_id)), what="IPN")
    assert ipn[0]["q"]["account"] == "main"
    assert json.loads(ipn[0]["body"]) == {
        "resource": "https://api.mercadolibre.com/merchant_orders/%d" % mo_id,
        "topic": "merchant_order"}
    wh = wait_for(lambda: rcv.bodies(type="topic_merchant_order_wh"), what="MO webhook")
    item, body = wh[0]
    assert item["query"] == "account=main" and body["id"] == str(mo_id)
    assert body["action"] == "create" and body["user_id"] == UID and "x-signature" not in item["headers"]
    st, _, mo = sim.api("GET", "/merchant_orders/%d" % mo_id)
    assert (mo["status"], mo["order_status"], mo["total_amount"]) == ("opened", "payment_required", 150)
    assert [p["status"] for p in mo["payments"]] == ["rejected"]
    res = sim.ctl("pay", {"user_id": UID, "external_pos_id": "SUC001POS001"})
    assert res["merchant_order_id"] == mo_id and res["status"] == "approved"
    st, _, mo = sim.api("GET", "/merchant_orders/%d" % mo_id)
    assert mo["id"] == mo_id and mo["status"] == "closed" and mo["order_status"] == "paid"
    assert mo["paid_amount"] == 150 and mo["payments"][1]["operation_type"] == "regular_payment"
    assert mo["collector"]["id"] == UID
    st, _, pay = sim.api("GET", "/v1/payments/%d" % res["payment_id"])
    assert pay["order"] == {"id": mo_id, "type": "mercadopago"} and pay["status"] == "approved"
    assert pay["external_reference"] == "ORDER-1001"
    assert sim.api("GET", SHORT_PATH)[0] == 404  # a closed MO leaves the POS empty
    st, _, js = sim.api("GET", "/merchant_orders?external_reference=ORDER-1001")
    assert js["total"] == 1 and js["elements"][0]["status"] == "closed"
    pwh = wait_for(lambda: rcv.find(**{"type": "payment", "data.id": str(res["payment_id"])}),
                   what="payment webhook")
    assert check_signature(pwh[0]) and pwh[0]["q"]["account"] == "main"
    wait_for(lambda: [b for _, b in rcv.bodies(type="topic_merchant_order_wh")
                      if b["status"] == "closed"], what="closed MO webhook")
    wait_for(lambda: rcv.find(topic="payment", id=str(res["payment_id"])), what="payment IPN")


def test_payment_refunds(env):
    sim, rcv, _, _ = env
    sim.api("PUT", ORDERS_PATH, instore_order())
    res = sim.ctl("pay", {"user_id": UID, "external_pos_id": "SUC001POS001"})
    pid, mo_id = res["payment_id"], res["merchant_order_id"]
    path = "/v1/payments/%d/refunds" % pid
    st, _, js = sim.api("POST", path)
    assert st == 400 and js["cause"][0]["code"] == 4292
    st, _, r1 = sim.api("POST", path, {"amount": 50}, {"X-Idempotency-Key": "a"})
    assert st == 201 and r1["amount"] == 50 and r1["payment_id"] == pid
    st, _, again = sim.api("POST", path, {"amount": 50}, {"X-Idempotency-Key": "a"})
    assert st == 201 and again["id"] == r1["id"]
    st, _, js = sim.api("POST", path, {"amount": 500}, {"X-Idempotency-Key": "b"})
    assert st == 400
    st, _, js = sim.api("GET", "/merchant_orders/%d" % mo_id)
    assert js["refunded_amount"] == 50 and js["order_status"] == "partially_reverted"
    st, _, r2 = sim.api("POST", path, None, {"X-Idempotency-Key": "c"})
    assert st == 201 and r2["amount"] == 100
    st, _, pay = sim.api("GET", "/v1/payments/%d" % pid)
    assert pay["status"] == "refunded" and pay["transaction_amount_refunded"] == 150
    assert len(sim.api("GET", path)[2]) == 2
    st, _, js = sim.api("GET", "/merchant_orders/%d" % mo_id)
    assert js["status"] == "closed" and js["order_status"] == "reverted"
    wait_for(lambda: [b for _, b in rcv.bodies(type="payment") if b["action"] == "payment.updated"],
             what="payment.updated")


def test_orders_api(env):
    sim, rcv, _, _ = env
    st, _, js = sim.api("POST", "/v1/orders", qr_order())
    assert st == 400 and js["errors"][0]["code"] == "empty_required_header"
    st, _, o = sim.api("POST", "/v1/orders", qr_order(), {"X-Idempotency-Key": "k1"})
    assert st == 201 and o["status"] == "created" and o["id"].startswith("ORDTST")
    assert len(o["id"]) == 32 and o["transactions"]["payments"][0]["id"].startswith("PAY")
    assert o["currency"] == "ARS" and o["country_code"] == "ARG" and o["expiration_time"] == "PT10M"
    st, _, again = sim.api("POST", "/v1/orders", qr_order(), {"X-Idempotency-Key": "k1"})
    assert st == 201 and again == o
    st, _, js = sim.api("POST", "/v1/orders", qr_order("R-2"), {"X-Idempotency-Key": "k1"})
    assert st == 409
    st, _, js = sim.api("POST", "/v1/orders", qr_order("R-2"), {"X-Idempotency-Key": "k2"})
    assert st == 409  # one pending order per POS
    st, _, js = sim.api("POST", "/v1/orders", qr_order("R-2", amount="1.5"), {"X-Idempotency-Key": "k3"})
    assert st == 400
    st, _, c = sim.api("POST", "/v1/orders/%s/cancel" % o["id"], None, {"X-Idempotency-Key": "c1"})
    assert st == 200 and c["status"] == "canceled"
    assert c["transactions"]["payments"][0]["status_detail"] == "canceled_by_api"
    st, _, js = sim.api("POST", "/v1/orders/%s/cancel" % o["id"], None, {"X-Idempotency-Key": "c2"})
    assert st == 409
    wait_for(lambda: rcv.bodies(action="order.canceled"), what="order.canceled")
    st, _, o2 = sim.api("POST", "/v1/orders", qr_order("R-2"), {"X-Idempotency-Key": "k4"})
    assert st == 201
    assert sim.ctl("scan", {"user_id": UID, "external_pos_id": "SUC001POS001"}) == {"order_id": o2["id"]}
    res = sim.ctl("pay", {"user_id": UID, "order_id": o2["id"], "amount": 47.28})
    assert res["order_status"] == "processed"
    st, _, g = sim.api("GET", "/v1/orders/" + o2["id"])
    assert g["status"] == "processed" and g["total_paid_amount"] == "47.28"
    item, body = wait_for(lambda: rcv.bodies(action="order.processed"), what="order.processed")[0]
    assert item["q"] == {"data.id": o2["id"], "type": "order"} and check_signature(item)
    assert body["data"]["status"] == "processed" and body["user_id"] == str(UID)
    assert item["headers"]["x-retry"] == "0" and item["headers"]["x-socket-timeout"] == "22000"
    rpath = "/v1/orders/%s/refund" % o2["id"]
    st, _, js = sim.api("POST", rpath, {"transactions": [{"id": g["transactions"]["payments"][0]["id"],
                                                          "amount": "10.00"}]},
                        {"X-Idempotency-Key": "r1"})
    assert st == 400 and js["errors"][0]["code"] == "unsupported_partially_refunds"
    st, _, r = sim.api("POST", rpath, None, {"X-Idempotency-Key": "r2"})
    assert st == 201 and r["transactions"]["refunds"][0]["status"] == "processing"
    assert r["transactions"]["refunds"][0]["amount"] == "47.28"
    assert sim.ctl("complete_refunds")["completed"] == [o2["id"]]
    st, _, g = sim.api("GET", "/v1/orders/" + o2["id"])
    assert g["status"] == "refunded" and g["transactions"]["refunds"][0]["status"] == "processed"
    _, body = wait_for(lambda: rcv.bodies(action="order.refunded"), what="order.refunded")[0]
    assert body["data"]["version"] > 2
    assert sim.api("GET", "/v1/orders/ORDTST01K0EPV4K8S54GADYVVA8WBV8B")[0] == 404
    assert sim.api("GET", "/v1/orders/nope")[2]["errors"][0]["code"] == "invalid_path_param"


def test_expiry(env):
    sim, rcv, _, _ = env
    sim.ctl("accounts", {"user_id": UID, "sign_lowercase": True})
    st, _, o = sim.api("POST", "/v1/orders", qr_order(expiration_time="PT30S"),
                       {"X-Idempotency-Key": "e1"})
    sim.ctl("clock", {"advance": 31})
    item, body = wait_for(lambda: rcv.bodies(action="order.expired"), what="order.expired")[0]
    assert body["data"]["id"] == o["id"] and body["data"]["status"] == "expired"
    assert item["q"]["data.id"] == o["id"] and not check_signature(item)
    item["q"]["data.id"] = o["id"].lower()
    assert check_signature(item)
    sim.api("PUT", ORDERS_PATH, instore_order(notification_url=rcv.url))
    mo_id = sim.ctl("pay", {"user_id": UID, "external_pos_id": "SUC001POS001",
                            "status": "rejected"})["merchant_order_id"]
    res = sim.ctl("expire", {"user_id": UID, "external_pos_id": "SUC001POS001"})
    assert res["expired_merchant_orders"] == [mo_id]
    st, _, mo = sim.api("GET", "/merchant_orders/%d" % mo_id)
    assert mo["status"] == "expired" and mo["order_status"] == "expired"
    assert sim.api("GET", SHORT_PATH)[0] == 404
    late = sim.ctl("pay", {"user_id": UID, "merchant_order_id": mo_id})  # buyer already on the screen
    assert late["merchant_order_status"] == "closed"


def test_notification_retries(env):
    sim, rcv, _, _ = env
    rcv.fail = 2
    sim.ctl("config", {"mo_at_scan": True})  # one notification: the scan's
    sim.api("PUT", ORDERS_PATH, instore_order(notification_url=rcv.url + "/flaky?source_news=ipn"))
    mo_id = sim.ctl("scan", {"user_id": UID, "external_pos_id": "SUC001POS001"})["merchant_order_id"]
    def flaky():  # not a late delivery of an earlier test, whose ids may be the same
        return [i for i in rcv.find(topic="merchant_order", id=str(mo_id))
                if i["path"].endswith("/flaky")]
    wait_for(lambda: [i for i in flaky() if i["status"] == 200], what="successful retry")
    retries = [i["headers"]["x-retry"] for i in flaky()]
    assert retries == ["0", "1", "2"]
    dels = [d for d in sim.ctl("deliveries", method="GET") if d["url"].split("?")[0].endswith("/flaky")]
    assert [d["status"] for d in dels] == [500, 500, 200]
    assert not rcv.bodies(type="topic_merchant_order_wh")  # source_news=ipn


def test_faults(env):
    sim, _, _, _ = env
    sim.ctl("faults", {"method": "PUT", "path": "/orders$", "status": 503, "times": 2})
    assert sim.api("PUT", ORDERS_PATH, instore_order())[0] == 503
    assert sim.api("PUT", ORDERS_PATH, instore_order())[0] == 503
    assert sim.api("PUT", ORDERS_PATH, instore_order())[0] == 204
    sim.ctl("faults", {"path": "^/merchant_orders", "status": 429, "retry_after": 1})
    st, h, _ = sim.api("GET", "/merchant_orders/search?external_reference=x")
    assert st == 429 and h["retry-after"] == "1"
    sim.ctl("faults", {"path": "^/pos", "drop": True})
    with pytest.raises((http.client.HTTPException, ConnectionError, socket.error)):
        sim.api("GET", "/pos?external_id=SUC001POS001")
    sim.ctl("faults", {"path": "^/pos", "malformed": True})
    st, _, body = sim.api("GET", "/pos?external_id=SUC001POS001")
    assert st == 200 and isinstance(body, bytes)
    assert sim.ctl("faults", method="GET") == []
    log = sim.ctl("requests?path=/orders$", method="GET")
    assert [e["status"] for e in log] == [503, 503, 204]
    assert log[0]["headers"]["authorization"] == "Bearer " + TOKEN


def test_fault_chance(env):
    sim, _, _, _ = env
    sim.ctl("faults", {"path": "^/pos", "status": 503, "times": 1000, "chance": 0.25})
    codes = [sim.api("GET", "/pos?external_id=SUC001POS001")[0] for _ in range(400)]
    hit = codes.count(503)
    assert 50 <= hit <= 150 and codes.count(200) == 400 - hit
    assert sim.ctl("faults", method="GET")[0]["times"] == 1000 - hit
    sim.ctl("faults", method="DELETE")
    sim.ctl("faults", {"path": "^/pos", "status": 503, "chance": 0})
    assert sim.api("GET", "/pos?external_id=SUC001POS001")[0] == 200


def test_currency_integer_sites(env):
    sim, _, _, _ = env
    sim.ctl("accounts", {"user_id": 777, "token": "APP_USR-co", "site_id": "MCO"})
    sim.ctl("stores", {"user_id": 777, "name": "Bogota", "external_id": "S1", "location": STORE_LOC})
    st = sim.ctl("state", method="GET")["stores"][-1]
    sim.ctl("pos", {"user_id": 777, "name": "Caja", "fixed_amount": True, "store_id": int(st["id"]),
                    "external_store_id": "S1", "external_id": "P1"})
    path = "/instore/qr/seller/collectors/777/pos/P1/orders"
    h = {"Authorization": "Bearer APP_USR-co"}
    st, _, js = sim.request("PUT", path, instore_order(total=1500.5), h)
    assert st == 400 and "integer values" in js["message"]
    assert sim.request("PUT", path, instore_order(total=1500), h)[0] == 204
    st, _, js = sim.request("POST", "/v1/orders", qr_order(amount="1500.50", pos="P1"),
                            dict(h, **{"X-Idempotency-Key": "x"}))
    assert st == 400


def test_panel_urls_partial_pending_chargeback(env):
    sim, rcv, _, _ = env
    sim.ctl("accounts", {"user_id": UID, "ipn_url": rcv.url + "?via=ipn",
                         "notify": ["ipn:merchant_order", "webhook:payment"],
                         "sign_lowercase": True})
    sim.api("PUT", ORDERS_PATH, instore_order())  # no notification_url: panel URLs
    r1 = sim.ctl("pay", {"user_id": UID, "external_pos_id": "SUC001POS001", "amount": 100})
    assert r1["merchant_order_status"] == "opened" and r1["order_status"] == "partially_paid"
    r2 = sim.ctl("pay", {"user_id": UID, "merchant_order_id": r1["merchant_order_id"],
                         "status": "pending"})
    assert r2["order_status"] == "partially_paid"
    pay = sim.ctl("payment_status", {"payment_id": r2["payment_id"], "status": "approved"})
    assert pay["status"] == "approved"
    mo = sim.api("GET", "/merchant_orders/%d" % r1["merchant_order_id"])[2]
    assert (mo["status"], mo["order_status"], mo["paid_amount"]) == ("closed", "paid", 150)
    sim.ctl("chargeback", {"payment_id": r1["payment_id"]})
    mo = sim.api("GET", "/merchant_orders/%d" % r1["merchant_order_id"])[2]
    assert mo["status"] == "closed" and mo["order_status"] == "partially_reverted"
    wait_for(lambda: rcv.find(via="ipn", topic="merchant_order"), what="panel IPN")
    item = wait_for(lambda: rcv.find(type="payment"), what="payment webhook")[0]
    assert item["path"] == "/notifications" and check_signature(item)
    assert not rcv.find(topic="payment") and not rcv.bodies(type="topic_merchant_order_wh")


def test_scan_before_publish_and_lost_answer(env):
    """With mo_at_scan, the behaviour before 2024-08 (§5.5): a scan makes a MO."""
    sim, _, _, _ = env
    sim.ctl("config", {"mo_at_scan": True})
    assert sim.request("POST", "/_sim/scan", {"user_id": UID, "external_pos_id": "SUC001POS001",
                                              "wait": True})[0] == 202
    sim.ctl("faults", {"method": "PUT", "path": "/orders$", "drop": True, "process": True})
    with pytest.raises((http.client.HTTPException, ConnectionError, socket.error)):
        sim.api("PUT", ORDERS_PATH, instore_order())
    st, _, js = sim.api("GET", "/merchant_orders/search?external_reference=ORDER-1001")
    assert js["total"] == 1 and js["elements"][0]["status"] == "opened"
    assert sim.api("GET", SHORT_PATH)[2][0]["external_reference"] == "ORDER-1001"


# ------------------------------------------------ API reference §12, item by item

OTHER_UID = 987654321
OTHER_TOKEN = "APP_USR-other-token"
OTHER = {"Authorization": "Bearer " + OTHER_TOKEN}


def other_account(sim):
    sim.ctl("accounts", {"user_id": OTHER_UID, "token": OTHER_TOKEN, "site_id": "MLA"})


def paid_instore(sim, ref="ORDER-1001", total=150, **pay):
    assert sim.api("PUT", ORDERS_PATH, instore_order(ref, total))[0] == 204
    return sim.ctl("pay", dict({"user_id": UID, "external_pos_id": "SUC001POS001"}, **pay))


def tlv(payload):
    """EMVCo top-level tags of a QR payload: {tag: value}."""
    out, i = {}, 0
    while i < len(payload):
        tag, n = payload[i:i + 2], int(payload[i + 2:i + 4])
        out[tag] = payload[i + 4:i + 4 + n]
        i += 4 + n
    return out


def crc16(data):
    crc = 0xFFFF
    for b in data.encode():
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return "%04X" % crc


def test_12_1_foreign_payment_is_403_foreign_merchant_order_is_401(env):
    sim, _, _, _ = env
    other_account(sim)
    res = paid_instore(sim)
    pid, mo_id = res["payment_id"], res["merchant_order_id"]
    st, _, js = sim.request("GET", "/v1/payments/%d" % pid, headers=OTHER)
    assert st == 403 and js["cause"][0]["code"] == 4
    assert js["message"] == "The caller is not authorized to access this resource"
    st, _, js = sim.request("POST", "/v1/payments/%d/refunds" % pid, None,
                            dict(OTHER, **{"X-Idempotency-Key": "f1"}))
    assert st == 403
    st, _, js = sim.api("GET", "/v1/payments/%d" % (pid + 1000))  # unknown: still 404 (§7)
    assert st == 404 and js["cause"][0]["code"] == 2000
    # merchant orders document only 401: another collector's and an unknown id alike
    for path, hdr in (("/merchant_orders/%d" % mo_id, OTHER),
                      ("/merchant_orders/99999999999", AUTH)):
        st, _, js = sim.request("GET", path, headers=hdr)
        assert (st, js["error"]) == (401, "invalid_caller_id"), (path, js)
    st, _, js = sim.request("GET", "/merchant_orders/%d" % mo_id,
                            headers={"Authorization": "Bearer revoked"})
    assert (st, js["error"]) == (401, "invalid_token")
    assert sim.api("GET", "/merchant_orders/%d" % mo_id)[0] == 200


def test_12_2_pix_refund_in_process(env):
    sim, rcv, _, _ = env
    sim.ctl("accounts", {"user_id": UID, "payment_method_id": "pix"})
    pid = paid_instore(sim, total=100)["payment_id"]
    pay = sim.api("GET", "/v1/payments/%d" % pid)[2]
    assert (pay["payment_method_id"], pay["payment_type_id"]) == ("pix", "bank_transfer")
    path = "/v1/payments/%d/refunds" % pid
    # without the header: 400, though MP goes on with the refund
    st, _, js = sim.api("POST", path, {"amount": 40}, {"X-Idempotency-Key": "p1"})
    assert st == 400
    refunds = sim.api("GET", path)[2]
    assert [(r["amount"], r["status"]) for r in refunds] == [(40, "in_process")]
    # with it: 201 in_process; the amount in process stays held
    render = {"X-Render-In-Process-Refunds": "true"}
    st, _, r2 = sim.api("POST", path, {"amount": 60}, dict(render, **{"X-Idempotency-Key": "p2"}))
    assert st == 201 and r2["status"] == "in_process" and r2["amount"] == 60
    st, _, js = sim.api("POST", path, {"amount": 1}, dict(render, **{"X-Idempotency-Key": "p3"}))
    assert st == 400 and js["cause"][0]["code"] == 2085
    st, _, again = sim.api("POST", path, {"amount": 40}, dict(render, **{"X-Idempotency-Key": "p1"}))
    assert st == 201 and again["id"] == refunds[0]["id"] and again["status"] == "in_process"
    pay = sim.api("GET", "/v1/payments/%d" % pid)[2]
    assert pay["status"] == "approved" and pay["transaction_amount_refunded"] == 0
    # approved later
    done = sim.ctl("complete_refunds", {"payment_id": pid})
    assert sorted(done["payment_refunds"]) == sorted([refunds[0]["id"], r2["id"]])
    assert {r["status"] for r in sim.api("GET", path)[2]} == {"approved"}
    pay = sim.api("GET", "/v1/payments/%d" % pid)[2]
    assert pay["status"] == "refunded" and pay["transaction_amount_refunded"] == 100
    # each refund change is announced: created, two refunds made, two approved
    wait_for(lambda: len([b for _, b in rcv.bodies(type="payment") if b["data"]["id"] == str(pid)
                          and b["action"] == "payment.updated"]) >= 4, what="refund notifications")
    # with a delay the refund is approved by time; a rejected one frees its amount
    sim.ctl("accounts", {"user_id": UID, "pix_refund_delay": 60})
    pid = paid_instore(sim, "ORDER-1002", 50)["payment_id"]
    path = "/v1/payments/%d/refunds" % pid
    r = sim.api("POST", path, {"amount": 20}, dict(render, **{"X-Idempotency-Key": "d1"}))[2]
    sim.ctl("clock", {"advance": 61})
    assert sim.api("GET", path + "/%d" % r["id"])[2]["status"] == "approved"
    r = sim.api("POST", path, None, dict(render, **{"X-Idempotency-Key": "d2"}))[2]
    assert r["amount"] == 30 and r["status"] == "in_process"
    sim.ctl("complete_refunds", {"payment_id": pid, "status": "rejected"})
    assert sim.api("GET", path + "/%d" % r["id"])[2]["status"] == "rejected"
    assert sim.api("POST", path, None, dict(render, **{"X-Idempotency-Key": "d3"}))[2]["amount"] == 30
    # not Pix: approved at once, header or not
    sim.ctl("accounts", {"user_id": UID, "payment_method_id": "account_money"})
    pid = paid_instore(sim, "ORDER-1003", 10)["payment_id"]
    st, _, r = sim.api("POST", "/v1/payments/%d/refunds" % pid, None, {"X-Idempotency-Key": "n1"})
    assert st == 201 and r["status"] == "approved"


def test_12_3_qr_webhook_signature_may_not_verify(env):
    sim, rcv, _, _ = env
    seen = {}
    for i, mode in enumerate(("valid", "invalid", "none")):
        sim.ctl("accounts", {"user_id": UID, "signature": mode})
        o = sim.api("POST", "/v1/orders", qr_order("S-%d" % i), {"X-Idempotency-Key": "s%d" % i})[2]
        sim.api("POST", "/v1/orders/%s/cancel" % o["id"], None, {"X-Idempotency-Key": "c%d" % i})
        item = wait_for(lambda: rcv.find(**{"data.id": o["id"], "type": "order"}), what=mode)[0]
        seen[mode] = item
    assert check_signature(seen["valid"])
    assert "x-signature" in seen["invalid"]["headers"] and not check_signature(seen["invalid"])
    assert "x-signature" not in seen["none"]["headers"]
    sim.ctl("accounts", {"user_id": UID, "signature": "invalid"})
    pid = paid_instore(sim)["payment_id"]
    item = wait_for(lambda: rcv.find(**{"data.id": str(pid), "type": "payment"}), what="payment")[0]
    assert "x-signature" in item["headers"] and not check_signature(item)
    assert sim.request("POST", "/_sim/accounts", {"user_id": UID, "signature": "maybe"})[0] == 400


def test_12_4_static_qr_lives_at_most_10_minutes(env):
    sim, _, _, _ = env
    # instore: 10 minutes by default, and at most 10 minutes whatever is sent
    for exp in (None, "2099-01-01T00:00:00.000-04:00"):
        body = instore_order() if exp is None else instore_order(expiration_date=exp)
        assert sim.api("PUT", ORDERS_PATH, body)[0] == 204
        sim.ctl("clock", {"advance": 599})
        assert sim.api("GET", SHORT_PATH)[0] == 200
        sim.ctl("clock", {"advance": 2})
        assert sim.api("GET", SHORT_PATH)[0] == 404
    # Orders API: PT30S to PT3600H
    for i, bad in enumerate(("PT29S", "PT3600H1S", "P151D", "15M")):
        st, _, js = sim.api("POST", "/v1/orders", qr_order("B-%d" % i, expiration_time=bad),
                            {"X-Idempotency-Key": "b%d" % i})
        assert st == 400 and js["errors"][0]["details"] == ["expiration_time"], bad
    # static: PT10M by default; PT2H accepted but expires at 10 minutes
    o = sim.api("POST", "/v1/orders", qr_order("X-1"), {"X-Idempotency-Key": "x1"})[2]
    assert o["expiration_time"] == "PT10M"
    sim.api("POST", "/v1/orders/%s/cancel" % o["id"], None, {"X-Idempotency-Key": "x1c"})
    st, _, o = sim.api("POST", "/v1/orders", qr_order("X-2", expiration_time="PT2H"),
                       {"X-Idempotency-Key": "x2"})
    assert st == 201 and o["expiration_time"] == "PT2H"
    dyn = qr_order("X-3", expiration_time="PT2H")
    dyn["config"]["qr"]["mode"] = "dynamic"
    d = sim.api("POST", "/v1/orders", dyn, {"X-Idempotency-Key": "x3"})[2]
    sim.ctl("clock", {"advance": 601})
    assert sim.api("GET", "/v1/orders/" + o["id"])[2]["status"] == "expired"
    assert sim.api("GET", "/v1/orders/" + d["id"])[2]["status"] == "created"
    st, _, o = sim.api("POST", "/v1/orders", qr_order("X-4", expiration_time="PT30S"),
                       {"X-Idempotency-Key": "x4"})
    assert st == 201


def test_12_5_merchant_order_made_at_payment_and_lagging(env):
    sim, rcv, _, _ = env
    sim.api("PUT", ORDERS_PATH, instore_order(notification_url=rcv.url))
    scan = sim.ctl("scan", {"user_id": UID, "external_pos_id": "SUC001POS001"})
    assert scan["merchant_order_id"] is None and scan["scanned"]
    search = "/merchant_orders/search?external_reference=ORDER-1001"
    assert sim.api("GET", search)[2]["total"] == 0
    assert not rcv.find(topic="merchant_order")
    sim.ctl("config", {"mo_payment_lag": 30})
    res = sim.ctl("pay", {"user_id": UID, "external_pos_id": "SUC001POS001"})
    pid, mo_id = res["payment_id"], res["merchant_order_id"]
    pay = sim.api("GET", "/v1/payments/%d" % pid)[2]
    assert pay["status"] == "approved" and pay["order"]["id"] == mo_id
    mo = sim.api("GET", "/merchant_orders/%d" % mo_id)[2]
    assert (mo["status"], mo["payments"], mo["paid_amount"]) == ("opened", [], 0)
    found = sim.api("GET", "/v1/payments/search?external_reference=ORDER-1001")[2]
    assert [p["id"] for p in found["results"]] == [pid]
    wait_for(lambda: rcv.find(topic="merchant_order", id=str(mo_id)), what="MO create")
    sim.ctl("clock", {"advance": 31})
    mo = sim.api("GET", "/merchant_orders/%d" % mo_id)[2]
    assert mo["status"] == "closed" and [p["id"] for p in mo["payments"]] == [pid]
    wait_for(lambda: [b for _, b in rcv.bodies(type="topic_merchant_order_wh")
                      if b["id"] == str(mo_id) and b["status"] == "closed"], what="MO closed")


def test_12_6_sandbox_errors(env):
    sim, _, _, _ = env
    other_account(sim)
    st, _, js = sim.api("PUT", ORDERS_PATH.replace(str(UID), str(OTHER_UID)), instore_order())
    assert st == 400 and js["message"] == "Collector ID and Caller ID must be the same"
    assert js["causes"] == [] and "cause" not in js
    st, _, js = sim.api("DELETE", SHORT_PATH.replace("POS001/", "POS999/"))
    assert (st, js["error"]) == (400, "pos_obtainment_by_external_id_error")
    assert sim.api("DELETE", SHORT_PATH)[0] == 204  # known POS, nothing on it
    o = sim.api("POST", "/v1/orders", qr_order(), {"X-Idempotency-Key": "t1"})[2]
    sim.ctl("faults", [{"method": "POST", "path": "/cancel$", "code": "processor_communication_error"},
                       {"method": "POST", "path": "/cancel$", "code": "post_processing_operation_pending"}])
    for code in ("processor_communication_error", "post_processing_operation_pending"):
        st, _, js = sim.api("POST", "/v1/orders/%s/cancel" % o["id"], None, {"X-Idempotency-Key": "tc"})
        assert st == 409 and js["errors"][0]["code"] == code
    st, _, js = sim.api("POST", "/v1/orders/%s/cancel" % o["id"], None, {"X-Idempotency-Key": "tc"})
    assert st == 200 and js["status"] == "canceled"
    o = sim.api("POST", "/v1/orders", qr_order("T-2"), {"X-Idempotency-Key": "t2"})[2]
    sim.ctl("pay", {"user_id": UID, "order_id": o["id"]})
    sim.ctl("faults", {"method": "POST", "path": "/refund$", "code": "unprocessable_entity"})
    st, _, js = sim.api("POST", "/v1/orders/%s/refund" % o["id"], None, {"X-Idempotency-Key": "tr"})
    assert st == 422 and js["errors"][0]["code"] == "unprocessable_entity"
    assert sim.api("POST", "/v1/orders/%s/refund" % o["id"], None, {"X-Idempotency-Key": "tr"})[0] == 201


def test_12_7_orders_unsupported_properties_and_envelope(env):
    sim, _, _, _ = env
    body = qr_order(notification_url="https://shop.test/n")
    body["config"]["qr"]["color"] = "blue"
    st, _, js = sim.api("POST", "/v1/orders", body, {"X-Idempotency-Key": "u1"})
    assert st == 400 and list(js) == ["errors"]
    e = js["errors"][0]
    assert set(e) == {"code", "message", "details"} and e["code"] == "unsupported_properties"
    assert sorted(e["details"]) == ["$.config.qr.color", "$.notification_url"]
    assert sim.ctl("state", method="GET")["orders"] == []
    st, _, js = sim.request("GET", "/v1/orders/ORDTST01K0EPV4K8S54GADYVVA8WBV8B")
    assert st == 401 and js["errors"][0]["code"] == "unauthorized"
    ok = qr_order(items=[{"title": "A", "unit_price": "50.00", "quantity": 1, "unit_measure": "unit",
                          "external_code": "1"}], description="x",
                  integration_data={"platform_id": "dev_1"})
    assert sim.api("POST", "/v1/orders", ok, {"X-Idempotency-Key": "u2"})[0] == 201


def test_12_8_merchant_order_search_pages_by_30(env):
    sim, _, _, _ = env
    sim.ctl("config", {"mo_at_scan": True})
    sim.api("PUT", ORDERS_PATH, instore_order())
    for _ in range(35):
        sim.ctl("scan", {"user_id": UID, "external_pos_id": "SUC001POS001"})
    q = "/merchant_orders/search?external_reference=ORDER-1001"
    js = sim.api("GET", q)[2]
    assert (len(js["elements"]), js["total"], js["next_offset"]) == (30, 35, 30)
    rest = sim.api("GET", q + "&offset=30")[2]
    assert len(rest["elements"]) == 5 and rest["total"] == 35
    ids = [m["id"] for m in js["elements"] + rest["elements"]]
    assert len(set(ids)) == 35


def test_12_10_chargebacks_and_claims(env):
    sim, rcv, _, _ = env
    sim.ctl("accounts", {"user_id": UID, "ipn_url": rcv.url + "?via=ipn"})
    pid = paid_instore(sim)["payment_id"]
    cb = sim.ctl("chargeback", {"payment_id": pid})
    assert cb["status"] == "charged_back" and cb["chargeback_id"]
    cid = cb["chargeback_id"]
    item = wait_for(lambda: rcv.find(topic="chargebacks", id=cid), what="chargebacks IPN")[0]
    assert item["q"]["via"] == "ipn"
    st, _, js = sim.api("GET", "/v1/chargebacks/%s" % cid)
    assert st == 200 and js["id"] == cid and js["payments"] == [pid]
    other_account(sim)
    assert sim.request("GET", "/v1/chargebacks/%s" % cid, headers=OTHER)[0] == 404
    assert sim.api("GET", "/v1/payments/%d" % pid)[2]["status"] == "charged_back"
    claim = sim.ctl("claim", {"payment_id": pid})
    item = wait_for(lambda: rcv.find(**{"type": "topic_claims_integration_wh",
                                        "data.id": claim["id"]}), what="claim webhook")[0]
    assert json.loads(item["body"])["type"] == "topic_claims_integration_wh"


def test_12_11_dynamic_and_hybrid_qr_data(env):
    sim, _, _, pos = env
    dyn = qr_order("D-1", amount="50.00")
    dyn["config"]["qr"]["mode"] = "dynamic"
    st, _, d = sim.api("POST", "/v1/orders", dyn, {"X-Idempotency-Key": "d1"})
    assert st == 201 and d["config"]["qr"]["mode"] == "dynamic"
    qr = d["type_response"]["qr_data"]
    tags = tlv(qr)
    assert tags["00"] == "01" and tags["01"] == "12"  # dynamic point of initiation
    assert tags["54"] == "50.00" and tags["53"] == "032" and tags["58"] == "AR"
    assert "COM.MERCADOLIBRE" in tags["43"] and qr[-4:] == crc16(qr[:-4])
    assert sim.api("GET", "/v1/orders/" + d["id"])[2]["type_response"]["qr_data"] == qr
    # a dynamic QR leaves the POS's static QR free; a static order has no qr_data
    st, _, s1 = sim.api("POST", "/v1/orders", qr_order("S-1"), {"X-Idempotency-Key": "s1"})
    assert st == 201 and "type_response" not in s1
    hyb = qr_order("H-1", amount="20.00")
    hyb["config"]["qr"]["mode"] = "hybrid"
    assert sim.api("POST", "/v1/orders", hyb, {"X-Idempotency-Key": "h0"})[0] == 409
    sim.api("POST", "/v1/orders/%s/cancel" % s1["id"], None, {"X-Idempotency-Key": "s1c"})
    st, _, h = sim.api("POST", "/v1/orders", hyb, {"X-Idempotency-Key": "h1"})
    assert st == 201 and tlv(h["type_response"]["qr_data"])["54"] == "20.00"
    assert h["type_response"]["qr_data"] != qr
    # both QRs reach the hybrid order: the POS's static one by a scan
    assert sim.ctl("scan", {"user_id": UID, "external_pos_id": "SUC001POS001"}) == {"order_id": h["id"]}
    assert sim.ctl("pay", {"user_id": UID, "order_id": d["id"]})["order_status"] == "processed"


def test_12_12_date_formats(env):
    sim, _, _, _ = env
    forms = {"offset": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}-04:00$",
             "z": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$",
             "micro": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}-04:00$",
             "malformed": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d04:00$"}
    import re
    for i, (style, rx) in enumerate(forms.items()):
        sim.ctl("accounts", {"user_id": UID, "date_format": style})
        res = paid_instore(sim, "DATE-%d" % i, 10)
        pay = sim.api("GET", "/v1/payments/%d" % res["payment_id"])[2]
        mo = sim.api("GET", "/merchant_orders/%d" % res["merchant_order_id"])[2]
        for v in (pay["date_created"], pay["date_last_updated"], pay["date_approved"],
                  mo["last_updated"]):
            assert re.match(rx, v), (style, v)
    o = sim.api("POST", "/v1/orders", qr_order(), {"X-Idempotency-Key": "z1"})[2]
    assert re.match(forms["z"], o["created_date"])


def test_12_13_payments_search_by_time_window(env):
    sim, _, _, _ = env
    pids = []
    for i in range(3):
        pids.append(paid_instore(sim, "WIN-%d" % i, 10)["payment_id"])
        if i < 2:
            sim.ctl("clock", {"advance": 3600})
    base = "/v1/payments/search?range=date_created&begin_date=NOW-90MINUTES&end_date=NOW"
    js = sim.api("GET", base + "&sort=date_created&criteria=desc")[2]
    assert [p["id"] for p in js["results"]] == [pids[2], pids[1]] and js["paging"]["total"] == 2
    js = sim.api("GET", base + "&sort=date_created&criteria=asc&limit=1&offset=1")[2]
    assert [p["id"] for p in js["results"]] == [pids[2]]
    assert js["paging"] == {"total": 2, "limit": 1, "offset": 1}
    # ISO-8601 bounds; a refund of the oldest sale moves its date_last_updated
    first = sim.api("GET", "/v1/payments/%d" % pids[0])[2]["date_created"]
    js = sim.api("GET", "/v1/payments/search?range=date_created&begin_date=%s"
                 "&end_date=NOW-100MINUTES" % first.replace("+", "%2B"))[2]
    assert [p["id"] for p in js["results"]] == [pids[0]]
    sim.ctl("clock", {"advance": 120})
    sim.api("POST", "/v1/payments/%d/refunds" % pids[0], None, {"X-Idempotency-Key": "w1"})
    js = sim.api("GET", "/v1/payments/search?range=date_last_updated&begin_date=NOW-1MINUTES"
                 "&end_date=NOW&sort=date_last_updated&criteria=desc")[2]
    assert [p["id"] for p in js["results"]] == [pids[0]]
    for bad in ("limit=1001", "range=date_paid&begin_date=NOW-1HOURS&end_date=NOW",
                "range=date_created&begin_date=yesterday&end_date=NOW"):
        assert sim.api("GET", "/v1/payments/search?" + bad)[0] == 400, bad
    assert sim.api("GET", "/v1/payments/search?limit=1000")[0] == 200


def test_users_me(env):
    sim, _, _, _ = env
    st, _, me = sim.api("GET", "/users/me")
    assert st == 200 and me["id"] == UID and me["site_id"] == "MLA"
    assert sim.request("GET", "/users/me", headers={"Authorization": "Bearer nope"})[0] == 401


if __name__ == "__main__":
    sys.exit(pytest.main(["-q", __file__]))
