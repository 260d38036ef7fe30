"""Crash matrix: kill -9 of the sender, the listener, a client backend and the
postmaster at random points while orders are put and notifications arrive.

Load, all the time:
- CLIENTS client sessions put orders with mpqr_put_order, round robin over
  their own POS of both accounts ('ist' on the instore API, 'ord' on the
  Orders API); a put that returned is committed, one whose connection died
  under it is uncertain (either outcome is right);
- a customer pays published orders through /_sim/pay, so the simulator
  delivers its notifications (IPN and webhooks, retried as MP does);
- a notifier POSTs IPNs straight to the listener, each with a unique
  ``probe`` query argument, and notes which got a 200.

In rounds, each target is killed once, at a random moment of its window
(WINDOW seconds), and the cluster's recovery is awaited: PostgreSQL
restarts every process after a child's kill -9; after the postmaster's,
the orphans are awaited and the cluster is started with pg_ctl.

Checked afterwards, once the load has stopped and the outbox settled:
- lost: a committed order not in mpqr.orders, or still queued;
- doubled: an Orders API reference POSTed under two X-Idempotency-Keys, or
  with two orders at MP; an instore reference PUT again after a PUT of it
  landed (MP answered 204);
- missing acks: a notification answered 200 (a probe, or a simulator
  delivery, matched by its X-Request-Id) that is not in mpqr.notifications.

Environment: CRASH_ORDERS (2000), CRASH_NOTIFICATIONS (2000), CRASH_ROUNDS
(5), CRASH_WINDOW (6 s).  Exit status 1 when a check fails.
"""
import bisect
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict

import prooflib
from prooflib import IST, ORD, POST_RE, PUT_RE
import psycopg2
from pgcluster import wait_for
from simclient import Sim, make_certs

ORDERS = int(os.environ.get("CRASH_ORDERS", "2000"))
NOTES = int(os.environ.get("CRASH_NOTIFICATIONS", "2000"))
ROUNDS = int(os.environ.get("CRASH_ROUNDS", "5"))
WINDOW = float(os.environ.get("CRASH_WINDOW", "6"))
CLIENTS = 4
NPOS = 24
TARGETS = ("sender", "listener", "backend", "postmaster")
SETTINGS = {"mpqr.http_timeout": "2s", "mpqr.retry_max_delay": "5s", "mpqr.request_lease": "5s"}


class Load:
    """The load threads and what they saw, each event with its wall time."""

    def __init__(self, c, sim):
        self.c, self.sim = c, sim
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.committed = {}      # ref -> time
        self.uncertain = set()
        self.put_errors = Counter()
        self.probes = {}         # probe -> (time, status)
        self.payments = []
        self.threads = [threading.Thread(target=self.client, args=(i,), daemon=True)
                        for i in range(CLIENTS)]
        self.threads += [threading.Thread(target=self.customer, daemon=True),
                         threading.Thread(target=self.notifier, daemon=True)]

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def client(self, i):
        pos = ["%s%d" % (p, k) for k in range(i, NPOS, CLIENTS) for p in ("I", "O")]
        conn, n = None, 0
        while not self.stop.is_set():
            if conn is None:
                try:
                    conn = self.c.connect()
                except psycopg2.Error:
                    self.stop.wait(0.2)
                    continue
            ref = "C%d-%d" % (i, n)
            p = pos[n % len(pos)]
            n += 1
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT mpqr_put_order(%s, %s, %s)", (p, ref, 10 + n % 7))
                with self.lock:
                    self.committed[ref] = time.time()
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                self.uncertain.add(ref)
                conn = None
            except psycopg2.Error as e:
                if e.pgcode is None or conn.closed:  # the connection went with the server
                    self.uncertain.add(ref)
                    conn = None
                else:
                    self.put_errors["%s %s" % (e.pgcode, str(e).splitlines()[0][:80])] += 1
            self.stop.wait(0.15)

    def customer(self):
        while not self.stop.is_set():
            try:
                refs = [r[0] for r in self.c.execute(
                    "SELECT external_reference FROM mpqr.orders WHERE status = 'published' "
                    "ORDER BY random() LIMIT 3")]
                for ref in refs:
                    got = prooflib.pay(self.sim, self.c, ref)
                    if got:
                        self.payments.append(got["payment_id"])
            except (psycopg2.Error, OSError):
                pass
            self.stop.wait(0.1)

    def notifier(self):
        n = 0
        while not self.stop.is_set():
            n += 1
            pid = self.payments[-1] if self.payments else 1
            url = self.c.listener + "/notifications?topic=payment&id=%s&probe=P%d" % (pid, n)
            data = ('{"resource":"%s","topic":"payment"}' % pid).encode()
            req = urllib.request.Request(url, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    status = r.status
            except urllib.error.HTTPError as e:
                status = e.code
            except OSError:
                status = None
            self.probes["P%d" % n] = (time.time(), status)
            self.stop.wait(0.04)


def pids(c):
    st = c.status()
    return st.get("sender_pid"), st.get("listener_pid")


def recovered(c, old):
    """Wait for the server, and a sender and a listener other than those in old."""
    c.wait_ready(120)
    return wait_for(lambda: (lambda p: p if all(p) and not set(p) & set(old) else None)(pids(c)),
                    120, interval=0.1, what="a new sender and listener")


def kill_backend(c):
    """kill -9 a client backend while it runs mpqr_put_order."""
    conn = c.connect()
    try:
        with conn.cursor() as cur:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                cur.execute("SELECT pid FROM pg_stat_activity WHERE state = 'active' "
                            "AND query LIKE 'SELECT mpqr_put_order(%%' AND pid <> pg_backend_pid() LIMIT 1")
                row = cur.fetchone()
                if row:
                    os.kill(row[0], signal.SIGKILL)
                    return row[0]
    finally:
        conn.close()
    raise TimeoutError("no backend seen running mpqr_put_order")


def kill_postmaster(c):
    with open(os.path.join(c.data, "postmaster.pid")) as f:
        pm = int(f.readline())
    kids = [int(p) for p in subprocess.run(["ps", "-o", "pid=", "--ppid", str(pm)], stdout=subprocess.PIPE,
                                           text=True).stdout.split()]
    os.kill(pm, signal.SIGKILL)

    def gone():
        return not any(os.path.exists("/proc/%d" % p) for p in kids + [pm])
    wait_for(gone, 60, interval=0.05, what="the postmaster's children to exit")
    c.start()
    return pm


def kill(c, target):
    old = pids(c)
    t0 = time.monotonic()
    if target == "backend":
        pid = kill_backend(c)
    elif target == "postmaster":
        pid = kill_postmaster(c)
    else:
        pid = int(old[TARGETS.index(target)])
        os.kill(pid, signal.SIGKILL)
    recovered(c, old)
    return pid, time.monotonic() - t0


def settle(c, sim):
    wait_for(lambda: c.scalar("SELECT count(*) FROM mpqr.orders WHERE status = 'queued'") == 0
             and c.scalar("SELECT count(*) FROM mpqr.requests WHERE kind = 'publish' "
                          "AND state IN ('queued', 'inflight')") == 0,
             240, interval=0.5, what="every order out of queued")
    wait_for(lambda: sim.call("GET", "/_sim/health")["pending"] == 0, 120, interval=0.5,
             what="the simulator's deliveries to finish")


def doubled_refs(sim):
    bad = set()
    keys, at_mp = defaultdict(set), Counter()
    for r in sim.requests(POST_RE):
        if r["method"] == "POST":
            keys[json.loads(r["body"])["external_reference"]].add(r["headers"].get("x-idempotency-key"))
    bad |= {ref for ref, k in keys.items() if len(k) > 1}
    for o in sim.state()["orders"]:
        at_mp[o["external_reference"]] += 1
    bad |= {ref for ref, k in at_mp.items() if k > 1}
    landed = set()
    for r in sorted(sim.requests(PUT_RE), key=lambda r: r["seq"]):
        if r["method"] != "PUT":
            continue
        ref = json.loads(r["body"])["external_reference"]
        if ref in landed:
            bad.add(ref)
        if r["status"] == 204:
            landed.add(ref)
    return bad, sum(len(k) for k in keys.values()), len(landed)


def main():
    certs = make_certs()
    sim = Sim(certs)
    c = None
    try:
        c = prooflib.cluster(sim, SETTINGS, "crash-matrix")
        prooflib.shop(c, sim, NPOS)
        prooflib.header("Crash matrix")
        print("settings: %s; %d client sessions on %d POS of each account; %d rounds"
              % (SETTINGS, CLIENTS, NPOS, ROUNDS), flush=True)
        load = Load(c, sim)
        phases = [(time.time(), "(start)")]
        kills = Counter()
        load.start()
        rnd = 0
        started = time.monotonic()
        while rnd < ROUNDS or len(load.committed) < ORDERS or \
                sum(1 for _, s in load.probes.values() if s == 200) < NOTES // 2:
            rnd += 1
            for target in TARGETS:
                phases.append((time.time(), target))
                time.sleep(random.uniform(0.5, WINDOW))  # a random point to kill at
                pid, took = kill(c, target)
                kills[target] += 1
                print("  round %d: kill -9 %-10s pid %-7d recovered in %5.2f s   orders committed %d"
                      % (rnd, target, pid, took, len(load.committed)), flush=True)
                time.sleep(random.uniform(0.5, 2.0))  # load runs on between kills
            if time.monotonic() - started > 480:
                break
        phases.append((time.time(), "(end)"))
        load.finish()
        settle(c, sim)

        times = [p[0] for p in phases]

        def phase(t):
            return phases[max(0, bisect.bisect_right(times, t) - 1)][1]

        status = dict(c.execute("SELECT external_reference, status FROM mpqr.orders"))
        stored_probes = {r[0] for r in c.execute("SELECT query->>'probe' FROM mpqr.notifications "
                                                 "WHERE query ? 'probe'")}
        stored_ids = {r[0] for r in c.execute("SELECT request_id FROM mpqr.notifications "
                                              "WHERE request_id IS NOT NULL")}
        doubled, posts, landed = doubled_refs(sim)
        rows = defaultdict(Counter)
        for ref, t in load.committed.items():
            ph = phase(t)
            rows[ph]["orders"] += 1
            if status.get(ref) in (None, "queued"):
                rows[ph]["lost"] += 1
            if ref in doubled:
                rows[ph]["doubled"] += 1
        for probe, (t, st) in load.probes.items():
            if st == 200:
                rows[phase(t)]["notifications"] += 1
                rows[phase(t)]["direct"] += 1
                if probe not in stored_probes:
                    rows[phase(t)]["missing"] += 1
        acked_ids = set()
        deliveries = sim.deliveries()
        for d in deliveries:
            if d["status"] == 200:
                rid = d["headers"].get("X-Request-Id") or d["headers"].get("x-request-id")
                if rid in acked_ids:
                    continue
                acked_ids.add(rid)
                t = d["sent_at"] if isinstance(d["sent_at"], (int, float)) else None
                ph = phase(t) if t else "(unknown)"
                rows[ph]["notifications"] += 1
                rows[ph]["sim"] += 1
                if rid not in stored_ids:
                    rows[ph]["missing"] += 1
        print()
        print("| kill target | kills | orders | notifications (simulator + direct) | lost | doubled | missing acks |")
        print("|---|---|---|---|---|---|---|")
        total = Counter()
        for ph in ("(start)",) + TARGETS + ("(end)", "(unknown)"):
            if ph not in rows and ph not in kills:
                continue
            r = rows[ph]
            total.update(r)
            print("| %s | %d | %d | %d (%d + %d) | %d | %d | %d |"
                  % (ph, kills[ph], r["orders"], r["notifications"], r["sim"], r["direct"],
                     r["lost"], r["doubled"], r["missing"]))
        print("| all | %d | %d | %d (%d + %d) | %d | %d | %d |"
              % (sum(kills.values()), total["orders"], total["notifications"], total["sim"],
                 total["direct"], total["lost"], total["doubled"], total["missing"]))
        print()
        fin = Counter(status.get(ref, "absent") for ref in load.committed)
        unc = Counter(status.get(ref, "absent") for ref in load.uncertain)
        print("committed puts by final status: %s" % dict(fin))
        print("uncertain puts (connection killed under the call): %d, by status: %s"
              % (len(load.uncertain), dict(unc)))
        print("put errors by SQLSTATE: %s" % dict(load.put_errors))
        print("payments made: %d; Orders API POSTs: %d; instore PUTs that landed: %d; "
              "simulator delivery attempts: %d; probes sent: %d (answered 200: %d)"
              % (len(load.payments), posts, landed, len(deliveries), len(load.probes),
                 sum(1 for _, s in load.probes.values() if s == 200)))
        if doubled:
            print("doubled references: %s" % sorted(doubled)[:20])
        ok = (total["lost"] == 0 and total["doubled"] == 0 and total["missing"] == 0
              and total["orders"] >= ORDERS and total["notifications"] >= NOTES)
        print("RESULT: %s" % ("pass" if ok else "FAIL"))
        return 0 if ok else 1
    finally:
        if c:
            c.destroy()
        sim.stop()


if __name__ == "__main__":
    sys.exit(main())
