"""Stores, POS with their QR, cancel, refunds, and several accounts (issue: admin)."""
import json

import pytest

from conftest import COLLECTOR, SECRET, TOKEN, base_settings
from pgcluster import Cluster, free_port, wait_for

OTHER = 222333444
OTHER_TOKEN = "APP_USR-other-token"
LOCATION = {"street_number": "123", "street_name": "Av. Corrientes", "city_name": "Palermo",
            "state_name": "Capital Federal", "latitude": -34.6037, "longitude": -58.3816,
            "reference": "Local 2"}


@pytest.fixture(scope="module")
def cluster(sim):
    port = free_port()
    settings = base_settings(sim)
    settings.update({"mpqr.listen_port": port, "mpqr.public_url": "http://127.0.0.1:%d" % port,
                     "mpqr.fast_check_after": "1h"})
    c = Cluster(settings, name="admin").init().start()
    c.listener = "http://127.0.0.1:%d" % port
    yield c
    c.destroy()


def status_of(db, ref):
    return db.scalar("SELECT status FROM mpqr.orders WHERE external_reference = %s", (ref,))


def wait_status(db, ref, status, timeout=30):
    wait_for(lambda: status_of(db, ref) == status, timeout, what="%s to become %s" % (ref, status))


@pytest.fixture
def accounts(db, sim):
    sim.account(user_id=COLLECTOR, token=TOKEN, site_id="MLA")
    sim.account(user_id=OTHER, token=OTHER_TOKEN, site_id="MLA", webhook_secret=SECRET,
                webhook_url=db.listener + "/notifications?account=other")
    db.execute("SELECT mpqr_add_account('main', %s, %s, NULL, 'MLA', 'instore')", (COLLECTOR, TOKEN))
    db.execute("SELECT mpqr_add_account('other', %s, %s, %s, 'MLA', 'orders')", (OTHER, OTHER_TOKEN, SECRET))
    return db


def test_store_then_pos_in_one_transaction_keeps_the_qr(accounts, sim):
    conn = accounts.connect(autocommit=False)
    with conn.cursor() as cur:
        cur.execute("SELECT mpqr_add_store('main', external_id => 'SUC001', name => 'Centro', location => %s)",
                    (json.dumps(LOCATION),))
        cur.execute("SELECT mpqr_add_pos('SUC001POS001', store => 'SUC001', name => 'Caja 1', category => 621102)")
    conn.commit()
    conn.close()
    wait_for(lambda: accounts.scalar("SELECT status FROM mpqr.pos WHERE external_id = 'SUC001POS001'") == "created",
             30, what="the POS to be created")
    store = accounts.execute("SELECT mp_store_id, status FROM mpqr.stores WHERE external_id = 'SUC001'")[0]
    assert store[1] == "created" and store[0]
    pos = accounts.execute("SELECT mp_pos_id, mp_store_id, uuid, qr_image, qr_template_document, "
                           "qr_template_image, qr_code FROM mpqr.pos WHERE external_id = 'SUC001POS001'")[0]
    assert all(v is not None for v in pos), pos
    assert pos[1] == store[0]
    assert pos[3].endswith(".png") and pos[4].endswith(".pdf")
    assert accounts.scalar("SELECT qr ->> 'template_document' FROM mpqr.pos "
                           "WHERE external_id = 'SUC001POS001'") == pos[4]
    # what MP received: the store first, then the POS with the store's ids
    st = sim.requests(r"^/users/%d/stores$" % COLLECTOR)
    ps = sim.requests(r"^/pos$")
    assert len(st) == 1 and len(ps) == 1 and st[0]["seq"] < ps[0]["seq"]
    body = json.loads(ps[0]["body"])
    assert body["fixed_amount"] is True
    assert str(body["store_id"]) == store[0] and body["external_store_id"] == "SUC001"
    assert body["external_id"] == "SUC001POS001" and body["category"] == 621102
    # the printing view
    row = accounts.execute("SELECT qr_image, qr_template_document FROM mpqr.pos_qr WHERE pos_id = 'SUC001POS001'")
    assert row and row[0][0] == pos[3]
    # and the POS takes orders at once
    accounts.execute("SELECT mpqr_put_order('SUC001POS001', 'QR-1', 10)")
    wait_status(accounts, "QR-1", "published")


def test_pos_creation_conflict_adopts_the_existing_one(accounts, sim):
    st = sim.store(user_id=COLLECTOR, name="Centro", external_id="SUC002", location=LOCATION)
    existing = sim.pos(user_id=COLLECTOR, name="Caja", fixed_amount=True, store_id=st["id"],
                       external_store_id="SUC002", external_id="SUC002POS001")
    accounts.execute("SELECT mpqr_add_store('main', 'SUC002', 'Centro', %s)", (json.dumps(LOCATION),))
    accounts.execute("SELECT mpqr_add_pos('SUC002POS001', 'SUC002', 'Caja 1')")
    wait_for(lambda: accounts.scalar("SELECT status FROM mpqr.pos WHERE external_id = 'SUC002POS001'") == "created",
             30, what="the POS to be adopted")
    assert accounts.scalar("SELECT mp_pos_id FROM mpqr.pos WHERE external_id = 'SUC002POS001'") == existing["id"]
    assert accounts.scalar("SELECT mp_store_id FROM mpqr.stores WHERE external_id = 'SUC002'") == str(st["id"])


def link_pos(db, sim, uid, store, pos, account):
    st = sim.store(user_id=uid, name="Centro", external_id=store, location=LOCATION)
    sim.pos(user_id=uid, name="Caja", fixed_amount=True, store_id=st["id"], external_store_id=store,
            external_id=pos)
    db.execute("SELECT mpqr_add_pos(%s, %s, 'Caja', account => %s, register => false)", (pos, store, account))


def test_cancel_instore(accounts, sim):
    link_pos(accounts, sim, COLLECTOR, "SUC001", "SUC001POS001", "main")
    accounts.execute("SELECT mpqr_put_order('SUC001POS001', 'CANCEL-1', 10)")
    wait_status(accounts, "CANCEL-1", "published")
    accounts.execute("SELECT mpqr_cancel_order('CANCEL-1')")
    wait_status(accounts, "CANCEL-1", "cancelled")
    reqs = sim.requests(r"^/instore/qr/seller/collectors/%d/pos/SUC001POS001/orders$" % COLLECTOR)
    assert [r["method"] for r in reqs] == ["GET", "DELETE"]
    status, _ = sim.api("GET", "/instore/qr/seller/collectors/%d/pos/SUC001POS001/orders" % COLLECTOR, TOKEN)
    assert status == 404


def test_cancel_orders_api_and_a_queued_one(accounts, sim):
    link_pos(accounts, sim, OTHER, "SUC003", "SUC003POS001", "other")
    accounts.execute("SELECT mpqr_put_order('SUC003POS001', 'OCANCEL-1', 10)")
    wait_status(accounts, "OCANCEL-1", "published")
    mp_id = accounts.scalar("SELECT mp_order_id FROM mpqr.orders WHERE external_reference = 'OCANCEL-1'")
    accounts.execute("SELECT mpqr_cancel_order('OCANCEL-1')")
    wait_status(accounts, "OCANCEL-1", "cancelled")
    reqs = sim.requests(r"^/v1/orders/%s/cancel$" % mp_id)
    assert len(reqs) == 1 and reqs[0]["headers"].get("x-idempotency-key")
    # a queued order is cancelled before it is sent
    conn = accounts.connect(autocommit=False)
    with conn.cursor() as cur:
        cur.execute("SELECT mpqr_put_order('SUC003POS001', 'OCANCEL-2', 10)")
        cur.execute("SELECT mpqr_cancel_order('OCANCEL-2')")
    conn.commit()
    conn.close()
    assert status_of(accounts, "OCANCEL-2") == "cancelled"
    accounts.execute("SELECT mpqr_put_order('SUC003POS001', 'OCANCEL-3', 10)")
    wait_status(accounts, "OCANCEL-3", "published")
    sent = [json.loads(r["body"])["external_reference"] for r in sim.requests(r"^/v1/orders$")]
    assert "OCANCEL-2" not in sent


def test_cancel_of_a_paid_order_points_to_refund(accounts, sim):
    link_pos(accounts, sim, COLLECTOR, "SUC001", "SUC001POS001", "main")
    accounts.execute("SELECT mpqr_put_order('SUC001POS001', 'PAIDC-1', 10)")
    wait_status(accounts, "PAIDC-1", "published")
    sim.pay(user_id=COLLECTOR, external_pos_id="SUC001POS001")
    wait_status(accounts, "PAIDC-1", "paid")
    with pytest.raises(Exception) as e:
        accounts.execute("SELECT mpqr_cancel_order('PAIDC-1')")
    assert "mpqr_refund" in str(e.value)


def test_instore_partial_then_full_refund(accounts, sim):
    link_pos(accounts, sim, COLLECTOR, "SUC001", "SUC001POS001", "main")
    accounts.execute("SELECT mpqr_put_order('SUC001POS001', 'REF-1', 100)")
    wait_status(accounts, "REF-1", "published")
    first = sim.pay(user_id=COLLECTOR, external_pos_id="SUC001POS001", amount=60)
    p1, mo = first["payment_id"], first["merchant_order_id"]
    p2 = sim.pay(user_id=COLLECTOR, merchant_order_id=mo, amount=40)["payment_id"]
    wait_status(accounts, "REF-1", "paid")
    wait_for(lambda: accounts.scalar("SELECT count(*) FROM mpqr.payments WHERE status = 'approved'") == 2,
             30, what="both payments recorded")
    # errors before any call
    for bad in ("SELECT mpqr_refund('REF-1', 100.01)", "SELECT mpqr_refund('REF-1', 0)",
                "SELECT mpqr_refund('NOPE')"):
        with pytest.raises(Exception):
            accounts.execute(bad)
    assert accounts.scalar("SELECT mpqr_refund('REF-1', 70)") == 70
    wait_for(lambda: float(accounts.scalar("SELECT refunded_amount FROM mpqr.orders "
                                           "WHERE external_reference = 'REF-1'")) == 70, 30,
             what="70 refunded")
    assert status_of(accounts, "REF-1") == "paid"
    accounts.execute("SELECT mpqr_refund('REF-1')")
    wait_status(accounts, "REF-1", "refunded")
    reqs = sim.requests(r"^/v1/payments/\d+/refunds$")
    keys = [r["headers"]["x-idempotency-key"] for r in reqs]
    assert len(reqs) == 3 and len(set(keys)) == 3
    # 70 spread over the older payment (60) and the newer (10), sent side by side, so in
    # either order; then the 30 left of the newer
    sent = [(r["path"], json.loads(r["body"] or "{}")) for r in reqs]
    assert sorted(sent[:2], key=repr) == sorted([
        ("/v1/payments/%s/refunds" % p1, {}),
        ("/v1/payments/%s/refunds" % p2, {"amount": 10})], key=repr)
    assert sent[2] == ("/v1/payments/%s/refunds" % p2, {})
    with pytest.raises(Exception) as e:
        accounts.execute("SELECT mpqr_refund('REF-1', 1)")
    assert "remains" in str(e.value)
    receipt = accounts.scalar("SELECT mpqr_receipt('REF-1')")
    assert "REFUNDED" in receipt and "Refunds:" in receipt


def test_unpaid_refund_is_an_error(accounts, sim):
    link_pos(accounts, sim, COLLECTOR, "SUC001", "SUC001POS001", "main")
    accounts.execute("SELECT mpqr_put_order('SUC001POS001', 'UNPAID-1', 10)")
    with pytest.raises(Exception) as e:
        accounts.execute("SELECT mpqr_refund('UNPAID-1')")
    assert "not paid" in str(e.value)
    assert accounts.scalar("SELECT count(*) FROM mpqr.refunds") == 0


def test_orders_api_refund_is_confirmed_by_a_fetch(accounts, sim):
    link_pos(accounts, sim, OTHER, "SUC003", "SUC003POS001", "other")
    accounts.execute("SELECT mpqr_put_order('SUC003POS001', 'OREF-1', 30)")
    wait_status(accounts, "OREF-1", "published")
    mp_id = accounts.scalar("SELECT mp_order_id FROM mpqr.orders WHERE external_reference = 'OREF-1'")
    sim.pay(user_id=OTHER, order_id=mp_id)
    wait_status(accounts, "OREF-1", "paid")
    # a partial refund is refused by MP for QR orders, and kept on the refund
    accounts.execute("SELECT mpqr_refund('OREF-1', 10)")
    wait_for(lambda: accounts.scalar("SELECT status FROM mpqr.refunds ORDER BY id LIMIT 1") == "rejected",
             30, what="the partial refund to be refused")
    assert "unsupported_partially_refunds" in accounts.scalar("SELECT error FROM mpqr.refunds ORDER BY id LIMIT 1")
    assert status_of(accounts, "OREF-1") == "paid"
    accounts.execute("SELECT mpqr_refund('OREF-1')")
    wait_for(lambda: accounts.scalar("SELECT status FROM mpqr.refunds ORDER BY id DESC LIMIT 1") == "processing",
             30, what="the refund to be processing")
    assert status_of(accounts, "OREF-1") == "paid"
    sim.call("POST", "/_sim/complete_refunds", {"order_id": mp_id})
    wait_status(accounts, "OREF-1", "refunded")
    keys = [r["headers"]["x-idempotency-key"] for r in sim.requests(r"^/v1/orders/%s/refund$" % mp_id)]
    assert len(keys) == 2 and len(set(keys)) == 2


def test_two_accounts_two_tokens(accounts, sim):
    link_pos(accounts, sim, COLLECTOR, "SUC001", "SUC001POS001", "main")
    link_pos(accounts, sim, OTHER, "SUC003", "SUC003POS001", "other")
    accounts.execute("SELECT mpqr_put_order('SUC001POS001', 'SAME-REF', 10)")
    accounts.execute("SELECT mpqr_put_order('SUC003POS001', 'SAME-REF', 20)")
    wait_for(lambda: accounts.scalar("SELECT count(*) FROM mpqr.orders WHERE status = 'published'") == 2,
             30, what="both published")
    put = sim.requests(r"^/instore/")[0]
    post = sim.requests(r"^/v1/orders$")[0]
    assert put["headers"]["authorization"] == "Bearer " + TOKEN
    assert post["headers"]["authorization"] == "Bearer " + OTHER_TOKEN
    with pytest.raises(Exception) as e:
        accounts.execute("SELECT mpqr_cancel_order('SAME-REF')")
    assert "more than one account" in str(e.value)
    sim.pay(user_id=COLLECTOR, external_pos_id="SUC001POS001")
    mp_id = accounts.scalar("SELECT mp_order_id FROM mpqr.orders WHERE account = 'other'")
    sim.pay(user_id=OTHER, order_id=mp_id)
    wait_for(lambda: accounts.scalar("SELECT count(*) FROM mpqr.orders WHERE status = 'paid'") == 2,
             30, what="both paid")
    # each was fetched with its own account's token
    for r in sim.requests(r"^/merchant_orders"):
        assert r["headers"]["authorization"] == "Bearer " + TOKEN
    for r in sim.requests(r"^/v1/orders/ORD"):
        assert r["headers"]["authorization"] == "Bearer " + OTHER_TOKEN
    assert "RECEIPT" in accounts.scalar("SELECT mpqr_receipt('SAME-REF', account => 'other')")
