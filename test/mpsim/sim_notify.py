"""Notification delivery: what Mercado Pago POSTs to merchants, with retries.

Builders turn model events (a merchant order created or updated, a payment
created or updated, an Orders API order changed) into HTTP requests shaped as
MP sends them: IPN (?topic=&id=), webhooks (?data.id=&type= with a signed
body), and the unsigned topic_merchant_order_wh webhook.  Requests are built
(and signed) when the event happens, under the state lock, and queued; a
small pool of delivery threads POSTs them without holding any lock, so an API
answer never waits for a notification.  Each attempt is logged; non-2xx
answers and connection errors are retried on a short test schedule.
"""

import collections
import hashlib
import heapq
import hmac
import http.client
import itertools
import secrets
import ssl
import sys
import threading
import time
import uuid
from urllib.parse import urlsplit, urlencode, parse_qs

from sim_util import dumps, iso_mp, iso_z, SITES

USER_AGENT = "restclient-node/4.15.3"


def add_query(url, params):
    """Append params to url's query string, keeping what is already there."""
    extra = urlencode(params)
    if not extra:
        return url
    base, frag = (url.split("#", 1) + [""])[:2]
    sep = "&" if "?" in base else "?"
    if base.endswith("?") or base.endswith("&"):
        sep = ""
    return base + sep + extra + ("#" + frag if frag else "")


def signature(secret, data_id, request_id, ts):
    """MP's x-signature v1: HMAC-SHA256 over id:..;request-id:..;ts:..;"""
    manifest = ""
    if data_id is not None:
        manifest += "id:%s;" % data_id
    if request_id is not None:
        manifest += "request-id:%s;" % request_id
    manifest += "ts:%s;" % ts
    return hmac.new(secret.encode(), manifest.encode(), hashlib.sha256).hexdigest()


class Notifier:
    """Queue of outgoing notifications, delivered by worker threads."""

    def __init__(self, delays, timeout=22.0, workers=4, verbose=False, cafile=None,
                 log_limit=100000):
        self.delays = list(delays)
        self.timeout = timeout
        self.verbose = verbose
        self.cv = threading.Condition()
        self.heap = []
        self.log = collections.deque(maxlen=log_limit)
        self.seq = itertools.count(1)
        self.attempt_seq = itertools.count(1)
        self.notif_ids = itertools.count(120000000001)
        self.paused = False
        self.generation = 0
        self.inflight = 0
        if cafile:
            self.ctx = ssl.create_default_context(cafile=cafile)
        else:
            self.ctx = ssl._create_unverified_context()
        for i in range(workers):
            t = threading.Thread(target=self._worker, name="notify-%d" % i, daemon=True)
            t.start()

    # ------------------------------------------------------------ queueing

    def reset(self):
        with self.cv:
            self.heap.clear()
            self.log.clear()
            self.generation += 1
            self.paused = False
            self.cv.notify_all()

    def set_paused(self, paused):
        with self.cv:
            self.paused = bool(paused)
            self.cv.notify_all()

    def pending(self):
        with self.cv:
            return len(self.heap) + self.inflight

    def submit(self, url, body, meta, sign=None, headers=None):
        """Queue a POST of body (a dict or None) to url.

        sign: None, or {"secret": s, "data_id": id-or-None} to add x-signature
        (the id is signed as given; callers lowercase it if the account says so).
        """
        rid = str(uuid.uuid4())
        ts = str(int(time.time() * 1000))
        h = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
             "X-Request-Id": rid, "X-Socket-Timeout": "22000"}
        if sign:
            v1 = signature(sign["secret"], sign.get("data_id"), rid, ts)
            h["X-Signature"] = "ts=%s,v1=%s" % (ts, v1)
        if headers:
            h.update(headers)
        d = {"id": next(self.seq), "url": url, "headers": h,
             "body": dumps(body) if body is not None else "",
             "meta": meta, "attempt": 0}
        with self.cv:
            heapq.heappush(self.heap, (time.time(), d["id"], d))
            self.cv.notify()
        return d["id"]

    def resend(self, delivery_id):
        """Queue again a logged delivery (same headers and body)."""
        with self.cv:
            for e in self.log:
                if e["delivery_id"] == delivery_id:
                    d = {"id": next(self.seq), "url": e["url"], "headers": dict(e["_headers"]),
                         "body": e["body"], "meta": dict(e["meta"], resent_from=delivery_id),
                         "attempt": 0}
                    heapq.heappush(self.heap, (time.time(), d["id"], d))
                    self.cv.notify()
                    return d["id"]
        return None

    def deliveries(self):
        with self.cv:
            return [{k: v for k, v in e.items() if not k.startswith("_")} for e in self.log]

    # ------------------------------------------------------------ delivery

    def _worker(self):
        while True:
            with self.cv:
                while True:
                    if self.heap and not self.paused:
                        wait = self.heap[0][0] - time.time()
                        if wait <= 0:
                            break
                        self.cv.wait(wait)
                    else:
                        self.cv.wait(1.0)
                _, _, d = heapq.heappop(self.heap)
                gen = self.generation
                self.inflight += 1
            headers = dict(d["headers"], **{"X-Retry": str(d["attempt"])})
            started = time.time()
            status, error, answer = self._post(d["url"], headers, d["body"])
            with self.cv:
                self.inflight -= 1
                if gen != self.generation:
                    continue
                parts = urlsplit(d["url"])
                entry = {"seq": next(self.attempt_seq), "delivery_id": d["id"],
                         "attempt": d["attempt"], "url": d["url"], "path": parts.path,
                         "query": parts.query,
                         "headers": {k.lower(): v for k, v in headers.items()},
                         "body": d["body"], "status": status, "error": error,
                         "answer": answer, "sent_at": started, "duration_ms":
                         int((time.time() - started) * 1000), "meta": d["meta"],
                         "_headers": d["headers"]}
                self.log.append(entry)
                ok = status is not None and 200 <= status < 300
                if not ok and d["attempt"] < len(self.delays):
                    delay = self.delays[d["attempt"]]
                    d["attempt"] += 1
                    heapq.heappush(self.heap, (time.time() + delay, d["id"], d))
                    self.cv.notify()
            if self.verbose:
                print("mpsim notify %s -> %s %s" % (d["url"], status, error or ""),
                      file=sys.stderr, flush=True)

    def _post(self, url, headers, body):
        try:
            parts = urlsplit(url)
            port = parts.port
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(parts.hostname, port or 443,
                                                   timeout=self.timeout, context=self.ctx)
            elif parts.scheme == "http":
                conn = http.client.HTTPConnection(parts.hostname, port or 80,
                                                  timeout=self.timeout)
            else:
                return None, "unsupported scheme", None
            target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
            try:
                conn.request("POST", target, body=body.encode("utf-8"), headers=headers)
                resp = conn.getresponse()
                data = resp.read(65536)
                return resp.status, None, data.decode("utf-8", "replace")
            finally:
                conn.close()
        except Exception as e:  # noqa: BLE001 - any failure is a failed attempt
            return None, "%s: %s" % (type(e).__name__, e), None

    # ------------------------------------------------------------ builders

    @staticmethod
    def _targets(acct, notification_url):
        """(channel, url) pairs: the object's notification_url or the panel URLs."""
        if notification_url:
            q = parse_qs(urlsplit(notification_url).query)
            news = (q.get("source_news") or [None])[0]
            chans = ["ipn", "webhook"]
            if news == "webhooks":
                chans = ["webhook"]
            elif news == "ipn":
                chans = ["ipn"]
            return [(c, notification_url) for c in chans]
        out = []
        if acct.get("ipn_url"):
            out.append(("ipn", acct["ipn_url"]))
        if acct.get("webhook_url"):
            out.append(("webhook", acct["webhook_url"]))
        return out

    @staticmethod
    def _sign(acct, data_id, flag):
        """The x-signature of a QR webhook, per the account's `signature`
        (§12.3: QR notifications may not verify): valid (the secret),
        invalid (another key), none (no header).  sign_orders/sign_payments
        false still mean none."""
        mode = acct.get("signature") or "valid"
        if not acct.get(flag, True):
            mode = "none"
        if mode == "none" or (mode == "valid" and not acct.get("webhook_secret")):
            return None
        if acct.get("sign_lowercase"):
            data_id = data_id.lower()
        secret = acct["webhook_secret"] if mode == "valid" else secrets.token_hex(16)
        return {"secret": secret, "data_id": data_id}

    def _ipn(self, url, topic, rid, body, acct):
        # MP sends an x-signature on IPN too, but it cannot be validated.
        self.submit(add_query(url, [("topic", topic), ("id", str(rid))]), body,
                    {"kind": "ipn", "topic": topic, "resource_id": str(rid),
                     "user_id": acct["user_id"]},
                    sign={"secret": secrets.token_hex(16), "data_id": None})

    def merchant_order(self, acct, mo, action):
        """Announce a merchant order creation ("create") or change ("update")."""
        kinds = acct["_notify"]
        for chan, url in self._targets(acct, mo.get("notification_url")):
            if chan == "ipn" and ("ipn", "merchant_order") in kinds:
                self._ipn(url, "merchant_order", mo["id"],
                          {"resource": "https://api.mercadolibre.com/merchant_orders/%d"
                           % mo["id"], "topic": "merchant_order"}, acct)
            if chan == "webhook" and ("webhook", "merchant_order") in kinds:
                site = SITES[acct["site_id"]]
                body = {"action": action, "application_id": int(acct["application_id"]),
                        "data": {"currency_id": site["currency"], "marketplace": "NONE",
                                 "status": mo["status"]},
                        "date_created": iso_mp(), "id": str(mo["id"]),
                        "live_mode": acct["live_mode"], "status": mo["status"],
                        "type": "topic_merchant_order_wh", "user_id": acct["user_id"],
                        "version": mo["_version"]}
                # QR merchant-order webhooks are not signed.
                self.submit(url, body, {"kind": "webhook", "topic": "topic_merchant_order_wh",
                                        "resource_id": str(mo["id"]),
                                        "user_id": acct["user_id"]})

    def payment(self, acct, pay, action):
        """Announce a payment ("payment.created" / "payment.updated")."""
        kinds = acct["_notify"]
        pid = str(pay["id"])
        for chan, url in self._targets(acct, pay.get("notification_url")):
            if chan == "ipn" and ("ipn", "payment") in kinds:
                self._ipn(url, "payment", pid, {"resource": pid, "topic": "payment"}, acct)
            if chan == "webhook" and ("webhook", "payment") in kinds:
                body = {"action": action, "api_version": "v1",
                        "application_id": str(acct["application_id"]),
                        "data": {"id": pid}, "date_created": iso_mp(),
                        "id": next(self.notif_ids), "live_mode": acct["live_mode"],
                        "type": "payment", "user_id": acct["user_id"]}
                sign = self._sign(acct, pid, "sign_payments")
                self.submit(add_query(url, [("data.id", pid), ("type", "payment")]), body,
                            {"kind": "webhook", "topic": "payment", "resource_id": pid,
                             "action": action, "user_id": acct["user_id"]}, sign=sign)

    def order(self, acct, order, action):
        """Announce an Orders API change (order.processed, order.expired, ...)."""
        url = acct.get("webhook_url")
        if not url or ("webhook", "order") not in acct["_notify"]:
            return
        oid = order["id"]
        data = {"external_reference": order.get("external_reference"), "id": oid,
                "status": order["status"], "status_detail": order["status_detail"],
                "total_amount": order["total_amount"], "type": order["type"],
                "version": order["_version"]}
        if "total_paid_amount" in order:
            data["total_paid_amount"] = order["total_paid_amount"]
        if order["status"] in ("processed", "refunded", "canceled"):
            data["transactions"] = order["transactions"]
        body = {"action": action, "api_version": "v1",
                "application_id": str(acct["application_id"]), "data": data,
                "date_created": iso_z(nanos=True), "live_mode": acct["live_mode"],
                "type": "order", "user_id": str(acct["user_id"])}
        sign = self._sign(acct, oid, "sign_orders")
        self.submit(add_query(url, [("data.id", oid), ("type", "order")]), body,
                    {"kind": "webhook", "topic": "order", "resource_id": oid,
                     "action": action, "user_id": acct["user_id"]}, sign=sign)


    def chargeback(self, acct, cb, notification_url=None):
        """Announce a chargeback: IPN ?topic=chargebacks&id=<chargeback id> (§12.10)."""
        if ("ipn", "chargebacks") not in acct["_notify"]:
            return
        for chan, url in self._targets(acct, notification_url):
            if chan == "ipn":
                self._ipn(url, "chargebacks", cb["id"],
                          {"resource": cb["id"], "topic": "chargebacks"}, acct)

    def claim(self, acct, claim):
        """Announce a claim: webhook type topic_claims_integration_wh (§12.10),
        to the account's webhook URL, shaped like the other QR webhooks."""
        url = acct.get("webhook_url")
        if not url or ("webhook", "claims") not in acct["_notify"]:
            return
        cid = claim["id"]
        body = {"action": "created", "api_version": "v1",
                "application_id": str(acct["application_id"]),
                "data": {"id": cid}, "date_created": iso_mp(),
                "id": next(self.notif_ids), "live_mode": acct["live_mode"],
                "resource": "/v1/claims/%s" % cid,
                "type": "topic_claims_integration_wh", "user_id": acct["user_id"]}
        self.submit(add_query(url, [("data.id", cid), ("type", "topic_claims_integration_wh")]),
                    body, {"kind": "webhook", "topic": "topic_claims_integration_wh",
                           "resource_id": cid, "action": "created", "user_id": acct["user_id"]},
                    sign=self._sign(acct, cid, "sign_payments"))
