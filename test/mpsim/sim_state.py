"""The simulator's model of Mercado Pago: accounts, stores, POS, the order
shown on each POS (instore v2), merchant orders, payments, refunds and Orders
API orders, plus the transitions that MP performs on its own (scan, payment,
refund, chargeback, expiry).

One re-entrant lock (State.lock) guards everything; every public method takes
it.  Transitions queue notifications through the Notifier, which only
enqueues: delivery happens on other threads.
"""

import itertools
import secrets
import threading
from decimal import Decimal

from sim_util import (D, DATE_STYLES, SITES, ApiError, amount_str, classic, cause_error,
                      iso_mp, iso_z, now, out_amount, public, reset_clock)

NOTIFY_KINDS = {
    "ipn": {("ipn", "merchant_order"), ("ipn", "payment"), ("ipn", "chargebacks")},
    "webhook": {("webhook", "merchant_order"), ("webhook", "payment"), ("webhook", "order"),
                ("webhook", "claims")},
}

PAYMENT_DETAIL = {"approved": "accredited", "rejected": "cc_rejected_other_reason",
                  "pending": "pending_waiting_payment", "in_process": "pending_contingency",
                  "authorized": "pending_capture", "cancelled": "by_collector",
                  "in_mediation": "in_process", "charged_back": "reimbursed",
                  "refunded": "refunded"}

# payment_method_id -> payment_type_id.  Pix refunds may stay in process (§12.2).
PAYMENT_METHODS = {"account_money": "account_money", "pix": "bank_transfer",
                   "debit_card": "debit_card"}

# Payment statuses whose money reached the collector at some point.
MONEY_STATUSES = ("approved", "in_mediation", "charged_back", "refunded")

# API reference §12: merchant orders are created at payment (mo_at_scan: true
# brings back the scan-time MOs of §5.5), their payments[] may lag the payment
# by mo_payment_lag seconds, and an order on a static QR lives 10 minutes by
# default and at most (static_qr_max_ttl; null lifts the cap).
DEFAULT_CONFIG = {"instore_default_ttl": 600, "instore_error_key": "error",
                  "instore_cause_key": "causes", "static_qr_max_ttl": 600,
                  "mo_at_scan": False, "mo_payment_lag": 0}

SIGNATURES = ("valid", "invalid", "none")


def parse_notify(spec):
    """["ipn","webhook"] or finer ["ipn:payment","webhook:merchant_order",...]."""
    out = set()
    for k in spec:
        if k in NOTIFY_KINDS:
            out |= NOTIFY_KINDS[k]
        elif ":" in k:
            chan, topic = k.split(":", 1)
            out.add((chan, topic))
        else:
            raise ValueError("unknown notify kind %r" % k)
    return out


class State:
    def __init__(self, notifier):
        self.lock = threading.RLock()
        self.notifier = notifier
        self.reset()

    # ----------------------------------------------------------------- admin

    def reset(self):
        with self.lock:
            self.config = dict(DEFAULT_CONFIG)
            self.accounts = {}
            self.tokens = {}
            self.stores = {}
            self.pos = {}
            self.pos_orders = {}
            self.pending_scans = set()
            self.mos = {}
            self.payments = {}
            self.orders = {}
            self.idem = {}
            self.store_ids = itertools.count(60030440)
            self.pos_ids = itertools.count(96444399)
            self.mo_ids = itertools.count(15140831325)
            self.pay_ids = itertools.count(72048446488)
            self.refund_ids = itertools.count(1627096680)
            self.chargebacks = {}
            self.chargeback_ids = itertools.count(2400000001)
            self.claims = {}
            self.claim_ids = itertools.count(5000000001)
            self.refund_due = {}
            self.seq = itertools.count(1)
            reset_clock()

    def upsert_account(self, spec):
        with self.lock:
            uid = int(spec["user_id"])
            acct = self.accounts.get(uid)
            if acct is None:
                acct = {"user_id": uid, "tokens": [], "site_id": "MLA", "webhook_secret": None,
                        "webhook_url": None, "ipn_url": None, "notify": ["ipn", "webhook"],
                        "sign_lowercase": False, "sign_orders": True, "sign_payments": True,
                        "application_id": str(7364289770550000 + uid % 10000),
                        "nickname": "TESTUSER%d" % uid, "live_mode": False,
                        "orders_partial_refunds": False, "orders_refund_delay": None,
                        "orders_min_amount": None, "signature": "valid",
                        "payment_method_id": "account_money", "pix_refund_delay": None,
                        "date_format": "offset"}
            for k, v in spec.items():
                if k in ("user_id", "token", "tokens"):
                    continue
                if k not in acct:
                    raise ValueError("unknown account field %r" % k)
                acct[k] = v
            if acct["signature"] not in SIGNATURES:
                raise ValueError("signature must be one of %s" % ", ".join(SIGNATURES))
            if acct["date_format"] not in DATE_STYLES:
                raise ValueError("date_format must be one of %s" % ", ".join(DATE_STYLES))
            if acct["payment_method_id"] not in PAYMENT_METHODS:
                raise ValueError("payment_method_id must be one of %s"
                                 % ", ".join(sorted(PAYMENT_METHODS)))
            if acct["site_id"] not in SITES:
                raise ValueError("unknown site_id %r" % acct["site_id"])
            acct["_notify"] = parse_notify(acct["notify"])
            new_tokens = spec.get("tokens") or ([spec["token"]] if spec.get("token") else None)
            if new_tokens is not None:
                for t in acct["tokens"]:
                    self.tokens.pop(t, None)
                acct["tokens"] = list(new_tokens)
            for t in acct["tokens"]:
                self.tokens[t] = uid
            self.accounts[uid] = acct
            return acct

    def account_by_token(self, token):
        with self.lock:
            uid = self.tokens.get(token)
            return self.accounts.get(uid) if uid is not None else None

    def account(self, user_id):
        acct = self.accounts.get(int(user_id))
        if acct is None:
            raise ApiError(400, {"error": "unknown account %s" % user_id})
        return acct

    def site(self, acct):
        return SITES[acct["site_id"]]

    def date(self, acct, ts=None):
        """A classic-API date of this account's resources, in its date_format."""
        return iso_mp(ts, acct.get("date_format") or "offset")

    # ------------------------------------------------------------ stores/pos

    def store_by_ext(self, uid, ext):
        for s in self.stores.values():
            if s["_user"] == uid and s["external_id"] == ext:
                return s
        return None

    def pos_by_ext(self, uid, ext):
        for p in self.pos.values():
            if p["user_id"] == uid and p["external_id"] == ext:
                return p
        return None

    # ------------------------------------------------------- instore orders

    def current_pos_order(self, uid, ext_pos):
        """The order the POS shows now, dropping it if it expired."""
        key = (uid, ext_pos)
        rec = self.pos_orders.get(key)
        if rec and rec["expires_at"] is not None and rec["expires_at"] <= now():
            self.expire_pos_order(key)
            return None
        return rec

    def put_pos_order(self, acct, pos, body, expires_at):
        key = (acct["user_id"], pos["external_id"])
        rec = {"_seq": next(self.seq), "user_id": acct["user_id"],
               "external_pos_id": pos["external_id"], "pos_id": pos["id"],
               "store_id": pos["store_id"], "external_store_id": pos["external_store_id"],
               "body": body, "created": now(), "expires_at": expires_at}
        self.pos_orders[key] = rec
        if key in self.pending_scans:
            self.pending_scans.discard(key)
            self.scan_instore(acct, rec)
        return rec

    def delete_pos_order(self, key):
        """Remove the order from the POS (DELETE); opened MOs without money expire."""
        rec = self.pos_orders.pop(key, None)
        if rec:
            self._expire_mos_of(rec)
        return rec

    def expire_pos_order(self, key):
        return self.delete_pos_order(key)

    def _expire_mos_of(self, rec):
        for mo in list(self.mos.values()):
            if mo["_pos_order_seq"] != rec["_seq"] or mo["status"] != "opened":
                continue
            live = [p for p in self._mo_payments(mo, all_=True)
                    if p["status"] in ("approved", "pending", "in_process", "authorized")]
            if not live:
                mo["_expired"] = True
                self.recompute_mo(mo)

    def scan_instore(self, acct, rec):
        """The buyer scanned the QR.  With mo_at_scan (the behaviour before
        2024-08, §5.5) each scan creates a merchant order; today none is made
        until a payment (§12.5), so this returns None."""
        if not self.config.get("mo_at_scan"):
            return None
        return self.new_mo(acct, rec)

    def mo_for_payment(self, acct, rec):
        """The merchant order a payment of the POS's order joins: with
        mo_at_scan a new one per scan; otherwise the one the order's first
        payment created, or a new one now (§12.5)."""
        if self.config.get("mo_at_scan"):
            return self.new_mo(acct, rec)
        mo = self.mos.get(rec.get("_mo_id"))
        if mo is None or mo["status"] != "opened":
            # announced as "create" once the payment is on it (pay_mo)
            mo = self.new_mo(acct, rec, announce=False)
            rec["_mo_id"] = mo["id"]
        return mo

    def new_mo(self, acct, rec, announce=True):
        """A new merchant order for the order on a POS, announced as "create"."""
        body = rec["body"]
        site = self.site(acct)
        items = []
        for it in body.get("items") or []:
            items.append({"id": it.get("sku_number") or "", "category_id": it.get("category") or "",
                          "currency_id": site["currency"], "description": it.get("description"),
                          "picture_url": None, "title": it.get("title"),
                          "quantity": it.get("quantity"), "unit_price": it.get("unit_price")})
        ts = now()
        mo = {"id": next(self.mo_ids), "status": "opened",
              "external_reference": body.get("external_reference"),
              "preference_id": "%d-%s" % (acct["user_id"], secrets.token_hex(16)),
              "payments": [], "shipments": [], "payouts": [],
              "collector": {"id": acct["user_id"], "email": "", "nickname": acct["nickname"]},
              "marketplace": "NONE", "notification_url": body.get("notification_url"),
              "date_created": self.date(acct, ts), "last_updated": self.date(acct, ts),
              "sponsor_id": (body.get("sponsor") or {}).get("id"),
              "shipping_cost": 0, "total_amount": body["total_amount"], "site_id": acct["site_id"],
              "paid_amount": 0, "refunded_amount": 0, "payer": None, "items": items,
              "cancelled": False, "additional_info": "", "application_id": None,
              "is_test": not acct["live_mode"], "order_status": "payment_required",
              "_user": acct["user_id"], "_pos_order_seq": rec["_seq"], "_pos_key":
              (rec["user_id"], rec["external_pos_id"]), "_pos_id": rec["pos_id"],
              "_store_id": rec["store_id"], "_expired": False, "_version": 1,
              "_payment_ids": [], "_title": body.get("title")}
        self.mos[mo["id"]] = mo
        if announce:
            self.notifier.merchant_order(acct, mo, "create")
        else:
            mo["_announce"] = True
        return mo

    def _mo_payments(self, mo, all_=False):
        """The payments the MO shows: those past their mo_payment_lag (§12.5),
        or with all_ every payment made on it."""
        pays = [self.payments[i] for i in mo["_payment_ids"]]
        if all_:
            return pays
        return [p for p in pays if p.get("_mo_visible_at") is None]

    def mo_view(self, mo):
        v = public(mo)
        v["payments"] = [{
            "id": p["id"], "transaction_amount": p["transaction_amount"],
            "total_paid_amount": p["transaction_details"]["total_paid_amount"],
            "shipping_cost": 0, "currency_id": p["currency_id"], "status": p["status"],
            "status_detail": p["status_detail"], "operation_type": p["operation_type"],
            "date_approved": p["date_approved"], "date_created": p["date_created"],
            "last_modified": p["date_last_updated"],
            "amount_refunded": p["transaction_amount_refunded"]} for p in self._mo_payments(mo)]
        return v

    def recompute_mo(self, mo, notify=True):
        """Derive status, order_status and amounts from the payments (§6.1)."""
        pays = self._mo_payments(mo)
        total = D(mo["total_amount"])
        covered = sum((D(p["transaction_amount"]) for p in pays
                       if p["status"] in MONEY_STATUSES), Decimal(0))
        refunded = sum((D(p["transaction_amount_refunded"]) for p in pays), Decimal(0))
        charged = sum((D(p["transaction_amount"]) - D(p["transaction_amount_refunded"])
                       for p in pays if p["status"] == "charged_back"), Decimal(0))
        reverted = refunded + charged
        in_process = any(p["status"] in ("pending", "in_process", "authorized") for p in pays)
        old = (mo["status"], mo["order_status"], mo["paid_amount"], mo["refunded_amount"])
        was_closed = mo["status"] == "closed"
        if was_closed or (covered > 0 and covered >= total):
            mo["status"] = "closed"
        elif mo["_expired"]:
            mo["status"] = "expired"
        else:
            mo["status"] = "opened"
        if covered > 0 and reverted >= covered:
            mo["order_status"] = "reverted"
        elif reverted > 0:
            mo["order_status"] = "partially_reverted"
        elif covered > 0 and covered >= total:
            mo["order_status"] = "paid"
        elif covered > 0:
            mo["order_status"] = "partially_paid"
        elif in_process:
            mo["order_status"] = "payment_in_process"
        elif mo["_expired"]:
            mo["order_status"] = "expired"
        else:
            mo["order_status"] = "payment_required"
        mo["paid_amount"] = out_amount(covered)
        mo["refunded_amount"] = out_amount(refunded)
        new = (mo["status"], mo["order_status"], mo["paid_amount"], mo["refunded_amount"])
        self._settle_pos(mo)
        if notify:
            mo["last_updated"] = self.date(self.accounts[mo["_user"]])
            mo["_version"] += 1
            self.notifier.merchant_order(self.accounts[mo["_user"]], mo, "update")
        return old != new

    def _settle_pos(self, mo):
        """Once the money paid covers the order, it leaves the POS, whether or
        not the MO shows the payments yet."""
        covered = sum((D(p["transaction_amount"]) for p in self._mo_payments(mo, all_=True)
                       if p["status"] in MONEY_STATUSES), Decimal(0))
        if covered > 0 and covered >= D(mo["total_amount"]):
            cur = self.pos_orders.get(mo["_pos_key"])
            if cur and cur["_seq"] == mo["_pos_order_seq"]:
                del self.pos_orders[mo["_pos_key"]]

    # -------------------------------------------------------------- payments

    def new_payment(self, acct, amount, status, external_reference, description=None,
                    operation_type="regular_payment", mo=None, notification_url=None,
                    pos_id=None, store_id=None, order_ref=None, payment_method_id=None):
        ts = now()
        site = self.site(acct)
        amt = out_amount(amount)
        pid = next(self.pay_ids)
        method = payment_method_id or acct.get("payment_method_id") or "account_money"
        if method not in PAYMENT_METHODS:
            raise ValueError("payment_method_id must be one of %s"
                             % ", ".join(sorted(PAYMENT_METHODS)))
        approved = status == "approved"
        pay = {
            "id": pid, "date_created": self.date(acct, ts),
            "date_approved": self.date(acct, ts) if approved else None,
            "date_last_updated": self.date(acct, ts), "date_of_expiration": None,
            "money_release_date": self.date(acct, ts) if approved else None,
            "money_release_status": "released" if status == "approved" else None,
            "operation_type": operation_type, "issuer_id": None,
            "payment_method_id": method, "payment_type_id": PAYMENT_METHODS[method],
            "payment_method": {"id": method, "type": PAYMENT_METHODS[method]},
            "status": status, "status_detail": PAYMENT_DETAIL.get(status, status),
            "currency_id": site["currency"], "description": description,
            "live_mode": acct["live_mode"], "sponsor_id": None, "authorization_code": None,
            "collector_id": acct["user_id"],
            "payer": {"id": "1234567890", "email": None, "type": None,
                      "identification": {"type": None, "number": None}},
            "metadata": {}, "additional_info": {},
            "order": ({"id": mo["id"], "type": "mercadopago"} if mo else {}),
            "external_reference": external_reference,
            "transaction_amount": amt, "transaction_amount_refunded": 0,
            "coupon_amount": 0, "differential_pricing_id": None, "deduction_schema": None,
            "installments": 1,
            "transaction_details": {"net_received_amount": amt if status == "approved" else 0,
                                    "total_paid_amount": amt, "overpaid_amount": 0,
                                    "installment_amount": amt if status == "approved" else 0,
                                    "payment_method_reference_id": None,
                                    "financial_institution": None, "external_resource_url": None},
            "fee_details": [], "captured": True, "binary_mode": False, "call_for_authorize_id": None,
            "statement_descriptor": None, "card": {}, "notification_url": notification_url,
            "refunds": [], "processing_mode": "aggregator", "merchant_account_id": None,
            "pos_id": str(pos_id) if pos_id is not None else None,
            "store_id": str(store_id) if store_id is not None else None,
            "integrator_id": None, "platform_id": None, "corporation_id": None,
            "point_of_interaction": {"type": "INSTORE",
                                     "business_info": {"unit": "online_payments",
                                                       "sub_unit": "qr"}},
            "_user": acct["user_id"], "_mo": mo["id"] if mo else None, "_order": order_ref,
            "_idem": {}, "_ts": {"date_created": ts, "date_last_updated": ts,
                                 "date_approved": ts if approved else None,
                                 "money_release_date": ts if approved else None},
        }
        self.payments[pid] = pay
        return pay

    def pay_mo(self, acct, mo, amount=None, status="approved", operation_type=None,
               payment_method_id=None):
        """The buyer pays (or tries to pay) a merchant order."""
        pays = self._mo_payments(mo)
        covered = sum((D(p["transaction_amount"]) for p in pays
                       if p["status"] in MONEY_STATUSES), Decimal(0))
        if amount is None:
            amount = D(mo["total_amount"]) - covered
            if amount <= 0:
                raise ApiError(409, {"error": "merchant order already paid; give an amount"})
        pay = self.new_payment(acct, D(amount), status, mo["external_reference"],
                               description=mo.get("_title"),
                               operation_type=operation_type or "regular_payment", mo=mo,
                               notification_url=mo.get("notification_url"),
                               pos_id=mo["_pos_id"], store_id=mo["_store_id"],
                               payment_method_id=payment_method_id)
        mo["_payment_ids"].append(pay["id"])
        lag = float(self.config.get("mo_payment_lag") or 0)
        if lag > 0:
            pay["_mo_visible_at"] = now() + lag
        self.notifier.payment(acct, pay, "payment.created")
        if mo.pop("_announce", False):
            self.recompute_mo(mo, notify=False)
            self.notifier.merchant_order(acct, mo, "create")
        else:
            self.recompute_mo(mo)
        return pay

    def payment_changed(self, pay):
        """Propagate a payment change: its notifications and its merchant order."""
        acct = self.accounts[pay["_user"]]
        pay["_ts"]["date_last_updated"] = now()
        pay["date_last_updated"] = self.date(acct)
        if pay["_order"] is None:  # Orders API payments are announced as order events
            self.notifier.payment(acct, pay, "payment.updated")
        if pay["_mo"] is not None:
            self.recompute_mo(self.mos[pay["_mo"]])

    def set_payment_status(self, pay, status, detail=None):
        pay["status"] = status
        pay["status_detail"] = detail or PAYMENT_DETAIL.get(status, status)
        if status == "approved" and not pay["date_approved"]:
            acct = self.accounts[pay["_user"]]
            pay["_ts"]["date_approved"] = pay["_ts"]["money_release_date"] = now()
            pay["date_approved"] = self.date(acct)
            pay["money_release_date"] = self.date(acct)
            amt = pay["transaction_amount"]
            pay["transaction_details"]["net_received_amount"] = amt
            pay["transaction_details"]["installment_amount"] = amt
        self.payment_changed(pay)

    def refund_payment(self, acct, pay, amount, at_once=False):
        """Refund amount (None = the rest) of an approved payment; return the refund.

        A refund of a Pix payment is in process (§12.2): it is made with
        status in_process, holds its amount (what is left to refund excludes
        it), and is approved after the account's pix_refund_delay, or by
        /_sim/complete_refunds.  Other refunds are approved at once.
        """
        if pay["status"] != "approved":
            raise cause_error(400, "bad_request", "Invalid refund: the action requested is "
                              "not valid for the current payment state", 2063)
        held = sum((D(r["amount"]) for r in pay["refunds"] if r["status"] == "in_process"),
                   Decimal(0))
        remaining = D(pay["transaction_amount"]) - D(pay["transaction_amount_refunded"]) - held
        if amount is None:
            amount = remaining
        if amount <= 0 or amount > remaining:
            raise cause_error(400, "bad_request", "Invalid refund amount: the amount exceeds "
                              "the available amount to refund", 2085)
        integer = self.site(acct)["integer"]
        if integer and amount != amount.to_integral_value():
            raise classic(400, "bad_request",
                          "Prices in %s currency must be expressed with integer values"
                          % self.site(acct)["currency"])
        in_process = pay["payment_method_id"] == "pix" and not at_once
        ref = {"id": next(self.refund_ids), "payment_id": pay["id"], "amount": out_amount(amount),
               "metadata": {"status_detail": None},
               "source": {"id": str(acct["user_id"]), "name": acct["nickname"],
                          "type": "collector"},
               "date_created": self.date(acct), "expiration_date": None,
               "unique_sequence_number": None, "refund_mode": "standard",
               "adjustment_amount": 0, "status": "in_process" if in_process else "approved",
               "reason": None, "labels": [],
               "amount_refunded_to_payer": 0 if in_process else out_amount(amount),
               "additional_data": None, "e2e_id": None, "partition_details": []}
        pay["refunds"].append(ref)
        if in_process:
            delay = acct.get("pix_refund_delay")
            if delay is not None:
                self.refund_due[ref["id"]] = (pay["id"], now() + float(delay))
        else:
            self._refund_settled(pay, ref)
        self.payment_changed(pay)
        return ref

    def _refund_settled(self, pay, ref):
        """An approved refund's money leaves the payment."""
        amount = D(ref["amount"])
        pay["transaction_amount_refunded"] = out_amount(
            D(pay["transaction_amount_refunded"]) + amount)
        if D(pay["transaction_amount_refunded"]) >= D(pay["transaction_amount"]):
            pay["status"], pay["status_detail"] = "refunded", "refunded"
        else:
            pay["status_detail"] = "partially_refunded"

    def finish_refund(self, pay, ref, status="approved"):
        """An in-process refund ends approved (the money is returned) or
        rejected (its amount is free again); the payment is announced."""
        if ref["status"] != "in_process":
            return False
        self.refund_due.pop(ref["id"], None)
        ref["status"] = status
        if status == "approved":
            ref["amount_refunded_to_payer"] = ref["amount"]
            self._refund_settled(pay, ref)
        self.payment_changed(pay)
        return True

    # ----------------------------------------------------- chargebacks, claims

    def open_chargeback(self, pay, status="charged_back"):
        """The buyer disputes a payment: a chargeback naming it, announced by
        IPN topic=chargebacks&id=<chargeback id> (§12.10), and the payment
        becomes charged_back (or in_mediation)."""
        acct = self.accounts[pay["_user"]]
        ts = now()
        cid = str(next(self.chargeback_ids))
        cb = {"id": cid, "payments": [pay["id"]], "currency": pay["currency_id"],
              "amount": pay["transaction_amount"], "coverage_applied": False,
              "coverage_elegible": True, "documentation_required": True,
              "documentation_status": "pending", "documentation": [],
              "date_documentation_deadline": self.date(acct, ts + 10 * 86400),
              "date_created": self.date(acct, ts), "date_last_updated": self.date(acct, ts),
              "live_mode": acct["live_mode"], "_user": acct["user_id"]}
        self.chargebacks[cid] = cb
        self.set_payment_status(pay, status)
        self.notifier.chargeback(acct, cb, pay.get("notification_url"))
        return cb

    def open_claim(self, pay):
        """The buyer opens a claim on a payment: webhook topic_claims_integration_wh."""
        acct = self.accounts[pay["_user"]]
        cid = str(next(self.claim_ids))
        claim = {"id": cid, "resource_id": pay["id"], "type": "mediations", "stage": "claim",
                 "status": "opened", "date_created": self.date(acct), "_user": acct["user_id"]}
        self.claims[cid] = claim
        self.notifier.claim(acct, claim)
        return claim

    # ---------------------------------------------------------- orders API

    def order_for_pos(self, uid, ext_pos):
        for o in self.orders.values():
            if (o["_user"] == uid and o["status"] == "created"
                    and o["config"]["qr"]["external_pos_id"] == ext_pos
                    and o["config"]["qr"].get("mode", "static") in ("static", "hybrid")):
                return o
        return None

    def order_touch(self, order, action):
        order["last_updated_date"] = iso_z()
        order["_version"] += 1
        self.notifier.order(self.accounts[order["_user"]], order, action)

    def order_expire(self, order):
        order["status"] = order["status_detail"] = "expired"
        for p in order["transactions"]["payments"]:
            p["status"] = p["status_detail"] = "expired"
        self.order_touch(order, "order.expired")

    def order_pay(self, acct, order, amount=None, status="approved", late=False,
                  operation_type=None, payment_method_id=None):
        if order["status"] != "created" and not late:
            raise ApiError(409, {"error": "order is %s (pass late:true to pay anyway)"
                                 % order["status"]})
        integer = self.site(acct)["integer"]
        tx = order["transactions"]["payments"][0]
        amount = D(tx["amount"]) if amount is None else D(amount)
        pay = self.new_payment(acct, amount, status, order.get("external_reference"),
                               description=order.get("description"),
                               operation_type=operation_type or "regular_payment",
                               pos_id=order["_pos_id"], store_id=order["_store_id"],
                               order_ref=order["id"], payment_method_id=payment_method_id)
        if status != "approved":
            return pay
        tx.update({"paid_amount": amount_str(amount, integer),
                   "reference": {"id": str(pay["id"])},
                   "payment_method": {"id": pay["payment_method_id"],
                                      "type": pay["payment_type_id"], "installments": 1},
                   "status": "processed", "status_detail": "accredited"})
        order["status"], order["status_detail"] = "processed", "accredited"
        order["total_paid_amount"] = amount_str(amount, integer)
        order["_payment_ref"] = pay["id"]
        self.order_touch(order, "order.processed")
        return pay

    def order_complete_refunds(self, order):
        refunds = order["transactions"].get("refunds") or []
        pending = [r for r in refunds if r["status"] == "processing"]
        if not pending:
            return False
        acct = self.accounts[order["_user"]]
        for r in pending:
            r["status"] = "processed"
            pay = self.payments.get(int(r["reference_id"]))
            if pay and pay["status"] == "approved":
                try:
                    self.refund_payment(acct, pay, D(r["amount"]), at_once=True)
                except ApiError:
                    pass
        done = sum((D(r["amount"]) for r in refunds if r["status"] == "processed"), Decimal(0))
        order.pop("_refund_due", None)
        if done >= D(order["total_paid_amount"]):
            order["status"] = order["status_detail"] = "refunded"
            for p in order["transactions"]["payments"]:
                p["status"] = p["status_detail"] = "refunded"
        else:
            order["status_detail"] = "partially_refunded"
        self.order_touch(order, "order.refunded")
        return True

    # ----------------------------------------------------------------- time

    def tick(self):
        """Apply what time does: expiries and delayed refund completions."""
        with self.lock:
            t = now()
            for key, rec in list(self.pos_orders.items()):
                if rec["expires_at"] is not None and rec["expires_at"] <= t:
                    self.expire_pos_order(key)
            for mo in list(self.mos.values()):
                due = [p for p in self._mo_payments(mo, all_=True)
                       if p.get("_mo_visible_at") is not None and p["_mo_visible_at"] <= t]
                if due:
                    for p in due:
                        del p["_mo_visible_at"]
                    self.recompute_mo(mo)
            for rid, (pid, at) in list(self.refund_due.items()):
                if at <= t:
                    pay = self.payments[pid]
                    self.finish_refund(pay, next(r for r in pay["refunds"] if r["id"] == rid))
            for o in list(self.orders.values()):
                if o["status"] == "created" and o["_expires_at"] <= t:
                    self.order_expire(o)
                due = o.get("_refund_due")
                if due is not None and due <= t:
                    self.order_complete_refunds(o)

    def dump(self):
        with self.lock:
            return {
                "accounts": [dict(public(a), notify=a["notify"]) for a in self.accounts.values()],
                "stores": [public(s) for s in self.stores.values()],
                "pos": [public(p) for p in self.pos.values()],
                "pos_orders": [dict(public(r), expires_at=r["expires_at"])
                               for r in self.pos_orders.values()],
                "pending_scans": [list(k) for k in self.pending_scans],
                "merchant_orders": [self.mo_view(m) for m in self.mos.values()],
                "payments": [public(p) for p in self.payments.values()],
                "orders": [public(o) for o in self.orders.values()],
                "chargebacks": [public(c) for c in self.chargebacks.values()],
                "claims": [public(c) for c in self.claims.values()],
                "config": self.config,
            }
