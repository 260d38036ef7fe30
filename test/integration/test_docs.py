"""The README stays true to the code: every setting, its default and its
context, and every SQL function, as a freshly started server reports them."""
import os
import re

import pytest

from pgcluster import Cluster

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


@pytest.fixture(scope="module")
def plain_cluster():
    c = Cluster({"mpqr.listen_port": 0}, name="docs").init().start()
    c.execute("CREATE EXTENSION mpqr")
    yield c
    c.destroy()


def readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def test_settings_table_matches_the_server(plain_cluster):
    rows = {}
    for line in readme().splitlines():
        m = re.match(r"^\| `(mpqr\.[a-z_]+)` \| ([^|]*) \| ([^|]*) \|", line)
        if m:
            rows[m.group(1)] = (m.group(2).strip(), m.group(3).strip())
    server = {name: (context, boot) for name, context, boot in plain_cluster.execute(
        "SELECT name, context, boot_val FROM pg_settings WHERE name LIKE 'mpqr.%'")}
    assert set(rows) == set(server), "README and server disagree on which settings exist"
    for name, (default, context) in rows.items():
        shown = plain_cluster.scalar("SELECT current_setting(%s)", (name,))
        if name == "mpqr.listen_port":
            shown = server[name][1]  # the test cluster binds port 0; the default is the boot value
        documented = default.split(" (")[0].strip("`")
        if documented == "empty":
            documented = ""
        assert documented == shown, "%s: README says %r, the server %r" % (name, default, shown)
        assert context.split(",")[0].strip() == server[name][0], "%s: context" % name


def test_every_sql_function_is_documented(plain_cluster):
    text = readme()
    names = [r[0] for r in plain_cluster.execute(
        "SELECT p.proname FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid "
        "JOIN pg_extension e ON e.oid = d.refobjid WHERE e.extname = 'mpqr' "
        "AND p.proname LIKE 'mpqr\\_%' ORDER BY 1")]
    assert "mpqr_put_order" in names
    for name in names:
        assert "`%s(" % name in text, "%s is not in the README's SQL reference" % name
