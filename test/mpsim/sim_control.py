"""The /_sim/ control interface: the test harness plays Mercado Pago's
panel (accounts, stores, POS), the customer (scan, pay) and fate (expiry,
chargebacks, refunds completing, faults).  No auth; JSON in and out.

Also holds the fault queue and the log of API requests, which the HTTP
handler consults for every API (non-control) request.
"""

import collections
import random
import re
import threading
import time

from sim_util import D, ApiError, advance_clock, is_number, loads, public
import sim_api


# Transient Orders API answers to cancel and refund (§12.6), by code.
TRANSIENT = {"processor_communication_error": 409, "post_processing_operation_pending": 409,
             "unprocessable_entity": 422}


class Faults:
    """Queued faults; the first matching one with times > 0 is consumed."""

    FIELDS = {"method", "path", "status", "times", "retry_after", "body", "drop",
              "latency_ms", "malformed", "headers", "process", "code", "chance"}

    def __init__(self):
        self.lock = threading.Lock()
        self.items = []
        self.ids = 0
        self.random = random.Random()

    def add(self, spec):
        if not isinstance(spec, dict):
            raise ValueError("a fault is a JSON object")
        bad = set(spec) - self.FIELDS
        if bad:
            raise ValueError("unknown fault fields: %s" % ", ".join(sorted(bad)))
        f = {"method": (spec.get("method") or "*").upper(), "path": spec.get("path") or ".*",
             "status": spec.get("status"), "times": int(spec.get("times", 1)),
             "retry_after": spec.get("retry_after"), "body": spec.get("body"),
             "drop": bool(spec.get("drop", False)), "latency_ms": int(spec.get("latency_ms", 0)),
             "malformed": bool(spec.get("malformed", False)),
             "headers": spec.get("headers") or {}, "process": bool(spec.get("process", False)),
             "code": spec.get("code"), "chance": float(spec.get("chance", 1))}
        re.compile(f["path"])
        if not 0 <= f["chance"] <= 1:
            raise ValueError("chance must be between 0 and 1")
        if f["status"] is None and f["code"] in TRANSIENT:
            f["status"] = TRANSIENT[f["code"]]
        if f["status"] is None and not (f["drop"] or f["malformed"] or f["latency_ms"]):
            raise ValueError("a fault needs status, drop, malformed or latency_ms")
        with self.lock:
            self.ids += 1
            f["id"] = self.ids
            self.items.append(f)
        return f

    def take(self, method, path):
        with self.lock:
            for f in self.items:
                if f["times"] > 0 and f["method"] in ("*", method) and re.search(f["path"], path):
                    if f["chance"] < 1 and self.random.random() >= f["chance"]:
                        continue
                    f["times"] -= 1
                    return dict(f)
        return None

    def list(self):
        with self.lock:
            return [dict(f) for f in self.items if f["times"] > 0]

    def clear(self):
        with self.lock:
            self.items.clear()


class RequestLog:
    """The API requests received, newest last, at most `limit` of them."""

    def __init__(self, limit=100000):
        self.lock = threading.Lock()
        self.items = collections.deque(maxlen=limit)
        self.seq = 0

    def add(self, entry):
        with self.lock:
            self.seq += 1
            entry["seq"] = self.seq
            self.items.append(entry)
        return entry

    def list(self, path_re=None, method=None):
        with self.lock:
            items = list(self.items)
        rx = re.compile(path_re) if path_re else None
        return [e for e in items if (rx is None or rx.search(e["path"]))
                and (method is None or e["method"] == method.upper())]

    def clear(self):
        with self.lock:
            self.items.clear()


def _need(body, *names):
    for n in names:
        if n not in body or body[n] is None:
            raise ValueError("missing field %r" % n)


def _mo_or_pos(st, body):
    """The merchant order named by merchant_order_id, or the one a payment of
    the POS's current order joins (created now, or at scan with mo_at_scan)."""
    acct = st.account(body["user_id"])
    if body.get("merchant_order_id") is not None:
        mo = st.mos.get(int(body["merchant_order_id"]))
        if not mo or mo["_user"] != acct["user_id"]:
            raise ApiError(404, {"error": "unknown merchant order"})
        return acct, mo
    _need(body, "external_pos_id")
    rec = st.current_pos_order(acct["user_id"], body["external_pos_id"])
    if not rec:
        raise ApiError(404, {"error": "nothing on that POS"})
    return acct, st.mo_for_payment(acct, rec)


def c_scan(app, body):
    st = app.state
    _need(body, "user_id", "external_pos_id")
    acct = st.account(body["user_id"])
    uid, ext = acct["user_id"], body["external_pos_id"]
    if not st.pos_by_ext(uid, ext):
        raise ApiError(404, {"error": "unknown POS %s" % ext})
    order = st.order_for_pos(uid, ext)
    rec = st.current_pos_order(uid, ext)
    if order:
        return 200, {"order_id": order["id"]}
    if rec:
        mo = st.scan_instore(acct, rec)
        if mo is None:  # no merchant order until a payment (§12.5)
            return 200, {"scanned": True, "merchant_order_id": None,
                         "external_reference": rec["body"].get("external_reference")}
        return 200, {"merchant_order_id": mo["id"]}
    if body.get("wait"):
        st.pending_scans.add((uid, ext))
        return 202, {"pending": True}
    raise ApiError(404, {"error": "no order on POS %s" % ext})


def c_pay(app, body):
    st = app.state
    _need(body, "user_id")
    status = body.get("status", "approved")
    if status not in ("approved", "rejected", "pending", "in_process", "authorized"):
        raise ValueError("status must be approved, rejected, pending, in_process or authorized")
    amount = body.get("amount")
    if amount is not None:
        if not is_number(amount) and not isinstance(amount, str):
            raise ValueError("amount must be a number")
        amount = D(amount)
        if amount <= 0:
            raise ValueError("amount must be positive")
    if body.get("order_id"):
        acct = st.account(body["user_id"])
        o = st.orders.get(body["order_id"])
        if not o or o["_user"] != acct["user_id"]:
            raise ApiError(404, {"error": "unknown order"})
        pay = st.order_pay(acct, o, amount, status, late=bool(body.get("late")),
                           operation_type=body.get("operation_type"),
                           payment_method_id=body.get("payment_method_id"))
        return 200, {"payment_id": pay["id"], "order_id": o["id"], "status": pay["status"],
                     "order_status": o["status"]}
    acct, mo = _mo_or_pos(st, body)
    pay = st.pay_mo(acct, mo, amount, status, body.get("operation_type"),
                    body.get("payment_method_id"))
    return 200, {"payment_id": pay["id"], "merchant_order_id": mo["id"],
                 "status": pay["status"], "merchant_order_status": mo["status"],
                 "order_status": mo["order_status"]}


def c_expire(app, body):
    st = app.state
    if body.get("order_id"):
        o = st.orders.get(body["order_id"])
        if not o:
            raise ApiError(404, {"error": "unknown order"})
        if o["status"] != "created":
            raise ApiError(409, {"error": "order is %s" % o["status"]})
        st.order_expire(o)
        return 200, {"order_id": o["id"], "status": o["status"]}
    _need(body, "user_id", "external_pos_id")
    acct = st.account(body["user_id"])
    key = (acct["user_id"], body["external_pos_id"])
    rec = st.expire_pos_order(key)
    expired = []
    if rec:
        expired = [m["id"] for m in st.mos.values()
                   if m["_pos_order_seq"] == rec["_seq"] and m["status"] == "expired"]
    return 200, {"removed": rec is not None, "expired_merchant_orders": expired}


def _payment(st, body):
    _need(body, "payment_id")
    pay = st.payments.get(int(body["payment_id"]))
    if not pay:
        raise ApiError(404, {"error": "unknown payment"})
    return pay


def c_chargeback(app, body):
    st = app.state
    pay = _payment(st, body)
    status = body.get("status", "charged_back")
    if status not in ("charged_back", "in_mediation"):
        raise ValueError("status must be charged_back or in_mediation")
    cb = st.open_chargeback(pay, status)
    return 200, dict(public(pay), chargeback_id=cb["id"])


def c_claim(app, body):
    st = app.state
    claim = st.open_claim(_payment(st, body))
    return 200, public(claim)


def c_payment_status(app, body):
    st = app.state
    pay = _payment(st, body)
    _need(body, "status")
    st.set_payment_status(pay, body["status"], body.get("status_detail"))
    return 200, public(pay)


def c_complete_refunds(app, body):
    """Finish refunds in process: Orders API refunds (processing -> processed)
    and Payments API refunds (in_process -> approved, or "status":"rejected")."""
    st = app.state
    status = body.get("status", "approved")
    if status not in ("approved", "rejected"):
        raise ValueError("status must be approved or rejected")
    done, refunds = [], []
    if not body.get("payment_id"):
        for o in list(st.orders.values()):
            if body.get("order_id") and o["id"] != body["order_id"]:
                continue
            if st.order_complete_refunds(o):
                done.append(o["id"])
    if not body.get("order_id"):
        for pay in list(st.payments.values()):
            if body.get("payment_id") and pay["id"] != int(body["payment_id"]):
                continue
            for r in list(pay["refunds"]):
                if st.finish_refund(pay, r, status):
                    refunds.append(r["id"])
    return 200, {"completed": done, "payment_refunds": refunds}


def c_notify(app, body):
    st = app.state
    out = {}
    if "paused" in body:
        app.notifier.set_paused(body["paused"])
        out["paused"] = bool(body["paused"])
    if body.get("delivery_id") is not None:
        out["delivery_id"] = app.notifier.resend(int(body["delivery_id"]))
        if out["delivery_id"] is None:
            raise ApiError(404, {"error": "unknown delivery"})
    if body.get("merchant_order_id") is not None:
        mo = st.mos.get(int(body["merchant_order_id"]))
        if not mo:
            raise ApiError(404, {"error": "unknown merchant order"})
        app.notifier.merchant_order(st.accounts[mo["_user"]], mo, body.get("action", "update"))
        out["merchant_order_id"] = mo["id"]
    if body.get("payment_id") is not None:
        pay = _payment(st, body)
        app.notifier.payment(st.accounts[pay["_user"]], pay,
                             body.get("action", "payment.updated"))
        out["payment_id"] = pay["id"]
    if body.get("order_id"):
        o = st.orders.get(body["order_id"])
        if not o:
            raise ApiError(404, {"error": "unknown order"})
        app.notifier.order(st.accounts[o["_user"]], o, body.get("action", "order.%s" % o["status"]))
        out["order_id"] = o["id"]
    return 200, out


def c_config(app, body):
    st = app.state
    for k, v in body.items():
        if k not in st.config:
            raise ValueError("unknown config key %r" % k)
        st.config[k] = v
    return 200, st.config


def c_clock(app, body):
    offset = advance_clock(float(body.get("advance", 0)))
    app.state.tick()
    return 200, {"offset": offset, "now": time.time() + offset}


def _account_view(a):
    return dict(public(a), notify=a["notify"])


def dispatch(app, method, path, query, raw):
    """Run one control request; return (status, body, headers)."""
    st = app.state
    try:
        body = loads(raw) if raw.strip() else {}
    except ValueError:
        return 400, {"error": "invalid JSON"}, None
    try:
        with st.lock:
            r = _route(app, method, path, query, body)
        return r[0], r[1], None
    except ApiError as e:
        return e.status, e.body, e.headers
    except (ValueError, KeyError, TypeError) as e:
        return 400, {"error": "%s: %s" % (type(e).__name__, e)}, None


def _route(app, method, path, query, body):
    st = app.state
    name = path[len("/_sim/"):].strip("/")
    posting = method == "POST"
    if name == "health":  # pending: deliveries queued or in flight
        return 200, {"ok": True, "pending": app.notifier.pending()}
    if name == "reset" and posting:
        st.reset()
        app.faults.clear()
        app.requests.clear()
        app.notifier.reset()
        return 200, {"ok": True}
    if name == "accounts":
        if posting:
            specs = body if isinstance(body, list) else [body]
            out = []
            for s in specs:
                _need(s, "user_id")
                out.append(_account_view(st.upsert_account(s)))
            return 200, out if isinstance(body, list) else out[0]
        return 200, [_account_view(a) for a in st.accounts.values()]
    if name in ("stores", "pos") and posting:
        _need(body, "user_id")
        acct = st.account(body["user_id"])
        spec = {k: v for k, v in body.items() if k != "user_id"}
        if name == "pos" and spec.get("store_id") is None and spec.get("external_store_id"):
            store = st.store_by_ext(acct["user_id"], spec["external_store_id"])
            if store:
                spec["store_id"] = store["id"]
        fn = sim_api.create_store if name == "stores" else sim_api.create_pos
        return 201, public(fn(st, acct, spec))
    if name == "faults":
        if method == "DELETE":
            app.faults.clear()
            return 200, []
        if posting:
            specs = body if isinstance(body, list) else [body]
            out = [app.faults.add(s) for s in specs]
            return 200, out if isinstance(body, list) else out[0]
        return 200, app.faults.list()
    if name == "requests":
        if method == "DELETE":
            app.requests.clear()
            return 200, []
        return 200, app.requests.list(query.get("path"), query.get("method"))
    if name == "deliveries":
        if method == "DELETE":
            app.notifier.reset()
            return 200, []
        items = app.notifier.deliveries()
        for k in ("topic", "kind"):
            if query.get(k):
                items = [d for d in items if d["meta"].get(k) == query[k]]
        if query.get("url"):
            rx = re.compile(query["url"])
            items = [d for d in items if rx.search(d["url"])]
        return 200, items
    if name == "state":
        return 200, st.dump()
    handlers = {"scan": c_scan, "pay": c_pay, "expire": c_expire, "chargeback": c_chargeback,
                "payment_status": c_payment_status, "complete_refunds": c_complete_refunds,
                "claim": c_claim,
                "notify": c_notify, "config": c_config, "clock": c_clock}
    if name in handlers:
        if not posting:
            return 405, {"error": "use POST"}
        return handlers[name](app, body)
    return 404, {"error": "unknown control endpoint %s" % path}

