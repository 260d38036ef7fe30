"""Careless and hostile SQL callers: no secret in the server log, nothing slow.

sql/validation.sql (pg_regress) tries the bad inputs one by one; these tests
look at what only a real server shows: its log under default settings
(log_min_error_statement = error writes the failing statement), and the
time a huge argument takes to be refused.
"""
import time

import psycopg2
import pytest

TOKEN = "APP_USR-0123456789-secret-token-never-logged"
SECRET = "whsec-never-logged-0123456789"


def fails(db, sql, params=None):
    with pytest.raises(psycopg2.Error) as e:
        db.execute(sql, params)
    return e.value


@pytest.mark.parametrize("call", [
    "SELECT mpqr_set_account('typo', access_token => %(t)s)",
    "SELECT mpqr_add_account('bad name!', 1, %(t)s)",
    "SELECT mpqr_add_account('x', 1, %(t)s, %(s)s, 'XXX')",
    "SELECT mpqr_set_account('main', access_token => %(t)s, webhook_secret => %(s)s, api => 'v9')",
])
def test_a_failed_call_never_logs_its_token_or_secret(db, call):
    db.execute("SELECT mpqr_add_account('main', 1, 'APP_USR-old')")
    before = len(db.log_text())
    err = fails(db, call, {"t": TOKEN, "s": SECRET})
    assert err.pgcode is not None
    logged = db.log_text()[before:]
    assert "ERROR" in logged                      # the error itself is logged
    assert TOKEN not in logged and SECRET not in logged
    assert TOKEN not in str(err) and SECRET not in str(err)


def test_a_huge_argument_is_refused_quickly_and_quoted_short(db):
    db.execute("SELECT mpqr_add_account('main', 1, 'APP_USR-x', NULL, 'MLA', 'instore')")
    db.execute("SELECT mpqr_add_pos('P1', 'S1', 'Caja', register => false)")
    huge = "r" * 10_000_000
    before = len(db.log_text())
    start = time.monotonic()
    fails(db, "SELECT mpqr_cancel_order(%s)", (huge,))
    err = fails(db, "SELECT mpqr_put_order('P1', 'R1', 10, title => %s)", (huge,))
    took = time.monotonic() - start
    assert took < 5, took
    assert len(str(err)) < 500
    # the statement itself may be logged, but no error message quotes more
    # than a short prefix of the value
    for line in db.log_text()[before:].splitlines():
        if "ERROR:" in line or "DETAIL:" in line:
            assert len(line) < 500, line[:200]
