"""Start the Mercado Pago simulator (test/mpsim) and drive its control API."""
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import ssl

from pgcluster import wait_for

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SIM_DIR = os.path.join(ROOT, "test", "mpsim")
PYTHON = "/usr/bin/python3"


def make_certs():
    """Create a test CA and a server certificate; return the directory.

    The directory and the CA file are world-readable, because the server
    (running as the postgres OS user) reads the CA through mpqr.ca_file.
    """
    d = tempfile.mkdtemp(prefix="mpqr-certs-")
    os.chmod(d, 0o755)
    subprocess.run(["bash", os.path.join(SIM_DIR, "make_certs.sh"), d], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.chmod(os.path.join(d, "ca.pem"), 0o644)
    return d


class Sim:
    """A running simulator process."""

    def __init__(self, certs=None, extra_args=()):
        self.certs = certs
        self.dir = tempfile.mkdtemp(prefix="mpqr-sim-")
        ready = os.path.join(self.dir, "port")
        argv = [PYTHON, os.path.join(SIM_DIR, "mpsim.py"), "--port", "0",
                "--ready-file", ready] + list(extra_args)
        if certs:
            argv += ["--cert", os.path.join(certs, "server.pem"),
                     "--key", os.path.join(certs, "server.key")]
        self.log = open(os.path.join(self.dir, "sim.log"), "w")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        self.port = int(wait_for(lambda: open(ready).read().strip() if os.path.exists(ready) else None,
                                 timeout=20, what="the simulator to listen"))
        scheme = "https" if certs else "http"
        self.base_url = "%s://127.0.0.1:%d" % (scheme, self.port)
        self._ctx = ssl.create_default_context(cafile=os.path.join(certs, "ca.pem")) if certs else None

    @property
    def ca_file(self):
        return os.path.join(self.certs, "ca.pem") if self.certs else ""

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- control API -------------------------------------------------------
    def _send(self, method, path, body=None, token=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        if token is not None:
            req.add_header("Authorization", "Bearer " + token)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self._ctx, timeout=30) as resp:
                status, text = resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        return status, (json.loads(text) if text.strip() else None)

    def call(self, method, path, body=None, ok=(200, 201, 204)):
        """Call the control API; raise unless the answer is one of ok."""
        status, parsed = self._send(method, path, body)
        if ok and status not in ok:
            raise AssertionError("%s %s -> %d %s" % (method, path, status, parsed))
        return parsed

    def api(self, method, path, token, body=None):
        """Call the simulated Mercado Pago API itself; returns (status, parsed body)."""
        return self._send(method, path, body, token)

    def reset(self):
        return self.call("POST", "/_sim/reset", {})

    def account(self, **kw):
        return self.call("POST", "/_sim/accounts", kw)

    def store(self, **kw):
        return self.call("POST", "/_sim/stores", kw)

    def pos(self, **kw):
        return self.call("POST", "/_sim/pos", kw)

    def scan(self, **kw):
        return self.call("POST", "/_sim/scan", kw)

    def pay(self, **kw):
        return self.call("POST", "/_sim/pay", kw)

    def expire(self, **kw):
        return self.call("POST", "/_sim/expire", kw)

    def fault(self, **kw):
        return self.call("POST", "/_sim/faults", kw)

    def requests(self, path=None):
        q = "" if path is None else "?path=" + urllib.request.quote(path)
        return self.call("GET", "/_sim/requests" + q)

    def deliveries(self):
        return self.call("GET", "/_sim/deliveries")

    def state(self):
        return self.call("GET", "/_sim/state")

    def wait_requests(self, path, count=1, timeout=30, method=None):
        """Wait until at least count API requests matching path were received."""
        def got():
            rows = [r for r in self.requests(path) if method is None or r["method"] == method]
            return rows if len(rows) >= count else None
        return wait_for(got, timeout, what="%d request(s) to %s" % (count, path))
