"""The classic Mercado Pago API surface: stores, POS, instore v2 orders,
merchant orders, payments and payment refunds; plus routing and auth for
every API request (the Orders API handlers live in sim_orders).

Handlers run with State.lock held (dispatch takes it) and return
(status, body, headers); errors are raised as sim_util.ApiError.
"""

import re
import secrets

from sim_util import (D, ApiError, cause_error, classic, decimals, forbidden_payment,
                      integer_message, iso_mp, iso_z, is_number, loads, now, parse_iso_offset,
                      parse_search_time, public, emv_static_qr)
import sim_orders


class Ctx:
    """One API request as the handlers see it."""

    def __init__(self, method, path, query, headers, body):
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.acct = None
        self.style = "classic"

    def json(self, empty=None):
        """The body as JSON; `empty` when there is no body."""
        if not self.body.strip():
            return empty
        try:
            return loads(self.body)
        except ValueError:
            if self.style == "orders":
                raise sim_orders.err(400, "invalid_json", "The request body is not valid JSON")
            raise classic(400, "bad_request", "Invalid JSON body")

    def q(self, name, default=None):
        return self.query.get(name, default)


# --------------------------------------------------------------------- auth


def check_user(state, ctx, raw, bad_key):
    """The path's user_id must be a number and the token's own user."""
    if not re.fullmatch(r"\d+", raw or ""):
        if ctx.style == "instore":
            raise ierr(state, 400, "invalid_collectorId", "collectorId must be a number")
        raise classic(400, bad_key, "user_id must be a number")
    if int(raw) != ctx.acct["user_id"]:
        if ctx.style == "instore":
            # sandbox probe, API reference §12.6
            raise ierr(state, 400, "bad_request", "Collector ID and Caller ID must be the same")
        raise classic(401, "unauthorized", "The user_id does not match the access token")
    return int(raw)


def ierr(state, status, key, message):
    """Instore v2 error; the error key is sent as "error" or "errorKey", the
    causes as "causes" (§12.7: "and sometimes causes") or "cause"."""
    keyname = state.config.get("instore_error_key") or "error"
    causes = state.config.get("instore_cause_key") or "causes"
    return ApiError(status, {keyname: key, "message": message, "status": status, causes: []})


def page_params(ctx, default_limit):
    try:
        offset = int(ctx.q("offset", 0))
        limit = int(ctx.q("limit", default_limit))
    except ValueError:
        raise classic(400, "bad_request", "offset and limit must be integers")
    if offset < 0 or limit < 0:
        raise classic(400, "bad_request", "offset and limit must be positive")
    return offset, limit


# ------------------------------------------------------------------- stores

DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
LOC_FIELDS = {"street_number", "street_name", "city_name", "state_name", "latitude",
              "longitude", "reference", "zip_code"}
HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


def create_store(state, acct, body):
    """Validate and create a store (API and /_sim/stores)."""
    if not isinstance(body, dict):
        raise classic(400, "VALIDATION_ERROR", "body must be a JSON object")
    for k in body:
        if k not in ("name", "external_id", "location", "business_hours"):
            raise classic(400, "UNKNOWN_FIELD", "unknown field: %s" % k)
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise classic(400, "INVALID_NAME", "name is required and must be a string")
    ext = body.get("external_id")
    if not isinstance(ext, str) or not re.fullmatch(r"[A-Za-z0-9]{1,60}", ext):
        raise classic(400, "VALIDATION_ERROR",
                      "external_id is required, alphanumeric, up to 60 characters")
    loc = body.get("location")
    if not isinstance(loc, dict):
        raise classic(400, "INVALID_LOCATION", "location is required")
    for k in loc:
        if k not in LOC_FIELDS:
            raise classic(400, "UNKNOWN_FIELD", "unknown field: location.%s" % k)
    for f, key in (("street_number", "INVALID_STREET_NUMBER"), ("street_name", "INVALID_STREET_NAME"),
                   ("city_name", "INVALID_CITY_NAME"), ("state_name", "INVALID_STATE_NAME")):
        if not isinstance(loc.get(f), str) or not loc[f].strip():
            raise classic(400, key, "location.%s is required and must be a string" % f)
    for f, key, lim in (("latitude", "INVALID_LATITUDE", 90), ("longitude", "INVALID_LONGITUDE", 180)):
        if not is_number(loc.get(f)) or abs(D(loc[f])) > lim:
            raise classic(400, key, "location.%s must be a number" % f)
    if "reference" in loc and not isinstance(loc["reference"], str):
        raise classic(400, "INVALID_REFERENCE", "location.reference must be a string")
    if "zip_code" in loc and not isinstance(loc["zip_code"], str):
        raise classic(400, "INVALID_ZIP_CODE", "location.zip_code must be a string")
    bh = body.get("business_hours")
    if bh is not None:
        if not isinstance(bh, dict):
            raise classic(400, "INVALID_BUSINESS_HOURS", "business_hours must be an object")
        for day, ranges in bh.items():
            if day not in DAYS:
                raise classic(400, "INVALID_DAY", "invalid day: %s" % day)
            if not isinstance(ranges, list) or len(ranges) > 4 or not all(
                    isinstance(r, dict) and set(r) == {"open", "close"}
                    and isinstance(r["open"], str) and isinstance(r["close"], str)
                    and HHMM.match(r["open"]) and HHMM.match(r["close"])
                    and r["open"] < r["close"] for r in ranges):
                raise classic(400, "INVALID_BUSINESS_HOURS",
                              "business_hours.%s must be up to 4 {open,close} HH:MM ranges" % day)
    if state.store_by_ext(acct["user_id"], ext):
        raise classic(400, "VALIDATION_ERROR", "External_id-already-used-")
    site = state.site(acct)
    sid = str(next(state.store_ids))
    store = {"id": sid, "name": name, "date_creation": iso_z(),
             "business_hours": bh or {},
             "location": {"address_line": "%s %s, %s, %s, %s" % (
                 loc["street_name"], loc["street_number"], loc["city_name"],
                 loc["state_name"], site["country_name"]),
                 "reference": loc.get("reference"), "latitude": loc["latitude"],
                 "longitude": loc["longitude"], "id": site["country2"], "type": "country",
                 "city": loc["city_name"]},
             "external_id": ext, "_user": acct["user_id"], "_location": loc}
    state.stores[sid] = store
    return store


def h_store_create(state, ctx, uid):
    check_user(state, ctx, uid, "INVALID_USER_ID")
    return 201, public(create_store(state, ctx.acct, ctx.json())), None


def h_store_search(state, ctx, uid):
    uid = check_user(state, ctx, uid, "INVALID_USER_ID")
    offset, limit = page_params(ctx, 50)
    ext = ctx.q("external_id")
    found = [s for s in state.stores.values()
             if s["_user"] == uid and (ext is None or s["external_id"] == ext)]
    return 200, {"paging": {"total": len(found), "offset": offset, "limit": limit},
                 "results": [public(s) for s in found[offset:offset + limit]]}, None


def h_store_get(state, ctx, sid):
    s = state.stores.get(sid)
    if not s or s["_user"] != ctx.acct["user_id"]:
        raise classic(404, "not_found", "Store not found")
    return 200, public(s), None


def h_store_delete(state, ctx, uid, sid):
    uid = check_user(state, ctx, uid, "INVALID_USER_ID")
    s = state.stores.get(sid)
    if not s or s["_user"] != uid:
        raise classic(404, "not_found", "Store not found")
    del state.stores[sid]
    return 200, {"store": int(sid), "user": uid}, None


# ---------------------------------------------------------------------- pos

POS_FIELDS = {"name", "fixed_amount", "store_id", "external_store_id", "external_id",
              "category", "url"}


def create_pos(state, acct, body):
    """Validate and create a POS (API and /_sim/pos)."""
    if not body:
        raise classic(400, "MISSING_BODY", "The body is required")
    if not isinstance(body, dict):
        raise classic(400, "MISSING_BODY", "The body must be a JSON object")
    for k in body:
        if k not in POS_FIELDS:
            raise classic(400, "UNKNOWN_FIELD_EXCEPTION", "unknown field: %s" % k)
    uid = acct["user_id"]
    site = state.site(acct)
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise classic(400, "INVALID_NAME", "name is required and must be a string")
    if len(name) >= 45:
        raise classic(400, "NAME_TOO_LONG", "name must be shorter than 45 characters")
    fixed = body.get("fixed_amount")
    if not isinstance(fixed, bool):
        raise classic(400, "INVALID_FIXED_AMOUNT", "fixed_amount is required and must be boolean")
    cat = body.get("category")
    if cat is not None:
        if not is_number(cat) or D(cat) != D(cat).to_integral_value():
            raise classic(400, "INVALID_CATEGORY", "category must be a number")
        if int(cat) not in site["mcc"]:
            raise classic(400, "UNKNOWN_MCC", "category %s is not valid for %s"
                          % (cat, acct["site_id"]))
    sid = body.get("store_id")
    if isinstance(sid, bool) or not (is_number(sid) or (isinstance(sid, str) and sid.isdigit())):
        raise classic(400, "INVALID_STORE_ID", "store_id is required and must be a number")
    ext_store = body.get("external_store_id")
    if not isinstance(ext_store, str) or not ext_store:
        raise classic(400, "INVALID_EXTERNAL_STORE_ID", "external_store_id is required")
    ext = body.get("external_id")
    if not isinstance(ext, str) or not re.fullmatch(r"[A-Za-z0-9]+", ext):
        raise classic(400, "INVALID_EXTERNAL_ID",
                      "external_id is required and must be alphanumeric")
    if len(ext) >= 40:
        raise classic(400, "EXTERNAL_ID_TOO_LONG", "external_id must be shorter than 40 characters")
    url = body.get("url")
    if url is not None:
        if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
            raise classic(400, "INVALID_URL", "url must be a valid URL")
        if len(url) > 300:
            raise classic(400, "URL_TOO_LONG", "url is too long")
        if not fixed:
            raise classic(400, "FIXED_AMOUNT_FALSE", "url requires fixed_amount true")
    store = state.stores.get(str(int(sid)))
    if not store or store["_user"] != uid:
        raise classic(400, "INVALID_STORE_ID", "store_id %s does not exist" % sid)
    if not state.store_by_ext(uid, ext_store):
        raise classic(400, "INEXISTENT_EXTERNAL_STORE_ID",
                      "external_store_id %s does not exist" % ext_store)
    if store["external_id"] != ext_store:
        raise classic(400, "EXTERNAL_STORE_ID_NOT_MATCH",
                      "external_store_id does not match store_id")
    if state.pos_by_ext(uid, ext):
        raise classic(409, "conflict",
                      "Point of sale with corresponding user and external_id already exists")
    pid = next(state.pos_ids)
    uuid = secrets.token_hex(32)
    base = "https://www.mercadopago.com/instore/merchant/qr/%d/" % pid
    ts = iso_mp()
    pos = {"id": pid, "qr": {"image": base + uuid + ".png",
                             "template_document": base + "template_" + uuid + ".pdf",
                             "template_image": base + "template_" + uuid + ".png"},
           "status": "active", "date_created": ts, "date_last_updated": ts, "uuid": uuid,
           "user_id": uid, "name": name, "fixed_amount": fixed, "category": cat,
           "store_id": store["id"], "external_store_id": ext_store, "external_id": ext,
           "site": acct["site_id"], "qr_code": emv_static_qr(pid, name, site)}
    if url is not None:
        pos["url"] = url
    state.pos[pid] = pos
    return pos


def h_pos_create(state, ctx):
    return 201, public(create_pos(state, ctx.acct, ctx.json())), None


def h_pos_search(state, ctx):
    offset, limit = page_params(ctx, 30)
    flt = {k: ctx.q(k) for k in ("external_id", "external_store_id", "store_id", "category")
           if ctx.q(k) is not None}
    found = [p for p in state.pos.values() if p["user_id"] == ctx.acct["user_id"]
             and all(str(p.get(k)) == v for k, v in flt.items())]
    return 200, {"paging": {"total": len(found), "offset": offset, "limit": limit},
                 "results": [public(p) for p in found[offset:offset + limit]]}, None


def _pos_or_404(state, ctx, pid):
    if not pid.isdigit():
        raise classic(400, "INVALID_POS_ID", "pos id must be a number")
    p = state.pos.get(int(pid))
    if not p or p["user_id"] != ctx.acct["user_id"]:
        raise classic(404, "not_found", "Point of sale not found")
    return p


def h_pos_get(state, ctx, pid):
    return 200, public(_pos_or_404(state, ctx, pid)), None


def h_pos_update(state, ctx, pid):
    p = _pos_or_404(state, ctx, pid)
    body = ctx.json() or {}
    if not isinstance(body, dict):
        raise classic(400, "MISSING_BODY", "The body must be a JSON object")
    for k, v in body.items():
        if k == "name" and isinstance(v, str) and 0 < len(v) < 45:
            p["name"] = v
        elif k == "fixed_amount" and isinstance(v, bool):
            p["fixed_amount"] = v
        elif k == "category" and (v is None or (is_number(v) and int(v) in
                                                 state.site(ctx.acct)["mcc"])):
            p["category"] = v
        else:
            raise classic(400, "UNKNOWN_FIELD_EXCEPTION", "invalid field: %s" % k)
    p["date_last_updated"] = iso_mp()
    return 200, public(p), None


def h_pos_delete(state, ctx, pid):
    p = _pos_or_404(state, ctx, pid)
    state.delete_pos_order((p["user_id"], p["external_id"]))
    del state.pos[p["id"]]
    return 204, None, None


# --------------------------------------------------------- instore orders

ORDER_FIELDS = ("external_reference", "title", "description", "total_amount", "items",
                "notification_url", "expiration_date", "sponsor", "cash_out", "taxes")
URL_RE = re.compile(r"^https?://[^/\s?#]+[^\s]*$")


def validate_instore_order(state, acct, body):
    """Check a PUT body against the instore v2 table; return the stored copy."""
    E = lambda key, msg: ierr(state, 400, key, msg)  # noqa: E731
    site = state.site(acct)
    if not isinstance(body, dict):
        raise E("invalid_body", "body must be a JSON object")
    ref = body.get("external_reference")
    if not isinstance(ref, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", ref):
        raise E("invalid_external_reference",
                "external_reference must be a string of up to 64 characters "
                "(letters, digits, '-' and '_')")
    if "title" in body and not isinstance(body["title"], str):
        raise E("invalid_title", "title must be string")
    if not isinstance(body.get("description"), str):
        raise E("invalid_description", "description must be present")
    total = body.get("total_amount")
    if not is_number(total) or D(total) <= 0:
        raise E("invalid_total_amount", "total_amount must be a positive number")
    if site["integer"] and decimals(total) > 0:
        raise E("invalid_total_amount", integer_message(site["currency"]))
    if decimals(total) > 2:
        raise E("invalid_total_amount", "total_amount must have at most 2 decimals")
    items = body.get("items")
    if items is None or items == []:
        if not isinstance(body.get("cash_out"), dict):
            raise E("error_creating_seller_qr_order", "The cash out is required when order has no items")
    elif not isinstance(items, list):
        raise E("invalid_items", "items must be an array")
    for it in items or []:
        if not isinstance(it, dict):
            raise E("invalid_items", "items must be objects")
        for f in ("sku_number", "category", "description", "currency_id"):
            if f in it and it[f] is not None and not isinstance(it[f], str):
                raise E("invalid_items.%s" % f, "%s must be string" % f)
        if not isinstance(it.get("title"), str) or not it["title"]:
            raise E("invalid_items.title", "title must be string")
        up = it.get("unit_price")
        if not is_number(up):
            raise E("invalid_items.unit_price", "unit_price must be number")
        if decimals(up) > 2 or D(up) < 0:
            raise E("invalid_unit_price", "unit_price must be positive with at most 2 decimals")
        if site["integer"] and decimals(up) > 0:
            raise E("invalid_unit_price", integer_message(site["currency"]))
        q = it.get("quantity")
        if not is_number(q):
            raise E("invalid_items.quantity", "quantity must be number")
        if D(q) <= 0:
            raise E("invalid_quantity", "quantity must be greater than 0")
        um = it.get("unit_measure")
        if not isinstance(um, str):
            raise E("invalid_items.unit_measure", "unit_measure must be string")
        if um not in ("unit", "pack"):
            raise E("invalid_unit_measure", "unit_measure must be one of: unit, pack")
        if not is_number(it.get("total_amount")):
            raise E("invalid_items.total_amount", "total_amount must be number")
    nurl = body.get("notification_url")
    if nurl is not None and (not isinstance(nurl, str) or not URL_RE.match(nurl)):
        raise E("invalid_notification_url", "notification_url must be url")
    exp = body.get("expiration_date")
    exp_ts = None
    if exp is not None:
        exp_ts = parse_iso_offset(exp)
        if exp_ts is None:
            raise E("invalid_expiration_date",
                    "expiration_date must be an ISO-8601 date with offset")
        if exp_ts <= now():
            raise E("invalid_expiration_date", "expiration_date must be a future date")
    sponsor = body.get("sponsor")
    if sponsor is not None:
        if not isinstance(sponsor, dict) or "id" not in sponsor:
            raise E("invalid_id", "sponsor.id must be present")
        if not is_number(sponsor["id"]):
            raise E("invalid_sponsor.id", "sponsor.id must be number")
    co = body.get("cash_out")
    if co is not None and (not isinstance(co, dict) or not is_number(co.get("amount"))):
        raise E("invalid_cash_out.amount", "cash_out.amount must be number")
    stored = {k: body[k] for k in ORDER_FIELDS if k in body}
    return stored, static_qr_expiry(state, exp_ts)


def static_qr_expiry(state, exp_ts):
    """When an order on a static QR leaves it: 10 minutes by default and at
    most 10 minutes, whatever is sent (API reference §12.4)."""
    t = now()
    if exp_ts is None and state.config.get("instore_default_ttl"):
        exp_ts = t + float(state.config["instore_default_ttl"])
    cap = state.config.get("static_qr_max_ttl")
    if cap is not None and (exp_ts is None or exp_ts > t + float(cap)):
        exp_ts = t + float(cap)
    return exp_ts


def h_instore(state, ctx, uid, store_ext, pos_ext):
    ctx.style = "instore"
    uid = check_user(state, ctx, uid, None)
    if not pos_ext:
        raise ierr(state, 400, "invalid_externalPosId", "external_pos_id is required")
    pos = state.pos_by_ext(uid, pos_ext)
    if pos and store_ext is not None and pos["external_store_id"] != store_ext:
        pos = None
    key = (uid, pos_ext)
    if ctx.method == "GET":
        rec = state.current_pos_order(uid, pos_ext) if pos else None
        if not rec:
            raise ierr(state, 404, "point_of_sale_in_store_order_not_found",
                       "No associated order found.")
        return 200, [rec["body"]], None
    if not pos and ctx.method == "DELETE":
        # sandbox probe, API reference §12.6
        raise ierr(state, 400, "pos_obtainment_by_external_id_error",
                   "Error obtaining the point of sale by external id %s" % pos_ext)
    if not pos:
        raise ierr(state, 404, "point_of_sale_not_found",
                   "Point of sale %s not found%s" % (
                       pos_ext, "" if store_ext is None else " in store %s" % store_ext))
    if ctx.method == "DELETE":
        state.delete_pos_order(key)
        return 204, None, None
    body, exp_ts = validate_instore_order(state, ctx.acct, ctx.json())
    if not pos["fixed_amount"]:
        raise ierr(state, 400, "invalid_pos", "the point of sale must have fixed_amount true")
    state.put_pos_order(ctx.acct, pos, body, exp_ts)
    return 204, None, None


# --------------------------------------------------------- merchant orders


def h_mo_get(state, ctx, mid):
    # GET /merchant_orders/{id} documents only 401, no 404 (§12.1): an unknown
    # id and another collector's merchant order answer alike.
    mo = state.mos.get(int(mid)) if mid.isdigit() else None
    if not mo or mo["_user"] != ctx.acct["user_id"]:
        raise classic(401, "invalid_caller_id", "The caller is not authorized to access "
                      "this resource")
    return 200, state.mo_view(mo), None


def h_mo_search(state, ctx):
    offset, limit = page_params(ctx, 30)  # spec3.yaml default, §12.8
    flt = {k: ctx.q(k) for k in ("external_reference", "status", "order_status",
                                 "preference_id", "site_id") if ctx.q(k) is not None}
    found = [m for m in sorted(state.mos.values(), key=lambda m: m["id"])
             if m["_user"] == ctx.acct["user_id"]
             and all(str(m.get(k)) == v for k, v in flt.items())]
    page = found[offset:offset + limit]
    return 200, {"elements": [state.mo_view(m) for m in page] or None,
                 "next_offset": offset + len(page) if page else 0,
                 "total": len(found)}, None


# ---------------------------------------------------------------- payments


def _payment_or_404(state, ctx, pid):
    p = state.payments.get(int(pid)) if pid.isdigit() else None
    if not p:
        raise cause_error(404, "not_found", "Payment not found", 2000)
    if p["_user"] != ctx.acct["user_id"]:
        raise forbidden_payment()
    return p


def h_payment_get(state, ctx, pid):
    return 200, public(_payment_or_404(state, ctx, pid)), None


SEARCH_RANGES = ("date_created", "date_approved", "date_last_updated", "money_release_date")
SEARCH_SORTS = SEARCH_RANGES + ("id",)


def h_payment_search(state, ctx):
    """GET /v1/payments/search: filters, a time window on one of the range
    fields (begin_date/end_date: ISO-8601 or NOW-3HOURS), sort and criteria,
    limit at most 1000 and offset (§7, §12.13)."""
    offset, limit = page_params(ctx, 30)
    if limit > 1000:
        raise classic(400, "bad_request", "limit must be at most 1000")
    flt = {k: ctx.q(k) for k in ("external_reference", "status", "operation_type",
                                 "pos_id", "store_id", "id", "collector_id")
           if ctx.q(k) is not None}
    rng = ctx.q("range")
    begin, end = ctx.q("begin_date"), ctx.q("end_date")
    if (begin is not None or end is not None) and rng is None:
        raise classic(400, "bad_request", "range is required with begin_date and end_date")
    if rng is not None and rng not in SEARCH_RANGES:
        raise classic(400, "bad_request", "range must be one of: %s" % ", ".join(SEARCH_RANGES))
    lo = hi = None
    if begin is not None:
        lo = parse_search_time(begin)
        if lo is None:
            raise classic(400, "bad_request", "Invalid begin_date: %s" % begin)
    if end is not None:
        hi = parse_search_time(end)
        if hi is None:
            raise classic(400, "bad_request", "Invalid end_date: %s" % end)
    sort = ctx.q("sort", "date_created")
    if sort not in SEARCH_SORTS:
        raise classic(400, "bad_request", "sort must be one of: %s" % ", ".join(SEARCH_SORTS))
    criteria = ctx.q("criteria", "asc")
    if criteria not in ("asc", "desc"):
        raise classic(400, "bad_request", "criteria must be asc or desc")

    def when(p, field):
        return p["id"] if field == "id" else p["_ts"].get(field)

    found = []
    for p in state.payments.values():
        if p["_user"] != ctx.acct["user_id"]:
            continue
        if not all(str(p.get(k)) == v for k, v in flt.items()):
            continue
        if rng is not None:
            t = when(p, rng)
            if t is None or (lo is not None and t < lo) or (hi is not None and t > hi):
                continue
        found.append(p)
    found.sort(key=lambda p: (when(p, sort) or 0, p["id"]), reverse=criteria == "desc")
    return 200, {"paging": {"total": len(found), "limit": limit, "offset": offset},
                 "results": [public(p) for p in found[offset:offset + limit]]}, None


def h_refund_create(state, ctx, pid):
    key = ctx.headers.get("x-idempotency-key")
    if not key:
        raise cause_error(400, "bad_request", "Header X-Idempotency-Key can't be null", 4292,
                          "Header-X-Idempotency-Key-can't-be-null")
    pay = _payment_or_404(state, ctx, pid)
    body = ctx.json(empty={})
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise cause_error(400, "bad_request", "Invalid body", 4041)
    amount = body.get("amount")
    ikey = (ctx.acct["user_id"], "refund", key)
    fingerprint = (pay["id"], str(amount))
    render = (ctx.headers.get("x-render-in-process-refunds") or "").lower() == "true"
    if ikey in state.idem:
        fp, status, resp = state.idem[ikey]
        if fp[0] != pay["id"]:
            raise classic(409, "conflict", "X-Idempotency-Key already used for another request")
        return _refund_answer(resp, render)
    if amount is not None:
        if not is_number(amount):
            raise cause_error(400, "bad_request", "The amount must be numeric", 4041)
        if D(amount) <= 0:
            raise cause_error(400, "bad_request", "The amount must be positive", 4040)
        amount = D(amount)
    ref = state.refund_payment(ctx.acct, pay, amount)
    state.idem[ikey] = (fingerprint, 201, ref)
    return _refund_answer(ref, render)


def _refund_answer(ref, render):
    """A refund that is in process is shown only to a caller that sends
    X-Render-In-Process-Refunds: true; others get a 400, though MP goes on
    with the refund (§12.2)."""
    if ref["status"] == "in_process" and not render:
        raise classic(400, "bad_request", "The refund is in process. Send the header "
                      "X-Render-In-Process-Refunds: true to receive refunds in process")
    return 201, dict(ref), None


def h_refund_list(state, ctx, pid):
    return 200, _payment_or_404(state, ctx, pid)["refunds"], None


def h_refund_get(state, ctx, pid, rid):
    for r in _payment_or_404(state, ctx, pid)["refunds"]:
        if str(r["id"]) == rid:
            return 200, r, None
    raise cause_error(404, "not_found", "Refund not found", 2032)


# ------------------------------------------------------ chargebacks, users


def h_chargeback_get(state, ctx, cid):
    """GET /v1/chargebacks/{id}: the chargeback with its payments[] (§12.10)."""
    cb = state.chargebacks.get(cid)
    if not cb or cb["_user"] != ctx.acct["user_id"]:
        raise classic(404, "not_found", "Chargeback not found")
    return 200, public(cb), None


def h_users_me(state, ctx):
    """GET /users/me: the token's own account (design §9's token probe)."""
    a = ctx.acct
    site = state.site(a)
    return 200, {"id": a["user_id"], "nickname": a["nickname"], "site_id": a["site_id"],
                 "country_id": site["country2"], "email": "", "status": {"site_status": "active"}}, None


# ------------------------------------------------------------------ routes

S = r"([^/]*)"
IQ = r"/instore/qr/seller/collectors/" + S
ROUTES = [
    ("POST", r"/users/" + S + "/stores", h_store_create),
    ("GET", r"/users/" + S + "/stores/search", h_store_search),
    ("DELETE", r"/users/" + S + "/stores/" + S, h_store_delete),
    ("GET", r"/stores/" + S, h_store_get),
    ("POST", r"/pos", h_pos_create),
    ("GET", r"/pos", h_pos_search),
    ("GET", r"/pos/" + S, h_pos_get),
    ("PUT", r"/pos/" + S, h_pos_update),
    ("DELETE", r"/pos/" + S, h_pos_delete),
    ("PUT GET DELETE", IQ + "/stores/" + S + "/pos/" + S + "/orders", h_instore),
    ("PUT GET DELETE", IQ + "/pos/" + S + "/orders",
     lambda st, c, u, p: h_instore(st, c, u, None, p)),
    ("GET", r"/merchant_orders/search", h_mo_search),
    ("GET", r"/merchant_orders", h_mo_search),
    ("GET", r"/merchant_orders/" + S, h_mo_get),
    ("GET", r"/v1/payments/search", h_payment_search),
    ("GET", r"/v1/payments/" + S, h_payment_get),
    ("POST", r"/v1/payments/" + S + "/refunds", h_refund_create),
    ("GET", r"/v1/payments/" + S + "/refunds", h_refund_list),
    ("GET", r"/v1/payments/" + S + "/refunds/" + S, h_refund_get),
    ("GET", r"/v1/chargebacks/" + S, h_chargeback_get),
    ("GET", r"/users/me", h_users_me),
] + sim_orders.ROUTES
COMPILED = [(set(m.split()), re.compile(p + "$"), h) for m, p, h in ROUTES]


def _token(ctx):
    auth = ctx.headers.get("authorization", "")
    parts = auth.split(None, 1)
    if len(parts) == 2 and parts[0].lower() == "bearer":
        return parts[1].strip()
    return ctx.q("access_token")


def dispatch(state, ctx):
    """Route, authenticate and run one API request; return (status, body, headers)."""
    path = ctx.path.rstrip("/") or "/"
    matches = [(ms, m, h) for ms, rx, h in COMPILED for m in [rx.match(path)] if m]
    if path.startswith("/v1/orders"):
        ctx.style = "orders"
    if not matches:
        raise classic(404, "not_found", "Route %s %s not found" % (ctx.method, path))
    for ms, m, h in matches:
        if ctx.method in ms:
            break
    else:
        allowed = sorted(set().union(*(ms for ms, _, _ in matches)))
        raise ApiError(405, {"message": "Method %s not allowed" % ctx.method,
                             "error": "method_not_allowed", "status": 405, "cause": []},
                       {"Allow": ", ".join(allowed)})
    with state.lock:
        ctx.acct = state.account_by_token(_token(ctx) or "")
        if ctx.acct is None:
            if ctx.style == "orders":
                raise sim_orders.err(401, "unauthorized", "invalid access token")
            if path.startswith("/merchant_orders"):  # §12.1: invalid_token
                raise classic(401, "invalid_token", "invalid access token")
            raise classic(401, "unauthorized", "invalid access token")
        return h(state, ctx, *m.groups())

