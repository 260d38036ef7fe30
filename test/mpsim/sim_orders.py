"""Orders API (type "qr"): POST /v1/orders, GET /v1/orders/{id},
POST /v1/orders/{id}/cancel and POST /v1/orders/{id}/refund.

Every POST needs X-Idempotency-Key: the same key with the same body replays
the first successful answer, with a different body it is a 409.  Only one
order in status "created" may be attached to a POS's static QR at a time.
Handlers run with State.lock held.
"""

import json
import re
from decimal import Decimal

from sim_util import (D, amount_str, emv_dynamic_qr, integer_message, iso_z, now, orders_err,
                      parse_amount_str, parse_duration, public, ulid)

ORDER_ID_RE = re.compile(r"^ORD(TST)?[0-9A-HJKMNP-TV-Z]{26}$")
REF_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def err(status, code, message, details=None):
    return orders_err(status, code, message, details)


def _fingerprint(obj):
    return json.dumps(obj, sort_keys=True, default=str)


def _key(ctx):
    key = ctx.headers.get("x-idempotency-key")
    if not key:
        raise err(400, "empty_required_header", "Header X-Idempotency-Key is required",
                  ["X-Idempotency-Key"])
    return key


def _replay(state, ctx, scope, key, fp):
    ikey = (ctx.acct["user_id"], scope, key)
    hit = state.idem.get(ikey)
    if hit is None:
        return None
    if hit[0] != fp:
        raise err(409, "idempotency_key_already_used",
                  "The X-Idempotency-Key was already used with a different request")
    return hit[1], hit[2], {"X-Idempotency-Replayed": "true"}


def _remember(state, ctx, scope, key, fp, status, body):
    state.idem[(ctx.acct["user_id"], scope, key)] = (fp, status, body)


def _invalid(msg, field):
    return err(400, "invalid_properties", msg, [field])


def _amount(text, field, integer, currency):
    v = parse_amount_str(text)
    if v is None:
        raise _invalid("%s must be a string amount with two decimals (e.g. \"50.00\")" % field,
                       field)
    if integer and v != v.to_integral_value():
        raise _invalid(integer_message(currency), field)
    return v


# The properties a QR order may carry (§4.4); any other is answered with 400
# unsupported_properties, e.g. $.notification_url (§12.7).
KNOWN = {
    "$": {"type", "external_reference", "config", "transactions", "total_amount",
          "description", "expiration_time", "items", "discounts", "integration_data",
          "taxes", "processing_mode"},
    "$.config": {"qr"},
    "$.config.qr": {"external_pos_id", "mode"},
    "$.transactions": {"payments", "cash_outs"},
    "$.transactions.payments[]": {"amount"},
    "$.items[]": {"title", "unit_price", "quantity", "unit_measure", "external_code",
                  "external_categories", "description", "picture_url"},
    "$.integration_data": {"platform_id", "integrator_id", "sponsor"},
    "$.discounts": {"payment_methods"},
}

MIN_EXPIRY = 30                 # PT30S (§12.4)
MAX_EXPIRY = 3600 * 3600        # PT3600H
STATIC_MAX_DEFAULT = 600        # a static QR order: 10 minutes, default and cap


def unsupported(body):
    """The JSON paths of the properties MP does not know, in order."""
    out = []

    def walk(obj, path):
        if path not in KNOWN or not isinstance(obj, dict):
            return
        for k, v in obj.items():
            if k not in KNOWN[path]:
                out.append("%s.%s" % (path, k))
                continue
            sub = "%s.%s" % (path, k)
            if isinstance(v, list):
                for it in v:
                    walk(it, sub + "[]")
            else:
                walk(v, sub)
    walk(body, "$")
    return out


def h_create(state, ctx):
    key = _key(ctx)
    body = ctx.json()
    fp = _fingerprint(body)
    r = _replay(state, ctx, "create", key, fp)
    if r:
        return r
    acct = ctx.acct
    uid = acct["user_id"]
    site = state.site(acct)
    integer, cur = site["integer"], site["currency"]
    if not isinstance(body, dict):
        raise err(400, "invalid_request", "The body must be a JSON object")
    extra = unsupported(body)
    if extra:
        raise err(400, "unsupported_properties", "unsupported properties: %s"
                  % ", ".join(extra), extra)
    missing = [p for p in ("type", "external_reference", "config", "transactions")
               if p not in body]
    if missing:
        raise err(400, "required_properties", "missing properties: %s" % ", ".join(missing),
                  missing)
    if body["type"] != "qr":
        raise _invalid("type must be one of: qr", "type")
    ref = body["external_reference"]
    if not isinstance(ref, str) or not REF_RE.match(ref):
        raise _invalid("external_reference must have up to 64 characters "
                       "(letters, digits, '-' and '_')", "external_reference")
    qr = (body["config"] or {}).get("qr") if isinstance(body["config"], dict) else None
    if not isinstance(qr, dict) or not isinstance(qr.get("external_pos_id"), str):
        raise err(400, "required_properties", "missing properties: config.qr.external_pos_id",
                  ["config.qr.external_pos_id"])
    mode = qr.get("mode", "static")
    if mode not in ("static", "dynamic", "hybrid"):
        raise _invalid("config.qr.mode must be one of: static, dynamic, hybrid", "config.qr.mode")
    tx = body["transactions"]
    pays = tx.get("payments") if isinstance(tx, dict) else None
    if not isinstance(pays, list) or not pays:
        raise err(400, "required_properties", "missing properties: transactions.payments",
                  ["transactions.payments"])
    if len(pays) != 1 or not isinstance(pays[0], dict):
        raise _invalid("transactions.payments must have exactly one payment",
                       "transactions.payments")
    amount = _amount(pays[0].get("amount"), "transactions.payments[0].amount", integer, cur)
    if amount <= 0:
        raise _invalid("transactions.payments[0].amount must be greater than 0",
                       "transactions.payments[0].amount")
    total = amount
    if "total_amount" in body:
        total = _amount(body["total_amount"], "total_amount", integer, cur)
        if total != amount:
            raise _invalid("total_amount must be equal to the sum of the transactions",
                           "total_amount")
    if acct.get("orders_min_amount") is not None and total < D(str(acct["orders_min_amount"])):
        raise _invalid("Amount must be greater than or equal to %s"
                       % amount_str(D(str(acct["orders_min_amount"])), integer),
                       "transactions.payments[0].amount")
    desc = body.get("description")
    if desc is not None and (not isinstance(desc, str) or len(desc) > 150):
        raise _invalid("description must be a string of up to 150 characters", "description")
    cap = state.config.get("static_qr_max_ttl", STATIC_MAX_DEFAULT)
    static = mode == "static" and cap is not None
    exp = body.get("expiration_time", "PT10M" if static else "PT15M")
    secs = parse_duration(exp)
    if secs is None:
        raise _invalid("expiration_time must be an ISO-8601 duration such as PT15M",
                       "expiration_time")
    if secs < MIN_EXPIRY or secs > MAX_EXPIRY:
        raise _invalid("expiration_time must be between PT30S and PT3600H", "expiration_time")
    if static:
        secs = min(secs, float(cap))
    items = body.get("items")
    if items is not None:
        if not isinstance(items, list):
            raise _invalid("items must be an array", "items")
        for i, it in enumerate(items):
            f = "items[%d]" % i
            if not isinstance(it, dict) or not isinstance(it.get("title"), str):
                raise _invalid("%s.title is required" % f, f + ".title")
            _amount(it.get("unit_price"), f + ".unit_price", integer, cur)
            q = it.get("quantity")
            if isinstance(q, bool) or not isinstance(q, int) or q <= 0:
                raise _invalid("%s.quantity must be a positive integer" % f, f + ".quantity")
    pos = state.pos_by_ext(uid, qr["external_pos_id"])
    if not pos:
        raise err(400, "pos_not_found", "No point of sale with external_pos_id %s"
                  % qr["external_pos_id"], ["config.qr.external_pos_id"])
    if mode in ("static", "hybrid"):
        cur_order = state.order_for_pos(uid, pos["external_id"])
        if cur_order is not None and cur_order["_expires_at"] <= now():
            state.order_expire(cur_order)
            cur_order = None
        if cur_order is not None:
            raise err(409, "order_already_exists",
                      "There is already an order in status created for the point of sale %s"
                      % pos["external_id"], [cur_order["id"]])
    t = now()
    prefix = "ORD" if acct["live_mode"] else "ORDTST"
    oid = prefix + ulid(t)
    order = {"id": oid, "type": "qr", "processing_mode": "automatic",
             "external_reference": ref}
    if desc is not None:
        order["description"] = desc
    order.update({
        "total_amount": body.get("total_amount", amount_str(total, integer)),
        "expiration_time": exp, "country_code": site["country3"], "user_id": str(uid),
        "status": "created", "status_detail": "created", "currency": cur,
        "created_date": iso_z(t), "last_updated_date": iso_z(t),
        "integration_data": dict({"application_id": str(acct["application_id"])},
                                 **(body.get("integration_data") or {})),
        "transactions": {"payments": [{"id": "PAY" + ulid(t), "amount": pays[0]["amount"],
                                       "status": "created",
                                       "status_detail": "ready_to_process"}]},
        "config": {"qr": {"external_pos_id": pos["external_id"], "mode": mode}}})
    for k in ("items", "discounts", "taxes"):
        if k in body:
            order[k] = body[k]
    if mode != "static":
        order["type_response"] = {"qr_data": emv_dynamic_qr(
            oid, pos["name"], site, amount_str(total, integer))}
    order.update({"_user": uid, "_expires_at": t + secs, "_version": 1,
                  "_pos_id": pos["id"], "_store_id": pos["store_id"]})
    state.orders[oid] = order
    resp = public(order)
    _remember(state, ctx, "create", key, fp, 201, resp)
    return 201, resp, None


def _order(state, ctx, oid, owner_error=False):
    if not ORDER_ID_RE.match(oid):
        raise err(400, "invalid_path_param", "order_id must be ORD followed by 26 characters",
                  ["order_id"])
    o = state.orders.get(oid)
    if not o:
        raise err(404, "order_not_found", "Order %s not found" % oid)
    if o["_user"] != ctx.acct["user_id"]:
        if owner_error:
            raise err(400, "invalid_order_owner", "The order does not belong to the caller")
        raise err(404, "order_not_found", "Order %s not found" % oid)
    return o


def h_get(state, ctx, oid):
    o = _order(state, ctx, oid)
    if o["status"] == "created" and o["_expires_at"] <= now():
        state.order_expire(o)
    return 200, public(o), None


def h_cancel(state, ctx, oid):
    key = _key(ctx)
    fp = _fingerprint(oid)
    r = _replay(state, ctx, "cancel", key, fp)
    if r:
        return r
    o = _order(state, ctx, oid)
    if o["status"] == "created" and o["_expires_at"] <= now():
        state.order_expire(o)
    if o["status"] != "created":
        raise err(409, "cannot_cancel_order",
                  "The order cannot be canceled in status %s" % o["status"])
    o["status"] = o["status_detail"] = "canceled"
    for p in o["transactions"]["payments"]:
        p["status"], p["status_detail"] = "canceled", "canceled_by_api"
    state.order_touch(o, "order.canceled")
    resp = public(o)
    _remember(state, ctx, "cancel", key, fp, 200, resp)
    return 200, resp, None


def h_refund(state, ctx, oid):
    key = _key(ctx)
    body = ctx.json(empty={})
    if body is None:
        body = {}
    fp = _fingerprint([oid, body])
    r = _replay(state, ctx, "refund", key, fp)
    if r:
        return r
    o = _order(state, ctx, oid, owner_error=True)
    acct = ctx.acct
    site = state.site(acct)
    integer = site["integer"]
    if o["status"] != "processed":
        raise err(409, "invalid_order_status",
                  "The order cannot be refunded in status %s" % o["status"])
    if not isinstance(body, dict):
        raise err(400, "invalid_request", "The body must be a JSON object")
    tx = o["transactions"]["payments"][0]
    refunds = o["transactions"].setdefault("refunds", [])
    already = sum((D(x["amount"]) for x in refunds), Decimal(0))
    remaining = D(o["total_paid_amount"]) - already
    amount = remaining
    if body.get("transactions") is not None:
        txs = body["transactions"]
        if not isinstance(txs, list) or len(txs) != 1 or not isinstance(txs[0], dict):
            raise _invalid("transactions must have one payment", "transactions")
        if txs[0].get("id") != tx["id"]:
            raise _invalid("transactions[0].id must be a payment of the order",
                           "transactions[0].id")
        amount = _amount(txs[0].get("amount"), "transactions[0].amount", integer,
                         site["currency"])
        if amount <= 0:
            raise _invalid("transactions[0].amount must be greater than 0",
                           "transactions[0].amount")
        if amount < remaining and not acct.get("orders_partial_refunds"):
            raise err(400, "unsupported_partially_refunds",
                      "Partial refunds are not supported for this order")
    if remaining <= 0 or amount > remaining:
        raise err(400, "refund_amount_exceeds",
                  "The refund amount exceeds the available amount")
    ref = {"id": "REF" + ulid(), "transaction_id": tx["id"],
           "reference_id": str(o["_payment_ref"]), "amount": amount_str(amount, integer),
           "status": "processing"}
    refunds.append(ref)
    o["last_updated_date"] = iso_z()
    delay = acct.get("orders_refund_delay")
    if delay is not None:
        o["_refund_due"] = now() + float(delay)
    resp = {"id": o["id"], "status": o["status"], "status_detail": o["status_detail"],
            "transactions": {"refunds": [dict(ref)]}}
    _remember(state, ctx, "refund", key, fp, 201, resp)
    return 201, resp, None


S = r"([^/]*)"
ROUTES = [
    ("POST", r"/v1/orders", h_create),
    ("GET", r"/v1/orders/" + S, h_get),
    ("POST", r"/v1/orders/" + S + "/cancel", h_cancel),
    ("POST", r"/v1/orders/" + S + "/refund", h_refund),
]
