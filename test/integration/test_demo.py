"""make demo, run from a clean clone of this repository, tells the whole story."""
import os
import subprocess
import shutil
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_demo_from_a_clean_clone():
    work = tempfile.mkdtemp(prefix="mpqr-demo-clone-")
    try:
        clone = os.path.join(work, "mpqr")
        subprocess.run(["git", "clone", "-q", ROOT, clone], check=True)
        proc = subprocess.run(["make", "demo"], cwd=clone, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=300)
        out = proc.stdout
        assert proc.returncode == 0, out[-5000:]
        # the story, in order
        marks = ["CREATE EXTENSION mpqr", "mpqr_add_account", "mpqr_add_pos", "the static QR:",
                 "\u2588", "mpqr_put_order", "The order is published", "mode => 'dynamic'",
                 "the dynamic QR:", "\u2588", "scan the QR", "pay in the app",
                 "stored the notification", '"status": "paid"', "ORDER-1001 is paid",
                 "ORDER-1002 is paid", "mpqr_receipt", "RECEIPT", "2 x Pizza", "Status: PAID", "Done:"]
        pos = 0
        for m in marks:
            found = out.find(m, pos)
            assert found >= 0, "the demo did not say %r (in order); output:\n%s" % (m, out[-5000:])
            pos = found
        assert "APP_USR-demo-token" not in out
        # nothing left running
        ps = subprocess.run(["ps", "-eo", "args"], stdout=subprocess.PIPE, text=True).stdout
        assert "demo-pg-" not in ps and clone not in ps
    finally:
        shutil.rmtree(work, ignore_errors=True)
