-- Kind refund: giving money back, and watching it until Mercado Pago says it
-- is done.
--
-- instore refunds the approved payments (POST /v1/payments/{id}/refunds),
-- the Orders API the order (POST /v1/orders/{id}/refund), each with its own
-- idempotency key, and always with X-Render-In-Process-Refunds: true, so
-- that a refund still being paid out (Pix) is answered in_process instead
-- of a 400.  A refund in process (in_process, or the Orders API's
-- processing) keeps its amount reserved and is checked again (check_refund)
-- on a backoff until it is done or refused.  An answer that is lost is
-- simply sent again: the idempotency key makes it the same refund.

-- mpqr_refund(external_reference, amount, account)
-- Give money back: amount NULL refunds everything that remains.  The order
-- becomes refunded once Mercado Pago confirms it all.  Returns the amount
-- asked.
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
     WHERE f2.order_id = o.id AND mpqr.refund_pending(f2.status);
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
                                   WHERE f3.payment_id = p.id AND mpqr.refund_pending(f3.status)), 0) AS refundable
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

-- Does a refund in this state still hold its amount?  Queued, in process,
-- or failed (a refund of 0.1.0 whose retries gave up: its outcome is
-- unknown).
CREATE FUNCTION mpqr.refund_pending(status text) RETURNS boolean
LANGUAGE sql IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE
AS $$ SELECT status IN ('queued', 'processing', 'in_process', 'failed') $$;

-- What a refund sends now (see mpqr.request_target).
CREATE FUNCTION mpqr.refund_target(r mpqr.requests, a mpqr.accounts, o mpqr.orders,
                                   OUT method text, OUT path text, OUT body text, OUT headers text[])
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
DECLARE
    f mpqr.refunds;
BEGIN
    IF r.phase = 'check_refund' THEN
        SELECT * INTO f FROM mpqr.refunds x WHERE x.id = r.refund_id;
        method := 'GET';
        IF f.payment_id IS NULL THEN
            path := '/v1/orders/' || mpqr.urlencode(o.mp_order_id);
        ELSE
            path := '/v1/payments/' || mpqr.urlencode(f.payment_id) || '/refunds'
                    || coalesce('/' || mpqr.urlencode(f.mp_refund_id), '');
        END IF;
        RETURN;
    END IF;
    method := r.method;
    path := r.path;
    body := r.body;
    headers := ARRAY['X-Render-In-Process-Refunds: true'];
END
$$;

-- The refund in an answer: a Payments API refund (or the list of them), or
-- an Orders API order with its transactions.refunds.  Returns its id and
-- Mercado Pago's status word for it.
CREATE FUNCTION mpqr.refund_in(f mpqr.refunds, j jsonb, OUT mp_refund_id text, OUT mp_status text)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    rf jsonb;
BEGIN
    IF jsonb_typeof(j -> 'transactions') = 'object' THEN
        SELECT e INTO rf FROM jsonb_array_elements(coalesce(j #> '{transactions,refunds}', '[]')) e
         ORDER BY (e ->> 'id' = f.mp_refund_id) DESC NULLS LAST, e ->> 'id' DESC
         LIMIT 1;
    ELSIF jsonb_typeof(j) = 'array' THEN
        SELECT e INTO rf FROM jsonb_array_elements(j) e
         WHERE f.mp_refund_id IS NULL OR e ->> 'id' = f.mp_refund_id
         ORDER BY e ->> 'id' DESC
         LIMIT 1;
    ELSE
        rf := j;
    END IF;
    mp_refund_id := coalesce(rf ->> 'id', f.mp_refund_id);
    mp_status := rf ->> 'status';
END
$$;

-- What an answer means for a refund (see mpqr.kind_answer).
CREATE FUNCTION mpqr.refund_answer(r mpqr.requests, class text, http_status integer, body text, error text)
RETURNS mpqr.request_transition
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    j jsonb := mpqr.try_jsonb(body);
    f mpqr.refunds;
    o mpqr.orders;
    found record;
    state text;
BEGIN
    SELECT * INTO f FROM mpqr.refunds x WHERE x.id = r.refund_id FOR UPDATE;
    SELECT * INTO o FROM mpqr.orders x WHERE x.id = r.order_id;
    IF class = 'final' AND r.phase IS NULL THEN
        -- refused: Mercado Pago's answer stays on the refund, and its amount
        -- is free again; the order keeps its status
        UPDATE mpqr.refunds x
           SET status = 'rejected',
               error = format('Mercado Pago answered %s: %s', http_status, left(coalesce(body, ''), 1000)),
               updated_at = now()
         WHERE x.id = f.id;
        RETURN NULL;
    ELSIF class NOT IN ('success', 'phase') THEN
        RETURN NULL;
    END IF;
    IF f.payment_id IS NULL AND jsonb_typeof(j) = 'object' AND j ? 'status' AND r.phase = 'check_refund' THEN
        -- the order itself: apply all it says (its refunds, refunded)
        PERFORM mpqr.apply_order(r.account, j);
    END IF;
    found := mpqr.refund_in(f, j);
    state := CASE
        WHEN found.mp_status IN ('approved', 'processed') THEN found.mp_status
        WHEN found.mp_status IN ('rejected', 'cancelled', 'canceled', 'failed') THEN 'rejected'
        WHEN f.payment_id IS NULL THEN 'processing'
        ELSE 'in_process' END;
    IF state = 'processing' AND (SELECT x.status FROM mpqr.refunds x WHERE x.id = f.id) = 'processed' THEN
        state := 'processed';   -- apply_order saw it done
    END IF;
    UPDATE mpqr.refunds x
       SET status = state, mp_refund_id = found.mp_refund_id, updated_at = now(),
           error = CASE WHEN state = 'rejected' THEN format('Mercado Pago says %s', found.mp_status) END
     WHERE x.id = f.id;
    IF state = 'approved' AND f.status IS DISTINCT FROM 'approved' THEN
        UPDATE mpqr.payments p
           SET amount_refunded = least(p.amount, p.amount_refunded + f.amount)
         WHERE p.id = f.payment_id;
    END IF;
    IF state IN ('approved', 'processed', 'rejected') THEN
        -- what the payment or the order says now decides
        IF f.payment_id IS NOT NULL THEN
            PERFORM mpqr.queue_fetch(r.account, 'payment', f.payment_id, trusted => true);
        ELSE
            PERFORM mpqr.queue_fetch(r.account, 'order', o.mp_order_id, trusted => true);
        END IF;
        PERFORM mpqr.refresh_money(o.id);
        RETURN mpqr.transition(r, 'done', r.phase, NULL, http_status, body, NULL);
    END IF;
    -- still in process: the amount stays reserved; look again later
    RETURN mpqr.transition(r, 'queued', 'check_refund', mpqr.retry_delay(r.attempts, NULL),
                           http_status, body, format('the refund is %s at Mercado Pago', coalesce(found.mp_status, state)));
END
$$;
