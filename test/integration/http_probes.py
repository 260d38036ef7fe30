"""Bad HTTP inputs for the listener, each with the answers it may get.

Used by test_listener_hostile.py, and on its own to fill the "HTTP probes"
table of test/RELIABILITY.md against a running listener:

    python3 test/integration/http_probes.py http://127.0.0.1:8484 --repeat 100

Each probe is raw bytes written to a fresh connection; the outcome is the
status line of the first answer (or "closed" / "no answer").  A probe never
carries a valid notification, so none may be answered 200.
"""
import argparse
import socket
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

NOTIFY = b"POST /notifications?topic=payment&id=1 HTTP/1.1\r\nHost: x\r\n"


def _args(n):
    return "&".join("a%d=%d" % (i, i) for i in range(n)).encode()


def _headers(n):
    return b"".join(b"X-H%d: %d\r\n" % (i, i) for i in range(n))


# (name, bytes, statuses allowed)
PROBES = [
    ("Content-Length and chunked",
     NOTIFY + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n0\r\n\r\n",
     {400}),
    ("Transfer-Encoding then Content-Length",
     NOTIFY + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", {400}),
    ("two Content-Length", NOTIFY + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}x", {400}),
    ("Content-Length not a number", NOTIFY + b"Content-Length: 2x\r\n\r\n{}", {400}),
    ("negative Content-Length", NOTIFY + b"Content-Length: -1\r\n\r\n{}", {400}),
    ("Transfer-Encoding gzip", NOTIFY + b"Transfer-Encoding: gzip\r\n\r\n{}", {400}),
    ("Transfer-Encoding twice",
     NOTIFY + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", {400}),
    ("bad chunk size", NOTIFY + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", {400}),
    ("129 query arguments",
     b"POST /notifications?" + _args(129) + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
     {414}),
    ("500 query arguments",
     b"POST /notifications?" + _args(500) + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
     {414}),
    ("3000 query arguments",
     b"POST /notifications?" + _args(3000) + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
     {414}),
    ("40 kB URI",
     b"POST /notifications?topic=payment&id=" + b"1" * 40000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
     {414}),
    ("1000 headers", NOTIFY + _headers(1000) + b"Content-Length: 0\r\n\r\n", {431}),
    ("one 40 kB header", NOTIFY + b"X-Big: " + b"a" * 40000 + b"\r\nContent-Length: 0\r\n\r\n",
     {431}),
    ("header without colon", NOTIFY + b"NoColonHere\r\nContent-Length: 0\r\n\r\n", {400}),
    ("HTTP/0.9 request line", b"GET /healthz\r\n\r\n", {400}),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", {400, 404, 405, 505}),
    ("unknown HTTP version", b"GET /healthz HTTP/7.0\r\nHost: x\r\n\r\n", {505, 400}),
    ("body over max_body", NOTIFY + b"Content-Length: 10000000\r\n\r\n", {413}),
    ("NUL in the body", NOTIFY + b"Content-Length: 4\r\n\r\n{\x00}\n", {400}),
    ("invalid UTF-8 body", NOTIFY + b"Content-Length: 4\r\n\r\n\"\xff\xfe\"", {400}),
    ("not JSON", NOTIFY + b"Content-Length: 5\r\n\r\nhello", {400}),
    ("JSON nested 100000 deep", NOTIFY + b"Content-Length: 60000\r\n\r\n" + b"[" * 60000, {400}),
    ("unknown path", b"POST /admin HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", {404}),
    ("path traversal", b"POST /notifications/../healthz HTTP/1.1\r\nHost: x\r\n\r\n", {404}),
    ("wrong method", b"DELETE /notifications HTTP/1.1\r\nHost: x\r\n\r\n", {405}),
    ("binary garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64, {400, 408}),
]


def probe(host, port, data, timeout=10.0):
    """Write data on a new connection; return (outcome, seconds)."""
    started = time.monotonic()
    s = socket.create_connection((host, port), timeout=timeout)
    try:
        try:
            s.sendall(data)
        except OSError:
            pass                    # the server may answer and close mid-way
        got = b""
        while b"\r\n" not in got:
            try:
                chunk = s.recv(4096)
            except socket.timeout:
                return "no answer", time.monotonic() - started
            except OSError:
                break
            if not chunk:
                break
            got += chunk
    finally:
        s.close()
    elapsed = time.monotonic() - started
    if not got:
        return "closed", elapsed
    line = got.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) >= 2 and parts[1].isdigit():
        return int(parts[1]), elapsed
    return line, elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("url")
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    u = urlsplit(args.url)
    bad = 0
    print("| input | tries | outcomes | slowest (s) |")
    print("|---|---|---|---|")
    for name, data, allowed in PROBES:
        outcomes = Counter()
        slowest = 0.0
        for _ in range(args.repeat):
            outcome, elapsed = probe(u.hostname, u.port, data)
            outcomes[outcome] += 1
            slowest = max(slowest, elapsed)
        bad += sum(n for o, n in outcomes.items() if o not in allowed)
        shown = ", ".join("%s × %d" % (o, n) for o, n in sorted(outcomes.items(), key=str))
        print("| %s | %d | %s | %.3f |" % (name, args.repeat, shown, slowest))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
