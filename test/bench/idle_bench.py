"""P5 and P6 (issue 10): what the workers cost when idle, and their footprint.

P5  With nothing to do, for 20 s: CPU time of the sender and the listener
    (utime + stime from /proc), and the mpqr functions they ran (every
    query of the workers is a call of one; track_functions counts them).  Target:
    <= 1% of a core and no query when nothing is due; aim 0.
P6  The listener's private memory (RssAnon) and open descriptors after each
    of 4 rounds of load (wrk, 32 connections, 10 s of notifications that
    each name a merchant order): the last round against the first.  Target
    within +10%; aim flat.
"""
import os
import re
import sys
import tempfile
import time

from benchlib import machine, run
from nginx_stub import NginxStub
from pgcluster import Cluster, free_port, wait_for

IDLE = int(os.environ.get("BENCH_IDLE_SECONDS", "20"))
LOAD = int(os.environ.get("BENCH_SECONDS", "10"))
TICKS = os.sysconf("SC_CLK_TCK")

LUA = r"""
wrk.method = "POST"
wrk.body = '{"topic":"merchant_order"}'
wrk.headers["Content-Type"] = "application/json"
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, "/notifications?topic=merchant_order&id=" .. (counter % 50000 + 1))
end
"""


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def sockets(pid):
    n = 0
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            n += os.readlink("/proc/%d/fd/%s" % (pid, fd)).startswith("socket:")
        except OSError:
            pass
    return n


def footprint(pid):
    with open("/proc/%d/status" % pid) as f:
        rss = int(re.search(r"RssAnon:\s+(\d+) kB", f.read()).group(1))
    return rss, len(os.listdir("/proc/%d/fd" % pid))


def main():
    port = free_port()
    stub = NginxStub().__enter__()
    # autovacuum off, so that nothing else runs; the API
    # is nginx answering 204, so that the start-up catch-up ends at once
    c = Cluster(dict(stub.settings(), **{"mpqr.listen_port": port, "autovacuum": "off",
                                         "track_functions": "all"}),
                name="bench-idle").init().start()
    tmp = tempfile.mkdtemp(prefix="mpqr-idle-")
    try:
        c.execute("CREATE EXTENSION mpqr")
        c.execute("SELECT mpqr_add_account('main', 123456789, 'APP_USR-bench')")
        c.execute("INSERT INTO mpqr.merchant_orders (id, account, body) "
                  "SELECT g, 'main', '{}' FROM generate_series(1, 50000) g")
        st = wait_for(lambda: (lambda s: s if s.get("sender_pid") and s.get("listener_pid") else None)(
            c.status()), 30, what="both workers")
        sender, listener = int(st["sender_pid"]), int(st["listener_pid"])
        print("P5/P6 on %s" % machine())

        # P5: let the start-up work settle, then watch 20 s of nothing
        wait_for(lambda: not c.scalar("SELECT EXISTS (SELECT FROM mpqr.requests "
                                      "WHERE state IN ('queued', 'inflight'))"), 60)
        time.sleep(15)  # not a synchronisation: start-up work settles before the window
        calls = "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions"
        calls0 = c.scalar(calls)
        cpu0 = cpu_seconds(sender) + cpu_seconds(listener)
        t0 = time.monotonic()
        time.sleep(IDLE)  # the measured window itself
        cpu1 = cpu_seconds(sender) + cpu_seconds(listener)
        elapsed = time.monotonic() - t0
        # the workers flush their function counts at the end of each unit
        calls1 = c.scalar(calls)
        print("P5: %.0f s idle: sender + listener CPU %.3f s = %.3f%% of a core; "
              "mpqr functions the workers ran: %d"
              % (elapsed, cpu1 - cpu0, 100.0 * (cpu1 - cpu0) / elapsed, calls1 - calls0))

        # P6: footprint after each round of load
        c.execute("UPDATE mpqr.accounts SET paused_at = now(), pause_reason = 'benchmark'")
        lua = os.path.join(tmp, "mo.lua")
        with open(lua, "w") as f:
            f.write(LUA)
        rounds = []
        sockets_idle = sockets(listener)
        for i in range(4):
            run(["wrk", "-t2", "-c32", "-d%ds" % LOAD, "-s", lua, "http://127.0.0.1:%d" % port])
            # wrk has closed its connections; wait for the listener to close
            # its side (at the latest after mpqr.connection_timeout); its
            # other descriptors (relation files, say) stay open, as they may
            wait_for(lambda: sockets(listener) <= sockets_idle, 60,
                     what="the listener to close wrk's connections")
            rounds.append(footprint(listener))
            files = sorted({os.readlink("/proc/%d/fd/%s" % (listener, fd)).split("/")[-1]
                            for fd in os.listdir("/proc/%d/fd" % listener)
                            if "/base/" in os.readlink("/proc/%d/fd/%s" % (listener, fd))})
            print("  after round %d: listener RssAnon %d kB, %d fds (%d sockets, %d relation files); "
                  "stored %s" % (i + 1, rounds[-1][0], rounds[-1][1], sockets(listener), len(files),
                                 c.scalar("SELECT count(*) FROM mpqr.notifications")), flush=True)
        first, last = rounds[0], rounds[-1]
        print("P6: listener after 3 more rounds vs after the first: RssAnon %+.1f%%, fds %+d"
              % (100.0 * (last[0] - first[0]) / first[0], last[1] - first[1]))
        print("    sender RssAnon %d kB, %d fds" % footprint(sender))
    finally:
        c.destroy()
        stub.__exit__(None, None, None)


if __name__ == "__main__":
    sys.exit(main())
