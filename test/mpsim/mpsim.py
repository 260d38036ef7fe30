#!/usr/bin/python3
"""Mercado Pago API simulator for mpqr's tests: entry point and HTTP(S) server.

    /usr/bin/python3 test/mpsim/mpsim.py --port 0 --cert server.pem --key server.key \
        --ready-file /tmp/mpsim.port [--host 127.0.0.1] [--retry-delays 1,2,4,8] [--verbose]

Serves Mercado Pago's API (sim_api, sim_orders) and the /_sim/ control
interface (sim_control) on one port, HTTP/1.1 with keep-alive, over TLS when
--cert is given.  Each connection gets a thread; all model state sits behind
one lock (sim_state.State.lock).  A ticker thread applies time (expiries,
delayed refund completions) and the Notifier's threads deliver notifications.
When listening, the bound port is written to --ready-file atomically.
SIGTERM/SIGINT stop it cleanly.  Standard library only.
"""

import argparse
import os
import signal
import socket
import ssl
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sim_util import ApiError, dumps  # noqa: E402
from sim_notify import Notifier  # noqa: E402
from sim_state import State  # noqa: E402
import sim_api  # noqa: E402
import sim_control  # noqa: E402

MALFORMED = b'{"id": 15140831325, "status": "clos'


class App:
    """What every request handler needs."""

    def __init__(self, state, notifier, verbose, log_limit):
        self.state = state
        self.notifier = notifier
        self.faults = sim_control.Faults()
        self.requests = sim_control.RequestLog(log_limit)
        self.verbose = verbose


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, addr, app, sslctx):
        self.app = app
        self.sslctx = sslctx
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        super().__init__(addr, Handler)

    def get_request(self):
        # Accept in the listening thread, handshake in the connection's thread.
        sock, addr = self.socket.accept()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        if self.sslctx is not None:
            sock = self.sslctx.wrap_socket(sock, server_side=True,
                                           do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request, client_address):
        if self.app.verbose:
            traceback.print_exc()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mpsim/1.0"
    timeout = 300

    def version_string(self):
        return self.server_version

    def log_message(self, fmt, *args):
        if self.server.app.verbose:
            sys.stderr.write("mpsim %s %s\n" % (self.address_string(), fmt % args))

    def do_GET(self):
        self._handle()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

    def _read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _handle(self):
        app = self.server.app
        raw = self._read_body().decode("utf-8", "replace")
        parts = urlsplit(self.path)
        path = parts.path
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        if path == "/_sim" or path.startswith("/_sim/"):
            status, body, hdrs = sim_control.dispatch(app, self.command, path, query, raw)
            self._send(status, body, hdrs)
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        entry = app.requests.add({"method": self.command, "path": path, "query": parts.query,
                                  "headers": headers, "body": raw, "status": None,
                                  "ts": time.time(), "fault": None})
        fault = app.faults.take(self.command, path)
        if fault:
            entry["fault"] = fault["id"]
            if fault["latency_ms"]:
                time.sleep(fault["latency_ms"] / 1000.0)
            if not fault["process"] and self._fault(fault, entry):
                return
        ctx = sim_api.Ctx(self.command, path, query, headers, raw)
        try:
            status, body, hdrs = sim_api.dispatch(app.state, ctx)
        except ApiError as e:
            status, body, hdrs = e.status, e.body, e.headers
        except Exception:  # noqa: BLE001 - report as MP would, keep serving
            traceback.print_exc()
            status, body, hdrs = 500, {"message": "internal error", "error": "internal_error",
                                       "status": 500, "cause": []}, None
        entry["response"] = body
        if fault and fault["process"] and self._fault(fault, entry):
            return
        entry["status"] = status
        self._send(status, body, hdrs)

    def _fault(self, f, entry):
        """Answer (or not) as the fault says; False when it only adds latency."""
        if f["drop"]:
            entry["status"] = "dropped"
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return True
        if f["malformed"]:
            entry["status"] = 200
            self._send(200, MALFORMED, f["headers"])
            return True
        if f["status"] is None:
            return False
        st = int(f["status"])
        hdrs = dict(f["headers"])
        if f["retry_after"] is not None:
            hdrs["Retry-After"] = str(f["retry_after"])
        body = f["body"]
        if body is None and f["code"]:
            # MP's error code in the envelope of the API asked (§12.7)
            if self.path.startswith("/v1/orders"):
                body = {"errors": [{"code": f["code"], "message": "simulated fault",
                                    "details": []}]}
            else:
                body = {"message": "simulated fault", "error": f["code"], "status": st,
                        "cause": []}
        elif body is None:
            body = {"message": "simulated fault", "error": "simulated_%d" % st,
                    "status": st, "cause": []}
        elif isinstance(body, str):
            body = body.encode("utf-8")
        entry["status"] = st
        self._send(st, body, hdrs)
        return True

    def _send(self, status, body, headers):
        self.send_response(status)
        no_body = status == 204 or status == 304 or 100 <= status < 200
        data = b""
        if not no_body:
            if isinstance(body, bytes):
                data = body
            elif body is not None:
                data = dumps(body).encode("utf-8")
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        # One write for head and body: no Nagle/delayed-ACK stall between them.
        self._headers_buffer.append(b"\r\n")
        if data and self.command != "HEAD":
            self._headers_buffer.append(data)
        self.flush_headers()


def write_ready(path, port):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write("%d\n" % port)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Mercado Pago API simulator")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--cert", help="server certificate (PEM); without it, plain HTTP")
    ap.add_argument("--key", help="server private key (PEM)")
    ap.add_argument("--ready-file", help="write the bound port here once listening")
    ap.add_argument("--retry-delays", default="1,2,4,8",
                    help="seconds between notification retries (comma separated)")
    ap.add_argument("--notify-timeout", type=float, default=22.0,
                    help="seconds to wait for a notification answer")
    ap.add_argument("--notify-workers", type=int, default=4)
    ap.add_argument("--notify-cafile", help="CA bundle to verify https notification URLs")
    ap.add_argument("--log-limit", type=int, default=100000,
                    help="keep at most this many API requests and delivery attempts in the logs")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)

    delays = [float(x) for x in args.retry_delays.split(",") if x.strip()]
    notifier = Notifier(delays, timeout=args.notify_timeout, workers=args.notify_workers,
                        verbose=args.verbose, cafile=args.notify_cafile,
                        log_limit=args.log_limit)
    state = State(notifier)
    app = App(state, notifier, args.verbose, args.log_limit)
    sslctx = None
    if args.cert:
        sslctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sslctx.load_cert_chain(args.cert, args.key)
    server = Server((args.host, args.port), app, sslctx)
    port = server.server_address[1]

    stop = threading.Event()

    def ticker():
        while not stop.wait(0.1):
            try:
                state.tick()
            except Exception:  # noqa: BLE001
                traceback.print_exc()

    threading.Thread(target=ticker, name="ticker", daemon=True).start()
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                               name="serve", daemon=True)
    serving.start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if args.ready_file:
        write_ready(args.ready_file, port)
    if args.verbose:
        print("mpsim listening on %s://%s:%d" % ("https" if sslctx else "http", args.host, port),
              file=sys.stderr, flush=True)
    while not stop.wait(0.5):
        pass
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
