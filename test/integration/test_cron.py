"""pg_cron (Debian's postgresql-15-cron) schedules SELECT mpqr_reconcile().

pg_cron 1.4 schedules by the minute, so this test waits up to about 70 s:
a payment whose notifications were lost is found by the scheduled
reconciliation alone (the sweep and the routine catch-up are pushed out
of the way: the one catch-up that runs at once is over before the payment).
"""
import pytest

from conftest import COLLECTOR, TOKEN, base_settings
from pgcluster import Cluster, wait_for

LOCATION = {"street_number": "1", "street_name": "Calle", "city_name": "Palermo",
            "state_name": "Capital Federal", "latitude": -34.6, "longitude": -58.4, "reference": "x"}


@pytest.fixture(scope="module")
def cluster(sim):
    settings = base_settings(sim)
    settings.update({"shared_preload_libraries": "mpqr,pg_cron",
                     "cron.database_name": "postgres",
                     "cron.use_background_workers": "on",
                     "mpqr.fast_check_after": "1h",
                     "mpqr.catchup_interval": "1d"})
    c = Cluster(settings, name="cron").init().start()
    yield c
    c.destroy()


def test_scheduled_reconcile_finds_a_lost_payment(db, sim):
    sim.account(user_id=COLLECTOR, token=TOKEN, site_id="MLA", notify=[])
    st = sim.store(user_id=COLLECTOR, name="Centro", external_id="SUC001", location=LOCATION)
    sim.pos(user_id=COLLECTOR, name="Caja", fixed_amount=True, store_id=st["id"],
            external_store_id="SUC001", external_id="SUC001POS001")
    db.execute("SELECT mpqr_add_account('main', %s, %s, api => 'instore')", (COLLECTOR, TOKEN))
    db.execute("SELECT mpqr_add_pos('SUC001POS001', 'SUC001', 'Caja 1', register => false)")
    db.execute("SELECT mpqr_put_order('SUC001POS001', 'CRON-1', 20)")
    wait_for(lambda: db.scalar("SELECT status FROM mpqr.orders") == "published", 30, what="published")
    wait_for(lambda: db.scalar("SELECT finished_at FROM mpqr.catchups WHERE account = 'main'"), 30,
             what="the first catch-up to end")
    sim.pay(user_id=COLLECTOR, external_pos_id="SUC001POS001")

    db.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
    db.execute("SELECT cron.schedule('mpqr-reconcile', '* * * * *', 'SELECT mpqr_reconcile()')")
    try:
        wait_for(lambda: db.scalar("SELECT status FROM mpqr.orders") == "paid", 100,
                 interval=0.5, what="the scheduled reconciliation to find the payment")
        runs = db.execute("SELECT status, return_message FROM cron.job_run_details d "
                          "JOIN cron.job j USING (jobid) WHERE j.jobname = 'mpqr-reconcile'")
        assert ("succeeded", "SELECT 1") in runs
        assert db.scalar("SELECT count(*) FROM mpqr.notifications") == 0
    finally:
        db.execute("SELECT cron.unschedule('mpqr-reconcile')")


def test_readme_schedule_is_accepted_and_its_command_runs(db):
    """The README's own cron.schedule line: pg_cron takes it, and the
    command it stores runs (the scheduled run itself is shown above)."""
    import os
    import re
    from simclient import ROOT
    with open(os.path.join(ROOT, "README.md")) as f:
        lines = re.findall(r"`(SELECT cron\.schedule\('mpqr-reconcile'.*?\);?)`", f.read())
    assert len(lines) == 1, "the README shows one cron.schedule for mpqr_reconcile()"
    db.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
    db.execute(lines[0])
    try:
        schedule, command = db.execute("SELECT schedule, command FROM cron.job WHERE jobname = 'mpqr-reconcile'")[0]
        assert "mpqr_reconcile(" in command
        db.execute(command)
    finally:
        db.execute("SELECT cron.unschedule('mpqr-reconcile')")
