"""pg_regress: the SQL API tests in sql/ and expected/, on a temporary
instance with mpqr preloaded (make regress, test/regress.conf).

The regression database is not mpqr.database, so the workers never send
what these tests queue: the results depend on SQL alone.
"""
import os
import subprocess

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_pg_regress():
    proc = subprocess.run(["make", "-s", "regress"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    diffs = os.path.join(ROOT, "regression.diffs")
    detail = proc.stdout
    if proc.returncode != 0 and os.path.exists(diffs):
        with open(diffs) as f:
            detail += f.read()[:20000]
    assert proc.returncode == 0, detail
