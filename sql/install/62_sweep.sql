-- The backstop for lost notifications: the sweep, expiry, mpqr_reconcile(),
-- and the receipt of a paid order.

-- Queue a status check of an order: instore searches the merchant orders of
-- its reference, the Orders API fetches the order.  Returns what it did.
CREATE FUNCTION mpqr.queue_check(o mpqr.orders) RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    api text;
    what text;
BEGIN
    SELECT a.api INTO api FROM mpqr.accounts a WHERE a.name = o.account;
    IF api = 'orders' THEN
        -- earlier attempts' orders are still watched for late money
        PERFORM mpqr.queue_fetch(o.account, 'order', prev, trusted => true)
           FROM unnest(o.previous_mp_order_ids) prev;
        IF o.mp_order_id IS NULL THEN
            RETURN 'ignored';
        END IF;
        what := mpqr.queue_fetch(o.account, 'order', o.mp_order_id, trusted => true);
    ELSE
        what := mpqr.queue_fetch(o.account, 'search', o.external_reference, trusted => true);
    END IF;
    UPDATE mpqr.orders x SET last_checked_at = now() WHERE x.id = o.id;
    RETURN what;
END
$$;

-- The orders still watched for money: open ones (index orders_open), and
-- cancelled, superseded or expired ones until their expiry, or their close
-- if later, plus mpqr.late_payment_grace (index orders_watched).  The one
-- place this rule lives: the sweep and mpqr_reconcile() both read it.
CREATE FUNCTION mpqr.watched_orders() RETURNS SETOF mpqr.orders
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT * FROM mpqr.orders x
     WHERE x.status = 'published'
    UNION ALL
    SELECT * FROM mpqr.orders x
     WHERE x.status IN ('cancelled', 'expired')
       AND greatest(x.expires_at, x.closed_at) > now() - mpqr.setting_interval('late_payment_grace', '1h')
$$;

-- Expire what reached its expiry.  A queued order that was never sent
-- expires here, without a call.  Any other (published, or queued but maybe
-- sent: its answer was lost, or its retries gave up) gets a final check and
-- is removed from its POS; it becomes expired once that is done, unless
-- money arrived.
CREATE FUNCTION mpqr.expire_due_orders() RETURNS integer
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    o mpqr.orders;
    n integer := 0;
BEGIN
    FOR o IN SELECT * FROM mpqr.orders x
              WHERE x.status IN ('queued', 'published') AND x.expires_at <= now()
                AND NOT EXISTS (SELECT 1 FROM mpqr.requests q
                                 WHERE q.order_id = x.id AND q.kind = 'cancel'
                                   AND q.purpose = 'expire' AND q.created_at >= x.attempt_at)
              ORDER BY x.expires_at
              LIMIT 1000
                FOR UPDATE SKIP LOCKED
    LOOP
        IF o.status = 'queued'
           AND mpqr.withdraw_publish(o, 'the order expired before it was sent') = 'withdrawn' THEN
            PERFORM mpqr.set_status(o.id, 'expired', 'expired before it was sent');
            n := n + 1;
            CONTINUE;
        END IF;
        PERFORM mpqr.queue_check(o);
        PERFORM mpqr.queue_cancel(o, 'expire');
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- Check the orders whose news is late, under one global rate limit:
-- published orders past mpqr.fast_check_after are checked every
-- mpqr.fast_check_interval until their expiry; watched cancelled and
-- expired orders every mpqr.reconcile_interval; at most mpqr.sweep_rate
-- checks per second.
CREATE FUNCTION mpqr.sweep() RETURNS integer
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    fast_after interval := mpqr.setting_interval('fast_check_after', '30s');
    fast_every interval := mpqr.setting_interval('fast_check_interval', '5s');
    slow_every interval := mpqr.setting_interval('reconcile_interval', '60s');
    o mpqr.orders;
    n integer := 0;
BEGIN
    FOR o IN SELECT * FROM mpqr.watched_orders() x
              WHERE (x.status <> 'published'
                     OR coalesce(x.published_at, x.created_at) <= now() - fast_after)
                AND (x.last_checked_at IS NULL OR x.last_checked_at <= now() -
                     CASE WHEN x.status = 'published' AND now() < x.expires_at THEN fast_every ELSE slow_every END)
              ORDER BY x.last_checked_at NULLS FIRST, x.id
              LIMIT 100
    LOOP
        EXIT WHEN NOT mpqr.take_token('sweep', mpqr.setting('sweep_rate', '20')::double precision);
        PERFORM mpqr.queue_check(o);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- Delete finished requests and old notifications past mpqr.retention, at
-- most once every ten minutes, and at most 10,000 of each at a time, so that
-- a large backlog never holds back the tick's other duties.
CREATE FUNCTION mpqr.purge_old() RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    keep interval := mpqr.setting_interval('retention', '90d');
BEGIN
    UPDATE mpqr.timers t SET last_run = now()
     WHERE t.name = 'purge' AND t.last_run < now() - interval '10 minutes';
    IF NOT FOUND THEN
        RETURN;
    END IF;
    DELETE FROM mpqr.requests q
     WHERE q.id IN (SELECT x.id FROM mpqr.requests x
                     WHERE x.state IN ('done', 'failed', 'cancelled') AND x.finished_at < now() - keep
                     LIMIT 10000);
    DELETE FROM mpqr.notifications n
     WHERE n.id IN (SELECT x.id FROM mpqr.notifications x
                     WHERE x.received_at < now() - keep
                     LIMIT 10000);
END
$$;

-- mpqr_reconcile(older_than) queues a status check of every open order at
-- least that old (all of them by default), and of the cancelled, superseded
-- and expired orders still watched for late money.  Returns how many.
CREATE FUNCTION mpqr_reconcile(older_than interval DEFAULT '0')
RETURNS integer
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    o mpqr.orders;
    n integer := 0;
BEGIN
    PERFORM mpqr.require(older_than, 'older_than');
    FOR o IN SELECT * FROM mpqr.watched_orders() x
              WHERE x.created_at <= now() - older_than
              ORDER BY x.id
    LOOP
        IF mpqr.queue_check(o) IN ('queued', 'coalesced') THEN
            n := n + 1;
        END IF;
    END LOOP;
    RETURN n;
END
$$;

-- mpqr_receipt(external_reference, account) returns a plain-text receipt of
-- a paid order: merchant, POS, items, total, payments, and refunds if any.
CREATE FUNCTION mpqr_receipt(external_reference text, account text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    o mpqr.orders;
    a mpqr.accounts;
    p mpqr.pos;
    s mpqr.stores;
    lines text[] := '{}';
    it jsonb;
    pay mpqr.payments;
    f mpqr.refunds;
    w integer := 44;
BEGIN
    PERFORM mpqr.require(external_reference, 'external_reference');
    SELECT * INTO o FROM mpqr.orders x
     WHERE x.external_reference = mpqr_receipt.external_reference
       AND (mpqr_receipt.account IS NULL OR x.account = mpqr_receipt.account);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'order "%" does not exist', external_reference USING ERRCODE = 'undefined_object';
    END IF;
    IF (SELECT count(*) FROM mpqr.orders x
         WHERE x.external_reference = mpqr_receipt.external_reference
           AND (mpqr_receipt.account IS NULL OR x.account = mpqr_receipt.account)) > 1 THEN
        RAISE EXCEPTION 'order "%" exists in more than one account', external_reference
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Name the account with account => ''...''.';
    END IF;
    IF o.status NOT IN ('paid', 'refunded') THEN
        RAISE EXCEPTION 'order "%" was never paid', external_reference
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('Its status is %s.', o.status);
    END IF;
    SELECT * INTO a FROM mpqr.accounts x WHERE x.name = o.account;
    SELECT * INTO p FROM mpqr.pos x WHERE x.external_id = o.pos_id;
    SELECT * INTO s FROM mpqr.stores x WHERE x.account = o.account AND x.external_id = p.store_external_id;

    lines := lines || repeat('=', w)
                   || lpad('RECEIPT', (w + 7) / 2)
                   || repeat('=', w)
                   || format('Merchant:  %s (collector %s)', a.name, a.collector_id)
                   || format('Store:     %s', coalesce(s.name || ' (' || p.store_external_id || ')', p.store_external_id))
                   || format('POS:       %s (%s)', p.external_id, p.name)
                   || format('Reference: %s', o.external_reference)
                   || format('Paid at:   %s', to_char(o.paid_at, 'YYYY-MM-DD HH24:MI:SS TZ'))
                   || repeat('-', w);
    FOR it IN SELECT value FROM jsonb_array_elements(o.items) LOOP
        lines := lines || (rpad(format('%s x %s', it ->> 'quantity', it ->> 'title'), w - 12)
                           || lpad(to_char((it ->> 'unit_price')::numeric * (it ->> 'quantity')::numeric, 'FM999999990.00'), 12));
    END LOOP;
    lines := lines || repeat('-', w)
                   || (rpad('TOTAL ' || o.currency, w - 12) || lpad(to_char(o.total_amount, 'FM999999990.00'), 12))
                   || (rpad('PAID', w - 12) || lpad(to_char(o.paid_amount, 'FM999999990.00'), 12));
    IF o.refunded_amount > 0 THEN
        lines := lines || (rpad('REFUNDED', w - 12) || lpad(to_char(o.refunded_amount, 'FM999999990.00'), 12));
    END IF;
    lines := lines || repeat('-', w) || 'Payments:'::text;
    FOR pay IN SELECT * FROM mpqr.payments x WHERE x.order_id = o.id ORDER BY x.approved_at NULLS LAST, x.id LOOP
        lines := lines || format('  %s  %s  %s  %s', pay.id, pay.status,
                                 to_char(pay.amount, 'FM999999990.00'),
                                 coalesce(to_char(pay.approved_at, 'YYYY-MM-DD HH24:MI:SS TZ'), ''));
    END LOOP;
    IF o.mp_order_id IS NOT NULL THEN
        lines := lines || format('Mercado Pago order: %s', o.mp_order_id);
    END IF;
    IF EXISTS (SELECT 1 FROM mpqr.refunds x WHERE x.order_id = o.id) THEN
        lines := lines || 'Refunds:'::text;
        FOR f IN SELECT * FROM mpqr.refunds x WHERE x.order_id = o.id ORDER BY x.id LOOP
            lines := lines || format('  %s  %s  %s  %s', coalesce(f.mp_refund_id, '(pending)'),
                                     coalesce(f.payment_id, o.mp_order_id), to_char(f.amount, 'FM999999990.00'),
                                     f.status);
        END LOOP;
    END IF;
    lines := lines || repeat('=', w)
                   || format('Status: %s', upper(o.status))
                   || repeat('=', w);
    RETURN array_to_string(lines, E'\n');
END
$$;
