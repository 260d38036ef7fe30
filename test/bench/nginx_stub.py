"""A local nginx over TLS that answers every API request with 204: the
fastest Mercado Pago there can be, for the sender's benchmarks."""
import os
import shutil
import signal
import subprocess
import tempfile

from pgcluster import free_port, wait_for
from simclient import make_certs

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


class NginxStub:
    """with NginxStub() as stub: stub.base is its URL, stub.settings() mpqr's."""

    def __enter__(self):
        self.certs = make_certs()
        self.dir = tempfile.mkdtemp(prefix="mpqr-nginx-")
        self.port = free_port()
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF % {"dir": self.dir, "port": self.port, "certs": self.certs})
        self.proc = subprocess.Popen(["nginx", "-c", conf, "-p", self.dir])
        self.base = "https://127.0.0.1:%d" % self.port
        self.ca_file = os.path.join(self.certs, "ca.pem")
        wait_for(lambda: subprocess.run(["curl", "-s", "-o", "/dev/null", "--cacert", self.ca_file,
                                         self.base + "/"]).returncode == 0, 20, what="nginx to answer")
        return self

    def settings(self):
        return {"mpqr.api_base_url": self.base, "mpqr.ca_file": self.ca_file}

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.certs, ignore_errors=True)
