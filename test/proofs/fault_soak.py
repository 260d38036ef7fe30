"""Fault soak: about 20% of Mercado Pago's answers replaced by faults over
thousands of orders, then an outage.

Soak: the simulator's fault injection (/_sim/faults with ``chance``) takes
each API request, independently, into one of six faults with the same
probability, 1 - 0.8^(1/6) each, so that about 20% of the answers are
faulted: 503; 429 with Retry-After: 2; reset (the connection closed, no
answer); timeout (the answer 2.5 s late, over mpqr.http_timeout = 2 s; the
simulator still applies the request, as MP may); slow (0.8 s, then the real
answer); malformed (the request done, then 200 with truncated JSON: a 2xx
answer means MP did it, only the body was mangled on the way).  In ROUNDS rounds, one order
is put on each of NPOS POS of both accounts ('ist' instore, 'ord' Orders
API); once every order of the round is published or failed, the customer
pays each published one, and the round waits for those to be paid.

Checked:
- convergence: every order ends paid (it was paid at MP) or failed with an
  error, by the end of the run; a round waits BOUND seconds for its orders
  to leave queued, and PAID_BOUND for its payments to be seen; nothing left
  queued or in flight at the end of the soak;
- backoff: for each publish (an Orders API POST by its idempotency key, an
  instore order by its POS and reference, its checks included) the pause
  between a faulted answer (but for slow ones, and a malformed 200 to an
  instore PUT, which answers 204 with no body to read: both are successes)
  and the next attempt is at most
  mpqr.retry_max_delay (plus 1 s for the sender's wake-up), and after a 429
  it is at least its Retry-After;
- outage: OUTAGE_ORDERS orders are put, MP answers 503 to everything for
  30 s, then is well again.  Bound: in the 10 s after the outage at most 2
  requests per request still pending at its end (one send, one check), and
  in no second more than half of them (the jitter spreads the retries of
  the capped delay over at least half of it).

Environment: SOAK_ROUNDS (10), SOAK_POS (100 a account), SOAK_OUTAGE (30 s).
Exit status 1 when a check fails.
"""
import json
import os
import re
import sys
import time
from collections import Counter, defaultdict

import prooflib
from prooflib import POST_RE
from pgcluster import wait_for
from simclient import Sim, make_certs

ROUNDS = int(os.environ.get("SOAK_ROUNDS", "10"))
NPOS = int(os.environ.get("SOAK_POS", "100"))
OUTAGE = float(os.environ.get("SOAK_OUTAGE", "30"))
OUTAGE_ORDERS = NPOS
BOUND = 120
PAID_BOUND = 45  # a round waits this long for its payments to be seen; the check is at the end
HTTP_TIMEOUT, MAX_DELAY, RETRY_AFTER = 2.0, 5.0, 2
SETTINGS = {"mpqr.http_timeout": "2s", "mpqr.retry_max_delay": "5s", "mpqr.max_attempts": 20,
            "mpqr.max_in_flight": 64}
EACH = 1 - 0.8 ** (1 / 6.0)
FAULTS = {"503": {"status": 503}, "429": {"status": 429, "retry_after": RETRY_AFTER},
          "reset": {"drop": True}, "timeout": {"latency_ms": 2500},
          "slow": {"latency_ms": 800}, "malformed": {"malformed": True, "process": True}}
POS_RE = r"^/instore/qr/seller/collectors/\d+/(stores/[^/]+/)?pos/([^/]+)/orders$"


def states(c, refs):
    rows = c.execute("SELECT external_reference, status, error FROM mpqr.orders "
                     "WHERE external_reference = ANY(%s)", (list(refs),))
    return {r[0]: (r[1], r[2]) for r in rows}


def put_round(c, tag):
    refs = ["%s-%s%d" % (tag, p, i) for p in ("I", "O") for i in range(NPOS)]
    c.execute("SELECT mpqr_put_order(p || g, %s || '-' || p || g, 10 + g %% 7) "
              "FROM generate_series(0, %s) g, unnest(ARRAY['I', 'O']) p", (tag, NPOS - 1))
    return refs


def soak_round(c, sim, k):
    refs = put_round(c, "F%d" % k)
    t0 = time.monotonic()
    wait_for(lambda: all(s[0] != "queued" for s in states(c, refs).values()), BOUND,
             interval=0.2, what="round %d's orders to be published or failed" % k)
    published = time.monotonic() - t0
    paid = [ref for ref in refs if prooflib.pay(sim, c, ref)]
    t1 = time.monotonic()
    try:
        wait_for(lambda: all(s[0] == "paid" for r, s in states(c, paid).items()), PAID_BOUND,
                 interval=0.2, what="round %d's paid orders to be paid" % k)
    except TimeoutError:
        late = [r for r, s in states(c, paid).items() if s[0] != "paid"]
        print("  round %2d: %d orders paid at MP not seen paid within %d s: %s"
              % (k, len(late), PAID_BOUND, late[:5]), flush=True)
    st = states(c, refs)
    out = Counter(s[0] for s in st.values())
    print("  round %2d: %d orders, out of queued in %.1f s, %d paid at MP, all seen paid %.1f s later; %s"
          % (k, len(refs), published, len(paid), time.monotonic() - t1, dict(out)), flush=True)
    return refs, set(paid)


def gaps(sim, specs):
    """(pause, fault kind) after each faulted answer of a publish, to its next attempt."""
    groups = defaultdict(list)
    for r in sim.requests():
        if r["method"] == "POST" and r["path"] == "/v1/orders":
            groups["POST " + (r["headers"].get("x-idempotency-key") or "")].append(r)
        else:
            m = re.match(POS_RE, r["path"])
            if m and r["method"] in ("PUT", "GET"):
                groups["POS " + m.group(2)].append(r)
    out = []
    for key, rs in groups.items():
        rs.sort(key=lambda r: r["seq"])
        ref = None
        for prev, nxt in zip(rs, rs[1:]):
            if prev["method"] == "PUT":
                ref = json.loads(prev["body"])["external_reference"]
            kind = specs.get(prev["fault"])
            if kind is None or kind == "slow":
                continue
            if kind == "malformed" and prev["method"] == "PUT":
                continue  # a 2xx to an instore PUT, whose body mpqr need not read: done, no retry
            if nxt["method"] == "PUT" and json.loads(nxt["body"])["external_reference"] != ref:
                continue  # the next round's order on that POS, not a retry
            took = min(FAULTS[kind].get("latency_ms", 0) / 1000.0, HTTP_TIMEOUT)
            out.append((nxt["ts"] - prev["ts"] - took, kind, key))
    return out


def outage(c, sim):
    sim.call("DELETE", "/_sim/faults", ok=None)
    refs = put_round(c, "X")
    sim.fault(path=".*", status=503, times=10 ** 9)
    start = time.time()
    time.sleep(OUTAGE)  # the outage itself: MP down for OUTAGE seconds
    pending = c.scalar("SELECT count(*) FROM mpqr.requests WHERE state IN ('queued', 'inflight')")
    print("outage: requests at its end by kind and state: %s"
          % c.execute("SELECT kind, state, count(*), max(failures) FROM mpqr.requests "
                      "WHERE created_at > now() - interval '%s s' GROUP BY 1, 2", (OUTAGE + 5,)))
    sim.call("DELETE", "/_sim/faults", ok=None)
    end = time.time()
    wait_for(lambda: all(s[0] != "queued" for s in states(c, refs).values()), BOUND,
             interval=0.2, what="the outage's orders to be published")
    recovered = time.time() - end
    time.sleep(max(0.0, end + 10 - time.time()))  # the 10 s after the outage, to count them
    log = [r for r in sim.requests() if r["ts"] >= start]
    ts = [r["ts"] for r in log]
    what = Counter("%s %s" % (r["method"], re.sub(r"\d{3,}|ORD\w+|[IO]\d+", "N", r["path"]))
                   for r in log if end <= r["ts"] < end + 10)
    print("outage: the requests of the 10 s after it: %s" % dict(what))
    during = Counter(int(t - start) for t in ts if t < end)
    after = Counter(int(t - end) for t in ts if end <= t < end + 10)
    return refs, pending, during, after, recovered


def main():
    certs = make_certs()
    sim = Sim(certs)
    c = None
    failed = []
    try:
        c = prooflib.cluster(sim, SETTINGS, "fault-soak")
        prooflib.shop(c, sim, NPOS)
        prooflib.header("Fault soak")
        print("settings: %s; %d rounds of %d orders; faults, each with chance %.4f: %s"
              % (SETTINGS, ROUNDS, 2 * NPOS, EACH, ", ".join(FAULTS)), flush=True)
        specs = {}
        for kind, spec in FAULTS.items():
            specs[sim.fault(path=".*", times=10 ** 9, chance=EACH, **spec)["id"]] = kind
        all_refs, paid = [], set()
        started = time.monotonic()
        for k in range(ROUNDS):
            refs, p = soak_round(c, sim, k)
            all_refs += refs
            paid |= p
        soak_time = time.monotonic() - started
        log = sim.requests()
        faulted = Counter(specs.get(r["fault"], "other") for r in log if r["fault"])
        st = states(c, all_refs)
        out = Counter(s[0] for s in st.values())
        unconverged = [r for r in all_refs if not ((r in paid and st[r][0] == "paid")
                                                   or (st[r][0] == "failed" and st[r][1]))]
        errors = Counter((st[r][1] or "")[:70] for r in all_refs if st[r][0] == "failed")
        left = c.scalar("SELECT count(*) FROM mpqr.requests WHERE state IN ('queued', 'inflight')")
        print()
        print("soak: %d orders in %.0f s; %d API requests, %d faulted (%.1f%%): %s"
              % (len(all_refs), soak_time, len(log), sum(faulted.values()),
                 100.0 * sum(faulted.values()) / max(1, len(log)), dict(faulted)))
        print("soak: final status %s; failed errors %s; not converged %d; requests left queued "
              "or in flight %d" % (dict(out), dict(errors), len(unconverged), left))
        if prooflib.NO_ID:
            print("soak: %d published Orders API orders had no mp_order_id (paid by scanning the POS), e.g. %s"
                  % (len(prooflib.NO_ID), list(prooflib.NO_ID.items())[:3]))
        if prooflib.UNPAID:
            print("soak: the customer could not pay: %s" % dict(prooflib.UNPAID))
        if unconverged:
            failed.append("%d orders did not converge, e.g. %s" % (
                len(unconverged), [(r, st[r]) for r in unconverged[:5]]))
        if left:
            failed.append("%d requests left queued or in flight" % left)
        g = gaps(sim, specs)
        worst = max(g) if g else (0, "-", "-")
        ra = [x for x in g if x[1] == "429"]
        early = [x for x in ra if x[0] < RETRY_AFTER - 0.05]
        by_kind = {kind: max(x[0] for x in g if x[1] == kind) for kind in FAULTS if any(x[1] == kind for x in g)}
        print("backoff: %d retries after a faulted answer; longest pause %.2f s (after %s, %s); "
              "longest by fault: %s; after a 429 (Retry-After %d s): %d retries, shortest pause %.2f s, "
              "%d early" % (len(g), worst[0], worst[1], worst[2],
                            {k: round(v, 2) for k, v in by_kind.items()}, RETRY_AFTER, len(ra),
                            min(x[0] for x in ra) if ra else float("nan"), len(early)))
        if worst[0] > MAX_DELAY + 1.0:
            failed.append("a retry paused %.2f s > retry_max_delay %.0f s + 1 s: %s" % (worst[0], MAX_DELAY, worst))
        if early:
            failed.append("%d retries came before Retry-After, e.g. %s" % (len(early), early[:3]))

        refs, pending, during, after, recovered = outage(c, sim)
        st = states(c, refs)
        total_after, peak_after = sum(after.values()), max(after.values()) if after else 0
        print("outage: %d orders put, %.0f s of 503 to everything; requests a second during it: %s"
              % (len(refs), OUTAGE, [during.get(i, 0) for i in range(int(OUTAGE) + 1)]))
        print("outage: %d requests pending at its end; requests a second in the 10 s after: %s "
              "(total %d, bound %d; peak %d, bound %d); all %d orders out of queued %.1f s after; %s"
              % (pending, [after.get(i, 0) for i in range(10)], total_after, 2 * pending,
                 peak_after, pending // 2, len(refs), recovered, dict(Counter(s[0] for s in st.values()))))
        if total_after > 2 * pending or peak_after > pending // 2:
            failed.append("request storm after the outage: %d in 10 s (bound %d), peak %d/s (bound %d)"
                          % (total_after, 2 * pending, peak_after, pending // 2))
        for f in failed:
            print("FAILED: " + f)
        print("RESULT: %s" % ("FAIL" if failed else "pass"))
        return 1 if failed else 0
    finally:
        if c:
            c.destroy()
        sim.stop()


if __name__ == "__main__":
    sys.exit(main())
