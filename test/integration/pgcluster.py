"""A throwaway PostgreSQL 15 cluster for tests, run as an unprivileged user.

initdb and postgres refuse to run as root, and CI runs as root, so the
cluster's files belong to the ``postgres`` OS user and every server command
goes through runuser.  The tests connect over the cluster's own Unix socket
as the ``postgres`` database user.
"""
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time

import psycopg2
import psycopg2.errors
import psycopg2.extensions

# MPQR_PG_BIN points the tests at another (relocated) PostgreSQL 15 tree,
# so that two checkouts can be built and tested side by side.
PG_BIN = os.environ.get("MPQR_PG_BIN", "/usr/lib/postgresql/15/bin")
PG_USER = "postgres"

# Hooks for the sanitizer and valgrind runs (make test-sanitize, make
# valgrind): MPQR_SERVER_ENV is VAR=value pairs, in shell words, set
# for the server only (LD_PRELOAD of libasan, ASAN_OPTIONS); the tests'
# own processes do not get them.  MPQR_SERVER_WRAPPER is a program that
# pg_ctl runs instead of postgres, with postgres's arguments.
SERVER_ENV = shlex.split(os.environ.get("MPQR_SERVER_ENV", ""))
SERVER_WRAPPER = os.environ.get("MPQR_SERVER_WRAPPER")
START_TIMEOUT = "600" if SERVER_WRAPPER else "60"


def free_port():
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_pg_user(argv, **kw):
    """Run argv as the postgres OS user (directly when not root)."""
    if os.geteuid() == 0:
        argv = ["runuser", "-u", PG_USER, "--"] + list(argv)
    return subprocess.run(argv, check=True, **kw)


def wait_for(predicate, timeout=30.0, interval=0.05, what="condition"):
    """Poll predicate() until it returns a true value; return that value."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the condition may not be checkable yet
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError("timed out after %.1fs waiting for %s (last error: %r)"
                       % (timeout, what, last_exc))


class Cluster:
    """One PostgreSQL cluster in a temporary directory."""

    def __init__(self, settings=None, name="mpqr"):
        self.base = tempfile.mkdtemp(prefix="%s-pg-" % name)
        os.chmod(self.base, 0o755)
        if os.geteuid() == 0:
            shutil.chown(self.base, PG_USER, PG_USER)
        self.data = os.path.join(self.base, "data")
        self.log = os.path.join(self.base, "server.log")
        self.port = free_port()
        self.settings = {
            "port": self.port,
            "listen_addresses": "''",
            "unix_socket_directories": "'%s'" % self.base,
            "shared_preload_libraries": "'mpqr'",
            "max_worker_processes": 16,
            "log_line_prefix": "'%m [%p] %b '",
            "restart_after_crash": "on",
        }
        for key, value in (settings or {}).items():
            self.settings[key] = value
        self.running = False

    # -- life cycle -------------------------------------------------------
    def init(self):
        as_pg_user([os.path.join(PG_BIN, "initdb"), "-D", self.data, "-A", "trust",
                    "-U", PG_USER, "--no-sync", "-E", "UTF8", "--locale=C"],
                   stdout=subprocess.DEVNULL)
        self.write_conf()
        return self

    def write_conf(self):
        lines = ["%s = %s" % (k, self._quote(v)) for k, v in self.settings.items()]
        path = os.path.join(self.data, "mpqr_test.conf")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        if os.geteuid() == 0:
            shutil.chown(path, PG_USER, PG_USER)
        conf = os.path.join(self.data, "postgresql.conf")
        with open(conf) as f:
            text = f.read()
        if "include = 'mpqr_test.conf'" not in text:
            with open(conf, "a") as f:
                f.write("\ninclude = 'mpqr_test.conf'\n")

    @staticmethod
    def _quote(value):
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, (int, float)):
            return str(value)
        value = str(value)
        if value.startswith("'"):
            return value
        return "'%s'" % value.replace("'", "''")

    def set(self, **settings):
        """Change settings in the cluster's include file (reload or restart after)."""
        for key, value in settings.items():
            self.settings[key.replace("__", ".")] = value
        self.write_conf()

    def start(self):
        argv = [os.path.join(PG_BIN, "pg_ctl"), "-D", self.data, "-l", self.log,
                "-w", "-t", START_TIMEOUT, "start"]
        if SERVER_WRAPPER:
            argv[1:1] = ["-p", SERVER_WRAPPER]
        if SERVER_ENV:
            argv = ["env"] + SERVER_ENV + argv
        as_pg_user(argv, stdout=subprocess.DEVNULL)
        self.running = True
        return self

    def stop(self, mode="fast"):
        if self.running:
            as_pg_user([os.path.join(PG_BIN, "pg_ctl"), "-D", self.data, "-m", mode,
                        "-w", "-t", "60", "stop"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
            self.running = False

    def restart(self):
        self.stop()
        self.start()

    def reload(self):
        self.execute("SELECT pg_reload_conf()")

    def destroy(self):
        try:
            self.stop(mode="immediate")
        finally:
            if os.environ.get("MPQR_KEEP_CLUSTERS"):
                print("keeping cluster in", self.base)
            else:
                shutil.rmtree(self.base, ignore_errors=True)

    # -- access -----------------------------------------------------------
    def dsn(self, dbname="postgres"):
        return "host=%s port=%d user=%s dbname=%s" % (self.base, self.port, PG_USER, dbname)

    def connect(self, dbname="postgres", autocommit=True):
        conn = psycopg2.connect(self.dsn(dbname))
        conn.autocommit = autocommit
        return conn

    def execute(self, sql, params=None, dbname="postgres"):
        """Run one statement in its own connection; return all rows (or None)."""
        conn = self.connect(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                if cur.description is not None:
                    return cur.fetchall()
                return None
        finally:
            conn.close()

    def scalar(self, sql, params=None, dbname="postgres"):
        rows = self.execute(sql, params, dbname)
        return rows[0][0] if rows else None

    def drop_extension(self, dbname="postgres"):
        """DROP EXTENSION mpqr while its workers run.

        Each unit of work of the workers takes a share lock on the extension
        first, which DROP EXTENSION takes exclusively before anything else:
        the DROP waits for the unit, and never deadlocks with it.
        """
        self.execute("DROP EXTENSION IF EXISTS mpqr CASCADE", dbname=dbname)

    def wait_ready(self, timeout=60):
        """Wait until the server accepts connections (after a crash restart)."""
        def ok():
            return self.scalar("SELECT 1") == 1
        return wait_for(ok, timeout, what="the server to accept connections")

    def status(self, dbname="postgres"):
        """mpqr_status() as a dict."""
        return dict(self.execute("SELECT name, value FROM mpqr_status()", dbname=dbname))

    def log_text(self):
        with open(self.log, errors="replace") as f:
            return f.read()
