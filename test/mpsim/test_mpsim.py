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
    mo_id = sim.ctl("scan", {"user_id": UID, "external_pos_id": "SUC001POS001"})["merchant_order_id"]
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
    res = sim.ctl("pay", {"user_id": UID, "merchant_order_id": mo_id})
    assert res["merchant_order_id"] == mo_id and res["status"] == "approved"
    st, _, mo = sim.api("GET", "/merchant_orders/%d" % mo_id)
    assert mo["id"] == mo_id and mo["status"] == "closed" and mo["order_status"] == "paid"
    assert mo["paid_amount"] == 150 and mo["payments"][0]["operation_type"] == "regular_payment"
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
    assert o["currency"] == "ARS" and o["country_code"] == "ARG" and o["expiration_time"] == "PT15M"
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
    mo_id = sim.ctl("scan", {"user_id": UID, "external_pos_id": "SUC001POS001"})["merchant_order_id"]
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
    sim.api("PUT", ORDERS_PATH, instore_order(notification_url=rcv.url + "/flaky?source_news=ipn"))
    mo_id = sim.ctl("scan", {"user_id": UID, "external_pos_id": "SUC001POS001"})["merchant_order_id"]
    wait_for(lambda: [i for i in rcv.find(topic="merchant_order", id=str(mo_id)) if i["status"] == 200],
             what="successful retry")
    retries = [i["headers"]["x-retry"] for i in rcv.find(topic="merchant_order", id=str(mo_id))]
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
    sim, _, _, _ = env
    assert sim.request("POST", "/_sim/scan", {"user_id": UID, "external_pos_id": "SUC001POS001",
                                              "wait": True})[0] == 202
    sim.ctl("faults", {"method": "PUT", "path": "/orders$", "drop": True, "process": True})
    with pytest.raises((http.client.HTTPException, ConnectionError, socket.error)):
        sim.api("PUT", ORDERS_PATH, instore_order())
    st, _, js = sim.api("GET", "/merchant_orders/search?external_reference=ORDER-1001")
    assert js["total"] == 1 and js["elements"][0]["status"] == "opened"
    assert sim.api("GET", SHORT_PATH)[2][0]["external_reference"] == "ORDER-1001"


if __name__ == "__main__":
    sys.exit(pytest.main(["-q", __file__]))
