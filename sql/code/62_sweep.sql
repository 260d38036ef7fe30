-- The backstop for lost notifications, and the periodic duties of the
-- sender: expiry, the sweep, the catch-up by payments search, retention.
-- mpqr.tick() runs them and says when it is next due, so that the sender
-- sleeps until then (or until a commit wakes it): an idle server queries
-- nothing.

-- Queue a status check of an order: instore searches the payments of its
-- reference, the Orders API fetches the order (and the orders of earlier
-- attempts, still watched for late money).  Returns what it did.
CREATE FUNCTION mpqr.queue_check(o mpqr.orders) RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    api text;
    what text;
BEGIN
    SELECT a.api INTO api FROM mpqr.accounts a WHERE a.name = o.account;
    IF api = 'orders' THEN
        PERFORM mpqr.queue_fetch(o.account, 'order', prev, trusted => true)
           FROM unnest(o.previous_mp_order_ids) prev;
        IF o.mp_order_id IS NULL THEN
            RETURN 'ignored';
        END IF;
        what := (mpqr.queue_fetch(o.account, 'order', o.mp_order_id, trusted => true)).outcome;
    ELSE
        what := (mpqr.queue_fetch(o.account, 'search', o.external_reference, trusted => true)).outcome;
    END IF;
    UPDATE mpqr.orders x SET last_checked_at = now() WHERE x.id = o.id;
    RETURN what;
END
$$;

-- The orders still watched for money, one at a time: published ones, and
-- cancelled, superseded or expired ones until their expiry, or their close
-- if later, plus mpqr.late_payment_grace.  Paid orders are watched by the
-- catch-up, for refunds and chargebacks made in Mercado Pago's app.
CREATE FUNCTION mpqr.watched_orders() RETURNS SETOF mpqr.orders
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT * FROM mpqr.orders x
     WHERE x.status = 'published'
    UNION ALL
    SELECT * FROM mpqr.orders x
     WHERE x.status IN ('cancelled', 'expired')
       AND greatest(x.expires_at, x.closed_at) > now() - mpqr.setting_interval('late_payment_grace')
$$;

-- Expire what reached its expiry.  A queued order that was never sent
-- expires here, without a call.  Any other (published, or queued but maybe
-- sent: its answer was lost, or its retries gave up) gets a final check and
-- is removed from its POS; it becomes expired once that is done, unless
-- money arrived.  Returns whether more are due than it took.
CREATE FUNCTION mpqr.expire_due_orders() RETURNS boolean
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    c record;
    o mpqr.orders;
    n integer := 0;
BEGIN
    FOR c IN SELECT x.id, x.pos_id FROM mpqr.orders x
              WHERE x.status IN ('queued', 'published') AND x.expires_at <= now()
                AND NOT EXISTS (SELECT 1 FROM mpqr.requests q
                                 WHERE q.order_id = x.id AND q.kind = 'cancel'
                                   AND q.purpose = 'expire' AND q.created_at >= x.attempt_at)
              ORDER BY x.expires_at
              LIMIT 1000
    LOOP
        n := n + 1;
        -- the lock order: the POS, then the order; skip what is busy
        PERFORM 1 FROM mpqr.pos p WHERE p.external_id = c.pos_id FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        SELECT * INTO o FROM mpqr.orders x
         WHERE x.id = c.id AND x.status IN ('queued', 'published')
           FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        IF o.status = 'queued'
           AND mpqr.withdraw_publish(o.id, 'the order expired before it was sent') = 'withdrawn' THEN
            PERFORM mpqr.set_status(o.id, 'expired', 'expired before it was sent');
            CONTINUE;
        END IF;
        PERFORM mpqr.queue_check(o);
        PERFORM mpqr.queue_cancel(o, 'expire');
    END LOOP;
    RETURN n >= 1000;
END
$$;

-- Check the orders whose news is late, under one global rate limit
-- (mpqr.sweep_rate checks per second), what can still be paid first:
-- published orders past mpqr.fast_check_after, every
-- mpqr.fast_check_interval until their expiry, oldest check first; then
-- the watched cancelled, superseded and expired orders, every
-- mpqr.reconcile_interval.  Returns how many it queued.
CREATE FUNCTION mpqr.sweep() RETURNS integer
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    fast_after interval := mpqr.setting_interval('fast_check_after');
    fast_every interval := mpqr.setting_interval('fast_check_interval');
    slow_every interval := mpqr.setting_interval('reconcile_interval');
    rate double precision := mpqr.setting('sweep_rate')::double precision;
    o mpqr.orders;
    n integer := 0;
BEGIN
    FOR o IN SELECT * FROM mpqr.orders x
              WHERE x.status = 'published'
                AND coalesce(x.published_at, x.created_at) <= now() - fast_after
                AND (x.last_checked_at IS NULL OR x.last_checked_at <= now() -
                     CASE WHEN now() < x.expires_at THEN fast_every ELSE slow_every END)
              ORDER BY x.last_checked_at NULLS FIRST, x.id
              LIMIT 100
    LOOP
        IF NOT mpqr.take_token('sweep', rate) THEN
            RETURN n;
        END IF;
        PERFORM mpqr.queue_check(o);
        n := n + 1;
    END LOOP;
    FOR o IN SELECT * FROM mpqr.orders x
              WHERE x.status IN ('cancelled', 'expired')
                AND greatest(x.expires_at, x.closed_at) > now() - mpqr.setting_interval('late_payment_grace')
                AND (x.last_checked_at IS NULL OR x.last_checked_at <= now() - slow_every)
              ORDER BY x.last_checked_at NULLS FIRST, x.id
              LIMIT 100
    LOOP
        IF NOT mpqr.take_token('sweep', rate) THEN
            RETURN n;
        END IF;
        PERFORM mpqr.queue_check(o);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- The catch-up: every mpqr.catchup_interval, each account that has orders
-- searches its payments by date_last_updated, from where the last search
-- ended (less ten minutes, for Mercado Pago's indexing) to now, a page of
-- 100 at a time.  A window is kept under 1,000 results: past that, the
-- search starts again from the last date it saw (API reference 12.13).
-- Every payment found is applied, so that payments, refunds and chargebacks
-- that notifications missed are found, after an outage and routinely.

-- A time as the catch-up writes it: ISO 8601, in UTC.
CREATE FUNCTION mpqr.iso_utc(t timestamptz) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
AS $$
BEGIN
    RETURN to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
END
$$;

-- The path of one page of a window.
CREATE FUNCTION mpqr.catchup_path(window_begin timestamptz, window_end timestamptz, page_offset integer)
RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
AS $$
BEGIN
    RETURN '/v1/payments/search?range=date_last_updated'
           || '&begin_date=' || mpqr.urlencode(mpqr.iso_utc(window_begin))
           || '&end_date=' || mpqr.urlencode(mpqr.iso_utc(window_end))
           || '&sort=date_last_updated&criteria=asc&limit=100&offset=' || page_offset;
END
$$;

-- Start a window of the catch-up of an account, unless one is running.
CREATE FUNCTION mpqr.catchup_start(account text) RETURNS boolean
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    c mpqr.catchups;
    b timestamptz;
    e timestamptz := now();
BEGIN
    INSERT INTO mpqr.catchups (account) VALUES (catchup_start.account) ON CONFLICT DO NOTHING;
    SELECT * INTO c FROM mpqr.catchups x WHERE x.account = catchup_start.account FOR UPDATE;
    -- a window still running, unless it has been silent for an hour
    IF c.window_end IS NOT NULL AND c.started_at > now() - interval '1 hour' THEN
        RETURN false;
    END IF;
    b := coalesce(c.covered_until, now() - mpqr.setting_interval('late_payment_grace')) - interval '10 minutes';
    UPDATE mpqr.catchups x
       SET window_begin = b, window_end = e, started_at = now(), finished_at = NULL,
           pages = 0, found = 0, error = NULL
     WHERE x.account = c.account;
    PERFORM mpqr.enqueue(c.account, 'search_payments', 'GET', mpqr.catchup_path(b, e, 0),
                         subject => 'window:' || mpqr.iso_utc(b) || '/' || mpqr.iso_utc(e));
    RETURN true;
END
$$;

-- One page of a window was answered: the next page, a new window from the
-- last date seen, or the end of the window.
CREATE FUNCTION mpqr.catchup_page(r mpqr.requests, j jsonb, page_offset integer, n integer, total integer)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    c mpqr.catchups;
    last_seen timestamptz;
BEGIN
    SELECT * INTO c FROM mpqr.catchups x WHERE x.account = r.account FOR UPDATE;
    UPDATE mpqr.catchups x SET pages = x.pages + 1, found = x.found + n WHERE x.account = c.account;
    IF n > 0 AND page_offset + n < total THEN
        IF page_offset + n >= 1000 THEN
            SELECT max(mpqr.api_time(e ->> 'date_last_updated')) INTO last_seen
              FROM jsonb_array_elements(j -> 'results') e;
            IF last_seen > c.window_begin THEN
                UPDATE mpqr.catchups x SET window_begin = last_seen WHERE x.account = c.account;
                PERFORM mpqr.enqueue(c.account, 'search_payments', 'GET',
                                     mpqr.catchup_path(last_seen, c.window_end, 0),
                                     subject => 'window:' || mpqr.iso_utc(last_seen) || '/' || mpqr.iso_utc(c.window_end));
                RETURN;
            END IF;
        END IF;
        PERFORM mpqr.queue_next_page(r, page_offset + n);
        RETURN;
    END IF;
    UPDATE mpqr.catchups x
       SET covered_until = greatest(x.covered_until, x.window_end), window_end = NULL, finished_at = now()
     WHERE x.account = c.account AND x.window_end IS NOT NULL;
END
$$;

-- A page of a window failed for good: the next catch-up starts again from
-- where the last one ended.
CREATE FUNCTION mpqr.catchup_failed(account text, error text) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
BEGIN
    UPDATE mpqr.catchups x SET window_end = NULL, error = catchup_failed.error, finished_at = now()
     WHERE x.account = catchup_failed.account;
END
$$;

-- Start the catch-ups that are due; return when the next one is.
CREATE FUNCTION mpqr.catchups_due() RETURNS timestamptz
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    every interval := mpqr.setting_interval('catchup_interval');
    h record := mpqr.here();
    a record;
    next_due timestamptz;
BEGIN
    FOR a IN SELECT x.name, c.covered_until, c.window_end, c.started_at
               FROM mpqr.accounts x
               LEFT JOIN mpqr.catchups c ON c.account = x.name
              WHERE x.paused_at IS NULL AND x.origin_system = h.system AND x.origin_database = h.database
                AND EXISTS (SELECT 1 FROM mpqr.orders o WHERE o.account = x.name)
    LOOP
        IF a.window_end IS NOT NULL AND a.started_at > now() - interval '1 hour' THEN
            CONTINUE;   -- running: its pages wake the sender
        END IF;
        IF a.covered_until IS NULL OR a.covered_until <= now() - every THEN
            PERFORM mpqr.catchup_start(a.name);
            next_due := least(next_due, now() + every);
        ELSE
            next_due := least(next_due, a.covered_until + every);
        END IF;
    END LOOP;
    RETURN next_due;
END
$$;

-- Delete finished requests and old notifications past mpqr.retention, at
-- most once an hour, and at most 10,000 of each at a time, so that a large
-- backlog never holds back the tick's other duties.  Returns when it is
-- next due.
CREATE FUNCTION mpqr.purge_old() RETURNS timestamptz
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    keep interval := mpqr.setting_interval('retention');
    n integer;
    m integer;
BEGIN
    INSERT INTO mpqr.timers AS t (name, last_run) VALUES ('purge', now())
    ON CONFLICT (name) DO UPDATE SET last_run = now() WHERE t.last_run <= now() - interval '1 hour';
    IF NOT FOUND THEN
        RETURN (SELECT t.last_run + interval '1 hour' FROM mpqr.timers t WHERE t.name = 'purge');
    END IF;
    DELETE FROM mpqr.requests q
     WHERE q.id IN (SELECT x.id FROM mpqr.requests x
                     WHERE x.state IN ('done', 'failed', 'cancelled') AND x.finished_at < now() - keep
                     LIMIT 10000);
    GET DIAGNOSTICS n = ROW_COUNT;
    DELETE FROM mpqr.notifications x
     WHERE x.id IN (SELECT y.id FROM mpqr.notifications y
                     WHERE y.received_at < now() - keep
                     LIMIT 10000);
    GET DIAGNOSTICS m = ROW_COUNT;
    IF n = 10000 OR m = 10000 THEN
        -- more to delete: again soon
        UPDATE mpqr.timers t SET last_run = now() - interval '1 hour' + interval '1 second' WHERE t.name = 'purge';
        RETURN now() + interval '1 second';
    END IF;
    RETURN now() + interval '1 hour';
END
$$;

-- mpqr.tick() runs the periodic duties and returns when they are next due;
-- the sender calls it when that time comes, and after it starts.
CREATE FUNCTION mpqr.tick() RETURNS timestamptz
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    next_due timestamptz;
    waiting bigint;
BEGIN
    PERFORM mpqr.pause_copied_accounts();
    IF mpqr.expire_due_orders() THEN
        next_due := now();
    END IF;
    PERFORM mpqr.sweep();
    next_due := least(next_due, mpqr.catchups_due(), mpqr.purge_old());
    -- the next expiry, and the next check of a watched order
    next_due := least(next_due,
                      (SELECT min(x.expires_at) FROM mpqr.orders x
                        WHERE x.status IN ('queued', 'published') AND x.expires_at > now()));
    IF EXISTS (SELECT 1 FROM mpqr.orders x WHERE x.status = 'published') THEN
        next_due := least(next_due, now() + mpqr.setting_interval('fast_check_interval'));
    END IF;
    SELECT count(*) INTO waiting FROM mpqr.watched_orders();
    IF waiting > 0 THEN
        next_due := least(next_due, now() + mpqr.setting_interval('reconcile_interval'));
    END IF;
    -- the budget of unknown fetches follows the orders waiting for news
    PERFORM mpqr.fund_unknown_fetches(0, waiting);
    RETURN next_due;
END
$$;

-- mpqr_reconcile(older_than) queues a status check of every open order at
-- least that old (all of them by default), and of the cancelled, superseded
-- and expired orders still watched for late money, and starts a catch-up of
-- every account.  Returns how many orders.
CREATE FUNCTION mpqr_reconcile(older_than interval DEFAULT '0')
RETURNS integer
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    o mpqr.orders;
    a record;
    n integer := 0;
BEGIN
    PERFORM mpqr.require(older_than, 'older_than');
    IF older_than < interval '0' THEN
        RAISE EXCEPTION 'older_than must not be negative'
            USING ERRCODE = 'invalid_parameter_value', DETAIL = format('The value was %s.', older_than);
    END IF;
    FOR o IN SELECT * FROM mpqr.watched_orders() x
              WHERE x.created_at <= now() - older_than
              ORDER BY x.id
    LOOP
        IF mpqr.queue_check(o) IN ('queued', 'coalesced', 'debounced') THEN
            n := n + 1;
        END IF;
    END LOOP;
    FOR a IN SELECT DISTINCT o2.account FROM mpqr.orders o2 LOOP
        PERFORM mpqr.catchup_start(a.account);
    END LOOP;
    PERFORM mpqr.wake_sender_at_commit();
    RETURN n;
END
$$;
