"""Fixtures: the simulator over TLS, and a PostgreSQL cluster with mpqr preloaded.

The cluster is shared by the tests of one module; each test gets a fresh
extension (DROP/CREATE) and a reset simulator through the ``db`` fixture.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from pgcluster import Cluster, wait_for  # noqa: E402
from simclient import Sim, make_certs  # noqa: E402

COLLECTOR = 123456789
TOKEN = "APP_USR-test-token-main"
SECRET = "your_secret_key_here"


@pytest.fixture(scope="session")
def certs():
    return make_certs()


@pytest.fixture(scope="session")
def sim(certs):
    s = Sim(certs)
    yield s
    s.stop()


def base_settings(sim):
    return {
        "mpqr.api_base_url": sim.base_url,
        "mpqr.ca_file": sim.ca_file,
        "mpqr.listen_port": 0,
        "mpqr.poll_interval": "200ms",
        "mpqr.retry_base_delay": "100ms",
        "mpqr.retry_max_delay": "2s",
        "mpqr.http_timeout": "5s",
    }


@pytest.fixture(scope="module")
def cluster(sim):
    c = Cluster(base_settings(sim)).init().start()
    yield c
    c.destroy()


@pytest.fixture
def db(cluster, sim):
    """A fresh mpqr extension in the served database, and a reset simulator."""
    sim.reset()
    cluster.drop_extension()
    cluster.execute("DROP SCHEMA IF EXISTS mpqr CASCADE")
    cluster.execute("CREATE EXTENSION mpqr")
    return cluster


def listener_url(cluster):
    """Base URL of the listener, once it has bound its port."""
    port = wait_for(lambda: cluster.status().get("listen_port"), 30,
                    what="the listener to bind")
    return "http://127.0.0.1:%s" % port
