"""pg_regress: the SQL API tests in sql/ and expected/, on a throwaway cluster.

The regression database is not mpqr.database, so the workers never send
what these tests queue: the results depend on SQL alone.
"""
import os
import subprocess

import pytest

from pgcluster import Cluster

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


@pytest.fixture(scope="module")
def regress_cluster():
    c = Cluster({"mpqr.listen_port": 0}, name="regress").init().start()
    yield c
    c.destroy()


def test_pg_regress(regress_cluster):
    env = dict(os.environ, PGHOST=regress_cluster.base, PGPORT=str(regress_cluster.port),
               PGUSER="postgres")
    proc = subprocess.run(["make", "-s", "installcheck"], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    diffs = os.path.join(ROOT, "regression.diffs")
    detail = proc.stdout
    if proc.returncode != 0 and os.path.exists(diffs):
        with open(diffs) as f:
            detail += f.read()[:20000]
    assert proc.returncode == 0, detail
