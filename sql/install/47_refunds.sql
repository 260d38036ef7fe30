-- Refunds: mpqr_refund() and what Mercado Pago answers.

CREATE TABLE mpqr.refunds (
    id              bigserial PRIMARY KEY,
    order_id        bigint NOT NULL REFERENCES mpqr.orders (id) ON DELETE CASCADE,
    payment_id      text,
    amount          numeric NOT NULL,
    status          text NOT NULL DEFAULT 'queued',
    mp_refund_id    text,
    idempotency_key text NOT NULL,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT refunds_status_check CHECK (status IN ('queued', 'processing', 'approved', 'processed',
                                                      'rejected', 'failed'))
);
CREATE INDEX refunds_order ON mpqr.refunds (order_id);
COMMENT ON TABLE mpqr.refunds IS 'Refunds asked with mpqr_refund(), each with its own idempotency key and state';

-- mpqr_refund(external_reference, amount, account)
-- Give money back: amount NULL refunds everything that remains.  instore
-- refunds the approved payments, spread over them; the Orders API refunds
-- the order.  The order becomes refunded once Mercado Pago confirms it all.
CREATE FUNCTION mpqr_refund(external_reference text, amount numeric DEFAULT NULL,
                            account text DEFAULT NULL)
RETURNS numeric
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    o mpqr.orders;
    a mpqr.accounts;
    pending numeric;
    remaining numeric;
    left_to_spread numeric;
    part numeric;
    pay record;
    f mpqr.refunds;
BEGIN
    o := mpqr.find_order(external_reference, account);
    SELECT * INTO a FROM mpqr.accounts x WHERE x.name = o.account;
    IF o.status NOT IN ('paid', 'refunded') OR o.paid_amount <= 0 THEN
        RAISE EXCEPTION 'order "%" is not paid', external_reference
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('Its status is %s.', o.status);
    END IF;
    SELECT coalesce(sum(f2.amount), 0) INTO pending FROM mpqr.refunds f2
     WHERE f2.order_id = o.id AND f2.status IN ('queued', 'processing', 'failed');
    remaining := o.paid_amount - o.refunded_amount - pending;
    IF amount IS NULL THEN
        amount := remaining;
    ELSE
        PERFORM mpqr.check_amount(amount, o.currency, 'amount');
    END IF;
    IF remaining <= 0 OR amount > remaining THEN
        RAISE EXCEPTION 'cannot refund % of order "%"', amount, external_reference
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('Paid %s, refunded %s, pending refunds %s: %s remains.',
                                  o.paid_amount, o.refunded_amount, pending, greatest(remaining, 0));
    END IF;

    IF a.api = 'orders' THEN
        INSERT INTO mpqr.refunds (order_id, amount, idempotency_key)
        VALUES (o.id, amount, gen_random_uuid()::text)
        RETURNING * INTO f;
        PERFORM mpqr.enqueue(o.account, 'refund', 'POST',
                             '/v1/orders/' || mpqr.urlencode(o.mp_order_id) || '/refund',
                             CASE WHEN amount = remaining AND pending = 0 AND o.refunded_amount = 0 THEN NULL
                                  ELSE jsonb_build_object('transactions', (
                                           SELECT jsonb_agg(jsonb_build_object('id', p.id,
                                                      'amount', mpqr.amount_text(amount, o.currency)))
                                             FROM (SELECT p.id FROM mpqr.payments p
                                                    WHERE p.order_id = o.id AND mpqr.money_status(p.status)
                                                    ORDER BY p.id LIMIT 1) p))::text END,
                             subject => o.mp_order_id, order_id => o.id,
                             idempotency_key => f.idempotency_key, refund_id => f.id);
        RETURN amount;
    END IF;

    -- instore: spread over the approved payments, oldest first
    left_to_spread := amount;
    FOR pay IN SELECT p.id, p.amount - p.amount_refunded
                      - coalesce((SELECT sum(f3.amount) FROM mpqr.refunds f3
                                   WHERE f3.payment_id = p.id AND f3.status IN ('queued', 'processing', 'failed')), 0) AS refundable
                 FROM mpqr.payments p
                WHERE p.order_id = o.id AND p.status = 'approved'
                ORDER BY p.approved_at NULLS LAST, p.id
    LOOP
        EXIT WHEN left_to_spread <= 0;
        CONTINUE WHEN pay.refundable <= 0;
        part := least(pay.refundable, left_to_spread);
        INSERT INTO mpqr.refunds (order_id, payment_id, amount, idempotency_key)
        VALUES (o.id, pay.id, part, gen_random_uuid()::text)
        RETURNING * INTO f;
        PERFORM mpqr.enqueue(o.account, 'refund', 'POST',
                             '/v1/payments/' || mpqr.urlencode(pay.id) || '/refunds',
                             CASE WHEN part = pay.refundable THEN '{}'
                                  ELSE jsonb_build_object('amount', part)::text END,
                             subject => pay.id, order_id => o.id,
                             idempotency_key => f.idempotency_key, refund_id => f.id);
        left_to_spread := left_to_spread - part;
    END LOOP;
    IF left_to_spread > 0 THEN
        RAISE EXCEPTION 'cannot refund % of order "%"', amount, external_reference
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('The approved payments cover only %s of it.', amount - left_to_spread);
    END IF;
    RETURN amount;
END
$$;

-- A refund was accepted.  instore: the payment refund is approved (201);
-- the Orders API answers processing, and the order becomes refunded when a
-- later GET shows it.  Either way the state is confirmed by re-fetching.
CREATE FUNCTION mpqr.refund_done(r mpqr.requests, j jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    f mpqr.refunds;
    o mpqr.orders;
BEGIN
    SELECT * INTO o FROM mpqr.orders x WHERE x.id = r.order_id;
    IF r.path LIKE '/v1/payments/%' THEN
        UPDATE mpqr.refunds x
           SET status = coalesce(nullif(j ->> 'status', ''), 'approved'), mp_refund_id = j ->> 'id',
               updated_at = now()
         WHERE x.id = r.refund_id
        RETURNING * INTO f;
        IF f.status = 'approved' THEN
            UPDATE mpqr.payments p
               SET amount_refunded = p.amount_refunded + coalesce(mpqr.api_numeric(j -> 'amount'), f.amount)
             WHERE p.id = f.payment_id;
            UPDATE mpqr.orders x
               SET refunded_amount = (SELECT coalesce(sum(p.amount_refunded), 0) FROM mpqr.payments p
                                       WHERE p.order_id = x.id), updated_at = now()
             WHERE x.id = o.id;
        END IF;
        IF o.mp_order_id ~ '^[0-9]{1,18}$' THEN
            PERFORM mpqr.queue_fetch(o.account, 'merchant_order', o.mp_order_id, trusted => true);
        ELSE
            PERFORM mpqr.queue_fetch(o.account, 'search', o.external_reference, trusted => true);
        END IF;
    ELSE
        UPDATE mpqr.refunds x
           SET status = 'processing',
               mp_refund_id = (SELECT rf ->> 'id' FROM jsonb_array_elements(coalesce(j #> '{transactions,refunds}', '[]')) rf
                                ORDER BY rf ->> 'id' DESC LIMIT 1),
               updated_at = now()
         WHERE x.id = r.refund_id;
        PERFORM mpqr.queue_fetch(o.account, 'order', o.mp_order_id, trusted => true);
    END IF;
END
$$;

-- A refund was refused: keep MP's answer on the refund; the order keeps its
-- status.  A refund whose retries gave up is 'failed': its outcome is
-- unknown, so its amount stays reserved (mpqr_refund() counts it as
-- pending) until someone checks it at Mercado Pago.
CREATE FUNCTION mpqr.refund_failed(r mpqr.requests, http_status integer, body text) RETURNS void
LANGUAGE sql VOLATILE PARALLEL UNSAFE
AS $$
    UPDATE mpqr.refunds x
       SET status = CASE WHEN mpqr.retryable(http_status) THEN 'failed' ELSE 'rejected' END,
           error = format('Mercado Pago answered %s: %s', http_status, left(coalesce(body, ''), 1000)),
           updated_at = now()
     WHERE x.id = r.refund_id
$$;
