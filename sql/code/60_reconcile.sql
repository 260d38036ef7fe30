-- Reconciliation: what Mercado Pago's API says about orders and payments,
-- applied through the state machine.
--
-- Notifications are only triggers.  Orders change state only here, from a
-- merchant order, payment, order or chargeback fetched from the API with
-- the account's own token.  Money that Mercado Pago confirmed always wins;
-- stale snapshots never move anything backwards, and a date that cannot be
-- read never weakens that guard.
--
-- When is an order paid?
--   instore     when approved money of this account's collector, for its
--               reference and currency, covers its total (a payment decides
--               on its own: merchant orders are created late and their
--               payments[] can lag, API reference 12.5), or when a merchant
--               order of it is closed with its total (a coupon or an MP
--               discount may then leave a shortfall, flagged).  Payments of
--               a merchant order with another total never count.
--   Orders API  when the order is processed.

CREATE VIEW mpqr.anomalies_open AS
SELECT an.id, an.kind, o.external_reference, coalesce(o.account, an.detail ->> 'account') AS account,
       o.pos_id, o.status, o.total_amount, o.paid_amount, o.refunded_amount, an.detail, an.created_at,
       CASE an.kind
           WHEN 'late_payment' THEN 'The order was cancelled, superseded or expired, and then paid: deliver it, or give the money back with mpqr_refund().'
           WHEN 'double_payment' THEN 'The customer paid more than once: refund the extra payment with mpqr_refund().'
           WHEN 'amount_mismatch' THEN 'A merchant order with another total was paid for this reference: check it with Mercado Pago before delivering.'
           WHEN 'shortfall' THEN 'Paid below the total (a coupon or a Mercado Pago discount): check the settlement.'
           WHEN 'chargeback' THEN 'A payment was charged back after the sale: answer the dispute in Mercado Pago.'
           WHEN 'mediation' THEN 'A payment is in mediation: answer the claim in Mercado Pago.'
           WHEN 'claim' THEN 'A buyer opened a claim: answer it in Mercado Pago.'
       END AS action
  FROM mpqr.anomalies an
  LEFT JOIN mpqr.orders o ON o.id = an.order_id
 WHERE an.resolved_at IS NULL;
COMMENT ON VIEW mpqr.anomalies_open IS 'Anomalies to work through, with the action each needs';

-- Record an anomaly once (per order, kind and key), with an event, a NOTIFY
-- and a WARNING.
CREATE FUNCTION mpqr.flag(order_id bigint, kind text, detail jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    o mpqr.orders;
BEGIN
    IF order_id IS NULL AND EXISTS (SELECT 1 FROM mpqr.anomalies an
                                     WHERE an.order_id IS NULL AND an.kind = flag.kind
                                       AND an.detail ->> 'key' = flag.detail ->> 'key') THEN
        RETURN;
    END IF;
    INSERT INTO mpqr.anomalies (order_id, kind, detail)
    VALUES (order_id, kind, detail)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT * INTO o FROM mpqr.orders x WHERE x.id = flag.order_id;
    IF FOUND THEN
        INSERT INTO mpqr.order_events (order_id, from_status, to_status, reason, detail)
        VALUES (o.id, o.status, o.status, 'anomaly: ' || kind, detail);
        PERFORM pg_notify('mpqr_order', (mpqr.order_payload(o) || jsonb_build_object('anomaly', kind))::text);
        RAISE WARNING 'order "%": %', o.external_reference, replace(kind, '_', ' ');
    ELSE
        RAISE WARNING 'account "%": %', detail ->> 'account', replace(kind, '_', ' ');
    END IF;
END
$$;

-- Does mpqr know this resource?  Fetches of unknown ones share a budget,
-- and a 401 or 403 to one of them does not pause the account.
CREATE FUNCTION mpqr.known_resource(account text, kind text, resource_id text) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN CASE kind
        WHEN 'fetch_merchant_order' THEN resource_id ~ '^[0-9]{1,18}$'
                                   AND EXISTS (SELECT 1 FROM mpqr.merchant_orders m
                                                WHERE m.id = resource_id::bigint
                                                  AND m.account = known_resource.account)
        WHEN 'fetch_payment' THEN EXISTS (SELECT 1 FROM mpqr.payments p
                                           WHERE p.id = resource_id AND p.account = known_resource.account)
        WHEN 'fetch_order' THEN EXISTS (SELECT 1 FROM mpqr.orders o
                                         WHERE o.mp_order_id = resource_id AND o.account = known_resource.account)
                             OR EXISTS (SELECT 1 FROM mpqr.orders o
                                         WHERE o.previous_mp_order_ids @> ARRAY[resource_id]
                                           AND o.previous_mp_order_ids IS NOT NULL
                                           AND o.account = known_resource.account)
        WHEN 'fetch_chargeback' THEN false
        ELSE true END;
END
$$;

-- How far a payment has gone: a snapshot whose date cannot be read may only
-- move a payment forward on this scale.
CREATE FUNCTION mpqr.payment_rank(status text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE status
        WHEN 'pending' THEN 0 WHEN 'in_process' THEN 0 WHEN 'authorized' THEN 1
        WHEN 'rejected' THEN 2 WHEN 'cancelled' THEN 2
        WHEN 'approved' THEN 3 WHEN 'processed' THEN 3 WHEN 'accredited' THEN 3
        WHEN 'in_mediation' THEN 4 WHEN 'charged_back' THEN 5 WHEN 'refunded' THEN 5
        ELSE 0 END
$$;

-- Insert or update a payment, unless the stored one is newer.
CREATE FUNCTION mpqr.upsert_payment(p mpqr.payments) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
BEGIN
    INSERT INTO mpqr.payments AS x (id, account, order_id, external_reference, merchant_order_id,
                                    mp_order_id, reference_id,
                                    status, status_detail, amount, amount_refunded, currency,
                                    operation_type, approved_at, last_modified, body)
    VALUES (p.id, p.account, p.order_id, p.external_reference,
            p.merchant_order_id, p.mp_order_id, p.reference_id,
            p.status, p.status_detail, p.amount, coalesce(p.amount_refunded, 0), p.currency,
            p.operation_type, p.approved_at, p.last_modified, p.body)
    ON CONFLICT (id) DO UPDATE
       SET order_id = coalesce(excluded.order_id, x.order_id),
           external_reference = coalesce(excluded.external_reference, x.external_reference),
           merchant_order_id = coalesce(excluded.merchant_order_id, x.merchant_order_id),
           mp_order_id = coalesce(excluded.mp_order_id, x.mp_order_id),
           reference_id = coalesce(excluded.reference_id, x.reference_id),
           status = excluded.status, status_detail = excluded.status_detail,
           amount = coalesce(excluded.amount, x.amount),
           amount_refunded = greatest(excluded.amount_refunded, x.amount_refunded),
           currency = coalesce(excluded.currency, x.currency),
           operation_type = coalesce(excluded.operation_type, x.operation_type),
           approved_at = coalesce(excluded.approved_at, x.approved_at),
           last_modified = coalesce(excluded.last_modified, x.last_modified),
           body = coalesce(excluded.body, x.body), updated_at = now()
     WHERE (excluded.last_modified IS NOT NULL
            AND (x.last_modified IS NULL OR excluded.last_modified >= x.last_modified))
        OR (excluded.last_modified IS NULL AND x.last_modified IS NULL)
        OR mpqr.payment_rank(excluded.status) > mpqr.payment_rank(x.status);
END
$$;

-- Payment statuses of money that was confirmed at some point.
CREATE FUNCTION mpqr.money_status(status text) RETURNS boolean
LANGUAGE sql IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE
AS $$ SELECT status IN ('approved', 'refunded', 'in_mediation', 'charged_back', 'processed', 'accredited') $$;

-- Recompute an order's money from its stored payments, and flag what is odd.
CREATE FUNCTION mpqr.refresh_money(order_id bigint) RETURNS mpqr.orders
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    o mpqr.orders;
    pay mpqr.payments;
BEGIN
    UPDATE mpqr.orders x
       SET paid_amount = coalesce((SELECT sum(p.amount) FROM mpqr.payments p
                                    WHERE p.order_id = x.id AND mpqr.money_status(p.status)
                                      AND (p.currency IS NULL OR p.currency = x.currency)
                                      -- not the payments of a merchant order with another total
                                      AND NOT EXISTS (SELECT 1 FROM mpqr.merchant_orders m
                                                       WHERE m.id = p.merchant_order_id
                                                         AND m.total_amount <> x.total_amount)), 0),
           refunded_amount = greatest(x.refunded_amount,
                                      coalesce((SELECT sum(p.amount_refunded) FROM mpqr.payments p
                                                 WHERE p.order_id = x.id), 0)),
           last_checked_at = now(), updated_at = now()
     WHERE x.id = refresh_money.order_id
    RETURNING * INTO o;
    FOR pay IN SELECT * FROM mpqr.payments p
                WHERE p.order_id = o.id AND p.status IN ('charged_back', 'in_mediation')
    LOOP
        PERFORM mpqr.flag(o.id, CASE pay.status WHEN 'charged_back' THEN 'chargeback' ELSE 'mediation' END,
                          jsonb_build_object('key', pay.id, 'payment_id', pay.id, 'amount', pay.amount));
    END LOOP;
    IF o.paid_amount > o.total_amount THEN
        PERFORM mpqr.flag(o.id, 'double_payment',
                          jsonb_build_object('key', 'overpaid', 'paid_amount', o.paid_amount,
                                             'total_amount', o.total_amount));
    END IF;
    RETURN o;
END
$$;

-- The order is paid: move it (money wins over cancelled, superseded and
-- expired, which also get a late_payment anomaly), and flag a shortfall.
CREATE FUNCTION mpqr.mark_paid(o mpqr.orders, mp_id text, detail jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    was text := o.status;
    why text := o.status_reason;
BEGIN
    IF mpqr.status_rank(o.status) >= 3 THEN
        RETURN;
    END IF;
    UPDATE mpqr.orders x SET mp_order_id = coalesce(mp_id, x.mp_order_id) WHERE x.id = o.id;
    IF was IN ('cancelled', 'expired', 'failed') THEN
        PERFORM mpqr.set_status(o.id, 'paid', 'late_payment', detail || jsonb_build_object('was', was));
        PERFORM mpqr.flag(o.id, 'late_payment',
                          jsonb_build_object('key', 'late', 'was', was, 'reason', why) || detail);
    ELSE
        PERFORM mpqr.set_status(o.id, 'paid', NULL, detail);
    END IF;
    SELECT * INTO o FROM mpqr.orders x WHERE x.id = o.id;
    IF o.paid_amount < o.total_amount THEN
        PERFORM mpqr.flag(o.id, 'shortfall',
                          jsonb_build_object('key', 'shortfall', 'paid_amount', o.paid_amount,
                                             'total_amount', o.total_amount,
                                             'missing', o.total_amount - o.paid_amount));
    END IF;
END
$$;

-- Decide an instore order from its money: paid when a merchant order of it
-- closed with its total, or when approved money covers the total; refunded
-- when no money is left on it.
CREATE FUNCTION mpqr.decide_instore(order_id bigint, detail jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    o mpqr.orders := mpqr.refresh_money(order_id);
    closed_ids bigint[];
BEGIN
    -- a closed merchant order with another total is not a payment of our order
    PERFORM mpqr.flag(o.id, 'amount_mismatch',
                      jsonb_build_object('key', m.id, 'merchant_order_id', m.id,
                                         'mp_total', m.total_amount, 'total_amount', o.total_amount))
       FROM mpqr.merchant_orders m
      WHERE m.order_id = o.id AND m.status = 'closed' AND m.total_amount <> o.total_amount;
    SELECT array_agg(m.id ORDER BY m.id) INTO closed_ids
      FROM mpqr.merchant_orders m
     WHERE m.order_id = o.id AND m.status = 'closed' AND m.total_amount = o.total_amount;
    IF array_length(closed_ids, 1) > 1 THEN
        PERFORM mpqr.flag(o.id, 'double_payment',
                          jsonb_build_object('key', 'merchant_orders', 'merchant_orders', to_jsonb(closed_ids)));
    END IF;
    IF closed_ids IS NOT NULL OR (o.paid_amount > 0 AND o.paid_amount >= o.total_amount) THEN
        PERFORM mpqr.mark_paid(o, coalesce(closed_ids[1]::text, detail ->> 'merchant_order_id'),
                               coalesce(detail, '{}') || CASE WHEN closed_ids IS NULL THEN '{}'::jsonb
                                   ELSE jsonb_build_object('merchant_order_id', closed_ids[1]) END);
    END IF;
    SELECT * INTO o FROM mpqr.orders x WHERE x.id = o.id;
    IF o.status = 'paid' AND o.paid_amount > 0 AND NOT EXISTS (
           SELECT 1 FROM mpqr.payments p
            WHERE p.order_id = o.id AND p.status IN ('approved', 'in_mediation', 'charged_back')) THEN
        PERFORM mpqr.set_status(o.id, 'refunded', 'refunded',
                                jsonb_build_object('refunded_amount', o.refunded_amount));
    END IF;
END
$$;

-- Apply a merchant order fetched from the API (instore).
CREATE FUNCTION mpqr.apply_merchant_order(account text, mo jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    a mpqr.accounts;
    o mpqr.orders;
    mo_id bigint;
    pay jsonb;
BEGIN
    SELECT * INTO a FROM mpqr.accounts x WHERE x.name = apply_merchant_order.account;
    IF jsonb_typeof(mo) <> 'object' OR (mo ->> 'id') !~ '^[0-9]{1,18}$' THEN
        RETURN;
    END IF;
    -- only merchant orders of this account's collector count
    IF (mo #>> '{collector,id}') IS DISTINCT FROM a.collector_id::text THEN
        RETURN;
    END IF;
    mo_id := (mo ->> 'id')::bigint;
    SELECT * INTO o FROM mpqr.orders x
     WHERE x.account = a.name AND x.external_reference = mo ->> 'external_reference'
       FOR UPDATE;
    INSERT INTO mpqr.merchant_orders AS m (id, account, order_id, external_reference, status, order_status,
                                           total_amount, paid_amount, refunded_amount, last_updated, body)
    VALUES (mo_id, a.name, o.id, mo ->> 'external_reference', mo ->> 'status', mo ->> 'order_status',
            mpqr.api_numeric(mo -> 'total_amount'), mpqr.api_numeric(mo -> 'paid_amount'),
            mpqr.api_numeric(mo -> 'refunded_amount'), mpqr.api_time(mo ->> 'last_updated'), mo)
    ON CONFLICT (id) DO UPDATE
       SET status = excluded.status, order_status = excluded.order_status,
           total_amount = excluded.total_amount, paid_amount = excluded.paid_amount,
           refunded_amount = excluded.refunded_amount,
           last_updated = coalesce(excluded.last_updated, m.last_updated),
           body = excluded.body, fetched_at = now(), order_id = coalesce(excluded.order_id, m.order_id)
     WHERE ((excluded.last_updated IS NOT NULL
             AND (m.last_updated IS NULL OR excluded.last_updated >= m.last_updated))
            OR (excluded.last_updated IS NULL AND m.last_updated IS NULL)
            -- an unreadable date may only close a merchant order
            OR (excluded.status = 'closed' AND m.status IS DISTINCT FROM 'closed'))
       -- a closed merchant order never reopens
       AND NOT (m.status = 'closed' AND excluded.status IS DISTINCT FROM 'closed');
    IF o.id IS NULL THEN
        -- a merchant order of a reference mpqr does not know changes nothing
        RETURN;
    END IF;
    FOR pay IN SELECT value FROM jsonb_array_elements(
                   CASE jsonb_typeof(mo -> 'payments') WHEN 'array' THEN mo -> 'payments' ELSE '[]' END) LOOP
        CONTINUE WHEN (pay ->> 'id') IS NULL;
        PERFORM mpqr.upsert_payment(ROW(
            pay ->> 'id', a.name, o.id, o.external_reference, mo_id, NULL, NULL,
            coalesce(pay ->> 'status', 'unknown'), pay ->> 'status_detail',
            mpqr.api_numeric(pay -> 'transaction_amount'), coalesce(mpqr.api_numeric(pay -> 'amount_refunded'), 0),
            pay ->> 'currency_id', pay ->> 'operation_type', mpqr.api_time(pay ->> 'date_approved'),
            mpqr.api_time(pay ->> 'last_modified'), pay, now())::mpqr.payments);
    END LOOP;
    PERFORM mpqr.decide_instore(o.id, jsonb_build_object('merchant_order_id', mo_id));
END
$$;

-- Apply a payment fetched from the API (GET /v1/payments/{id}, or one
-- result of a search).  instore: it is stored on its order, and decides on
-- its own.  Orders API: the order decides, so its order is fetched.  A
-- payment of another collector, or of a reference mpqr does not know,
-- changes nothing and is not kept.
CREATE FUNCTION mpqr.apply_payment(account text, j jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    a mpqr.accounts;
    o mpqr.orders;
    mo_id bigint;
BEGIN
    SELECT * INTO a FROM mpqr.accounts x WHERE x.name = apply_payment.account;
    IF jsonb_typeof(j) <> 'object' OR (j ->> 'id') IS NULL
       OR (j ->> 'collector_id') IS DISTINCT FROM a.collector_id::text THEN
        RETURN;
    END IF;
    SELECT * INTO o FROM mpqr.orders x
     WHERE x.account = a.name AND x.external_reference = j ->> 'external_reference'
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF a.api = 'orders' THEN
        PERFORM mpqr.queue_check(o);
        RETURN;
    END IF;
    IF (j #>> '{order,id}') ~ '^[0-9]{1,18}$' THEN
        mo_id := (j #>> '{order,id}')::bigint;
    END IF;
    PERFORM mpqr.upsert_payment(ROW(
        j ->> 'id', a.name, o.id, o.external_reference, mo_id, NULL, NULL,
        coalesce(j ->> 'status', 'unknown'), j ->> 'status_detail',
        mpqr.api_numeric(j -> 'transaction_amount'),
        coalesce(mpqr.api_numeric(j -> 'transaction_amount_refunded'), 0),
        j ->> 'currency_id', j ->> 'operation_type', mpqr.api_time(j ->> 'date_approved'),
        mpqr.api_time(j ->> 'date_last_updated'), j, now())::mpqr.payments);
    PERFORM mpqr.decide_instore(o.id, jsonb_build_object('payment_id', j ->> 'id', 'merchant_order_id', mo_id));
END
$$;

-- Apply every result of a payments search; returns how many it held.
CREATE FUNCTION mpqr.apply_payment_search(account text, j jsonb) RETURNS integer
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    e jsonb;
    n integer := 0;
BEGIN
    FOR e IN SELECT value FROM jsonb_array_elements(
                 CASE jsonb_typeof(j -> 'results') WHEN 'array' THEN j -> 'results' ELSE '[]' END)
    LOOP
        PERFORM mpqr.apply_payment(account, e);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- Apply a chargeback fetched from the API: its payments are fetched again,
-- and a charged-back payment is an open anomaly of its order.
CREATE FUNCTION mpqr.apply_chargeback(account text, j jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    pid text;
BEGIN
    IF jsonb_typeof(j) <> 'object' THEN
        RETURN;
    END IF;
    FOR pid IN SELECT coalesce(e ->> 'id', e #>> '{}')
                 FROM jsonb_array_elements(CASE jsonb_typeof(j -> 'payments') WHEN 'array' THEN j -> 'payments'
                                                ELSE '[]' END) e
    LOOP
        PERFORM mpqr.queue_fetch(account, 'payment', pid, trusted => true);
    END LOOP;
END
$$;

-- Record the payments of an Orders API order document on our order.
CREATE FUNCTION mpqr.upsert_order_payments(o mpqr.orders, j jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    pay jsonb;
BEGIN
    FOR pay IN SELECT value FROM jsonb_array_elements(
                   CASE jsonb_typeof(j #> '{transactions,payments}') WHEN 'array' THEN j #> '{transactions,payments}'
                        ELSE '[]' END) LOOP
        CONTINUE WHEN (pay ->> 'id') IS NULL;
        PERFORM mpqr.upsert_payment(ROW(
            pay ->> 'id', o.account, o.id, o.external_reference, NULL, j ->> 'id', pay #>> '{reference,id}',
            coalesce(pay ->> 'status', 'unknown'), pay ->> 'status_detail',
            coalesce(mpqr.api_numeric(pay -> 'paid_amount'), mpqr.api_numeric(pay -> 'amount')), 0,
            o.currency, NULL,
            CASE WHEN pay ->> 'status' IN ('processed', 'refunded')
                 THEN mpqr.api_time(j ->> 'last_updated_date') END,
            mpqr.api_time(j ->> 'last_updated_date'), pay, now())::mpqr.payments);
    END LOOP;
END
$$;

-- Apply an order fetched from the Orders API.
CREATE FUNCTION mpqr.apply_order(account text, j jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    a mpqr.accounts;
    o mpqr.orders;
    refunded numeric;
BEGIN
    SELECT * INTO a FROM mpqr.accounts x WHERE x.name = apply_order.account;
    IF jsonb_typeof(j) <> 'object' OR NOT j ? 'id' THEN
        RETURN;
    END IF;
    IF j ? 'user_id' AND (j ->> 'user_id') IS DISTINCT FROM a.collector_id::text THEN
        RETURN;
    END IF;
    SELECT * INTO o FROM mpqr.orders x
     WHERE x.account = a.name AND x.mp_order_id = j ->> 'id'
       FOR UPDATE;
    IF NOT FOUND THEN
        -- our order whose publish answer was lost: the order document says
        -- which reference it is
        SELECT * INTO o FROM mpqr.orders x
         WHERE x.account = a.name AND x.mp_order_id IS NULL
           AND x.external_reference = j ->> 'external_reference'
           FOR UPDATE;
        IF FOUND THEN
            UPDATE mpqr.orders x SET mp_order_id = j ->> 'id',
                                     qr_data = coalesce(j #>> '{type_response,qr_data}', x.qr_data)
             WHERE x.id = o.id
            RETURNING * INTO o;
        END IF;
    END IF;
    IF NOT FOUND THEN
        -- an earlier attempt's order: only its money counts (a payment that
        -- arrived late on it), never its expiry or cancellation
        SELECT * INTO o FROM mpqr.orders x
         WHERE x.account = a.name AND x.previous_mp_order_ids IS NOT NULL
           AND x.previous_mp_order_ids @> ARRAY[j ->> 'id']
           FOR UPDATE;
        IF NOT FOUND OR coalesce(j ->> 'status', '') NOT IN ('processed', 'refunded') THEN
            RETURN;
        END IF;
        PERFORM mpqr.upsert_order_payments(o, j);
        o := mpqr.refresh_money(o.id);
        IF mpqr.status_rank(o.status) < 3 THEN
            -- money on an earlier attempt: the current one must not be paid too
            IF o.status = 'published' THEN
                PERFORM mpqr.queue_cancel(o, 'supersede');
            END IF;
            PERFORM mpqr.set_status(o.id, 'paid', 'late_payment',
                                    jsonb_build_object('earlier_attempt', j ->> 'id'));
            PERFORM mpqr.flag(o.id, 'late_payment',
                              jsonb_build_object('key', j ->> 'id', 'earlier_attempt', j ->> 'id',
                                                 'was', o.status));
        END IF;
        RETURN;
    END IF;
    PERFORM mpqr.upsert_order_payments(o, j);
    SELECT sum(mpqr.api_numeric(rf -> 'amount')) INTO refunded
      FROM jsonb_array_elements(CASE jsonb_typeof(j #> '{transactions,refunds}') WHEN 'array'
                                     THEN j #> '{transactions,refunds}' ELSE '[]' END) rf
     WHERE rf ->> 'status' = 'processed';
    UPDATE mpqr.orders x
       SET refunded_amount = greatest(x.refunded_amount, coalesce(refunded, 0))
     WHERE x.id = o.id;
    UPDATE mpqr.refunds f SET status = 'processed', updated_at = now()
     WHERE f.order_id = o.id AND f.status = 'processing'
       AND (f.mp_refund_id IS NULL OR EXISTS (
                SELECT 1 FROM jsonb_array_elements(CASE jsonb_typeof(j #> '{transactions,refunds}') WHEN 'array'
                                                        THEN j #> '{transactions,refunds}' ELSE '[]' END) rf
                 WHERE rf ->> 'id' = f.mp_refund_id AND rf ->> 'status' = 'processed'));
    o := mpqr.refresh_money(o.id);
    IF mpqr.api_numeric(j -> 'total_paid_amount') IS NOT NULL THEN
        UPDATE mpqr.orders x SET paid_amount = mpqr.api_numeric(j -> 'total_paid_amount')
         WHERE x.id = o.id
        RETURNING * INTO o;
    END IF;
    CASE j ->> 'status'
        WHEN 'processed' THEN
            PERFORM mpqr.mark_paid(o, j ->> 'id', jsonb_build_object('status_detail', j ->> 'status_detail'));
        WHEN 'refunded' THEN
            PERFORM mpqr.mark_paid(o, j ->> 'id', jsonb_build_object('status_detail', j ->> 'status_detail'));
            UPDATE mpqr.orders x SET refunded_amount = greatest(x.refunded_amount, x.paid_amount)
             WHERE x.id = o.id;
            UPDATE mpqr.refunds f SET status = 'processed', updated_at = now()
             WHERE f.order_id = o.id AND f.status = 'processing';
            PERFORM mpqr.set_status(o.id, 'refunded', 'refunded');
        WHEN 'expired' THEN
            PERFORM mpqr.set_status(o.id, 'expired', 'expired');
        WHEN 'canceled' THEN
            PERFORM mpqr.set_status(o.id, 'cancelled', coalesce(o.status_reason, 'cancelled'));
        ELSE
            NULL;
    END CASE;
END
$$;
