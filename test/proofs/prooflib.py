"""Shared pieces of the long proofs (make crash-matrix, make fault-soak).

A cluster running mpqr against the simulator, with two accounts: 'ist' on
the instore API and 'ord' on the Orders API, each with its store and POS,
and the listener on a local port that both the simulator's deliveries and
the proofs' own notifications reach.
"""
import os
import subprocess
import sys
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.path.insert(0, os.path.join(HERE, "..", "bench"))

from benchlib import machine  # noqa: E402
from pgcluster import Cluster, free_port  # noqa: E402

IST, ORD = 123456789, 222333444
TOKENS = {IST: "APP_USR-proof-instore", ORD: "APP_USR-proof-orders"}
SECRET = "proof-secret"
LOCATION = {"street_number": "1", "street_name": "Calle", "city_name": "Palermo",
            "state_name": "Capital Federal", "latitude": -34.6, "longitude": -58.4, "reference": "x"}
PUT_RE = r"^/instore/qr/seller/collectors/%d/stores/[^/]+/pos/[^/]+/orders$" % IST
POST_RE = r"^/v1/orders$"
UNPAID = Counter()  # why the customer could not pay, when not
NO_ID = {}  # published Orders API orders without an MP id: ref -> the order found on the POS


def commit():
    try:
        return subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"], check=True,
                              stdout=subprocess.PIPE, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def header(title):
    print("%s on %s, commit %s" % (title, machine(), commit()), flush=True)


def cluster(sim, settings, name):
    port = free_port()
    s = {"mpqr.api_base_url": sim.base_url, "mpqr.ca_file": sim.ca_file,
         "mpqr.listen_port": port, "mpqr.public_url": "http://127.0.0.1:%d" % port,
         "max_connections": 60}
    s.update(settings)
    c = Cluster(s, name=name).init().start()
    c.listener = "http://127.0.0.1:%d" % port
    return c


def shop(c, sim, npos):
    """Both accounts, npos POS each: 'I<n>' (instore) and 'O<n>' (Orders API)."""
    sim.reset()
    c.execute("CREATE EXTENSION IF NOT EXISTS mpqr")
    sim.account(user_id=IST, token=TOKENS[IST], site_id="MLA")
    sim.account(user_id=ORD, token=TOKENS[ORD], site_id="MLA", webhook_secret=SECRET,
                webhook_url=c.listener + "/notifications?account=ord")
    c.execute("SELECT mpqr_add_account('ist', %s, %s, NULL, 'MLA', 'instore')", (IST, TOKENS[IST]))
    c.execute("SELECT mpqr_add_account('ord', %s, %s, %s, 'MLA', 'orders')", (ORD, TOKENS[ORD], SECRET))
    for uid, store, pfx, acct in ((IST, "SI", "I", "ist"), (ORD, "SO", "O", "ord")):
        st = sim.store(user_id=uid, name="Centro", external_id=store, location=LOCATION)
        for i in range(npos):
            sim.pos(user_id=uid, name="Caja %d" % i, fixed_amount=True, store_id=st["id"],
                    external_store_id=store, external_id="%s%d" % (pfx, i))
        c.execute("SELECT mpqr_add_pos(%s || g, %s, 'Caja ' || g, account => %s, register => false) "
                  "FROM generate_series(0, %s) g", (pfx, store, acct, npos - 1))


def pay(sim, c, ref):
    """The customer pays the order ref where it is now (instore: its POS; Orders API: its
    id, or the order on its POS when mpqr has none).

    Returns the simulator's answer, or None when there is nothing to pay
    (the order was replaced on its POS meanwhile).
    """
    row = c.execute("SELECT account, pos_id, mp_order_id FROM mpqr.orders "
                    "WHERE external_reference = %s AND status = 'published'", (ref,))
    if not row:
        return None
    acct, pos, mp_id = row[0]
    try:
        if acct == "ist":
            return sim.pay(user_id=IST, external_pos_id=pos)
        if mp_id is None:  # mpqr has no id for it: the customer scans the POS to find it
            mp_id = sim.scan(user_id=ORD, external_pos_id=pos).get("order_id")
            NO_ID[ref] = mp_id
        return sim.pay(user_id=ORD, order_id=mp_id)
    except AssertionError as e:
        UNPAID[str(e)[:120]] += 1
        return None
