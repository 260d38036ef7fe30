"""Sender benchmark: API requests drained per second, against the HTTP ceiling.

Target: a local nginx over TLS that answers 204 to everything, as in the
prototype recorded in the design notes.  Baseline, in the same run: wrk
against the same nginx, TLS and keep-alive, 64 connections: the ceiling of
this machine.  mpqr: N requests are committed to the outbox in one
transaction (a GET each, whose 204 applies nothing, so the measure is the
sender: claim, libcurl, record), and the time from commit to the last one
recorded is measured, with mpqr.max_in_flight at its default (64) and at
512.  Rounds are interleaved; medians are reported.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from benchlib import interleave, machine, report, run
from pgcluster import Cluster, free_port, wait_for
from simclient import make_certs

N = int(os.environ.get("BENCH_REQUESTS", "20000"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))

NGINX_CONF = """
daemon off;
worker_processes 1;
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path %(dir)s/body;
    proxy_temp_path %(dir)s/proxy;
    fastcgi_temp_path %(dir)s/fastcgi;
    uwsgi_temp_path %(dir)s/uwsgi;
    scgi_temp_path %(dir)s/scgi;
    server {
        listen 127.0.0.1:%(port)d ssl;
        ssl_certificate %(certs)s/server.pem;
        ssl_certificate_key %(certs)s/server.key;
        location / { return 204; }
    }
}
"""


def main():
    certs = make_certs()
    ndir = tempfile.mkdtemp(prefix="mpqr-nginx-")
    port = free_port()
    with open(os.path.join(ndir, "nginx.conf"), "w") as f:
        f.write(NGINX_CONF % {"dir": ndir, "port": port, "certs": certs})
    nginx = subprocess.Popen(["nginx", "-c", os.path.join(ndir, "nginx.conf"), "-p", ndir])
    base = "https://127.0.0.1:%d" % port
    c = None
    try:
        wait_for(lambda: subprocess.run(["curl", "-s", "-o", "/dev/null", "--cacert",
                                         os.path.join(certs, "ca.pem"), base + "/"]).returncode == 0,
                 20, what="nginx to answer")
        c = Cluster({"mpqr.api_base_url": base, "mpqr.ca_file": os.path.join(certs, "ca.pem"),
                     "mpqr.listen_port": 0, "mpqr.poll_interval": "1s",
                     "shared_buffers": "256MB"}, name="bench").init().start()
        c.execute("CREATE EXTENSION mpqr")
        c.execute("SELECT mpqr_add_account('main', 123456789, 'APP_USR-bench')")

        def ceiling():
            out = run(["wrk", "-t2", "-c64", "-d%ds" % SECONDS, base + "/v1/payments/1"])
            return float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))

        def drain_with(in_flight):
            def go():
                c.execute("ALTER SYSTEM SET mpqr.max_in_flight = %d" % in_flight)
                c.reload()
                wait_for(lambda: c.scalar("SELECT count(*) FROM pg_settings WHERE name = "
                                          "'mpqr.max_in_flight' AND pending_restart") == 0, 10)
                return drain()
            return go

        def drain():
            conn = c.connect(autocommit=False)
            with conn.cursor() as cur:
                cur.execute("INSERT INTO mpqr.requests (account, kind, method, path, subject) "
                            "SELECT 'main', 'fetch_payment', 'GET', '/v1/payments/' || g, g::text "
                            "FROM generate_series(1, %s) g", (N,))
                cur.execute("SELECT mpqr.wake_sender_at_commit()")
            start = time.monotonic()
            conn.commit()
            conn.close()
            wait_for(lambda: c.scalar("SELECT count(*) FROM mpqr.requests WHERE state <> 'done'") == 0,
                     600, interval=0.02, what="the outbox to drain")
            elapsed = time.monotonic() - start
            bad = c.scalar("SELECT count(*) FROM mpqr.requests WHERE http_status <> 204")
            if bad:
                print("  %d requests did not get a 204" % bad)
            c.execute("DELETE FROM mpqr.requests")
            c.execute("VACUUM mpqr.requests")
            return N / elapsed

        print("Sender benchmark on %s, %d requests per drain, %d rounds" % (machine(), N, ROUNDS))
        results = interleave(ROUNDS, [("wrk ceiling, 64 conns", ceiling),
                                      ("mpqr drain, 64 in flight", drain_with(64)),
                                      ("mpqr drain, 512 in flight", drain_with(512))])
        report("API requests per second (TLS, keep-alive, nginx answering 204):", results,
               "wrk ceiling, 64 conns")
    finally:
        if c:
            c.destroy()
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(10)
        shutil.rmtree(ndir, ignore_errors=True)
        shutil.rmtree(certs, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
