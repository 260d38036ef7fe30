-- Dispatch of the sender's outcomes to the part that owns each kind.

-- A request was answered 2xx.
CREATE FUNCTION mpqr.on_success(r mpqr.requests, http_status integer, body text) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    j jsonb := mpqr.try_jsonb(body);
BEGIN
    CASE r.kind
        WHEN 'publish' THEN PERFORM mpqr.publish_done(r, body);
        WHEN 'cancel' THEN PERFORM mpqr.cancel_done(r, j);
        WHEN 'refund' THEN PERFORM mpqr.refund_done(r, j);
        WHEN 'create_store', 'create_pos' THEN PERFORM mpqr.create_done(r, j);
        ELSE PERFORM mpqr.fetch_done(r, j);
    END CASE;
END
$$;

-- A request failed for good: a final 4xx, or retries given up.
CREATE FUNCTION mpqr.on_failure(r mpqr.requests, http_status integer, body text, error text)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
BEGIN
    CASE r.kind
        WHEN 'publish' THEN PERFORM mpqr.publish_failed(r, http_status, body, error);
        WHEN 'cancel' THEN PERFORM mpqr.cancel_failed(r, http_status, body);
        WHEN 'refund' THEN PERFORM mpqr.refund_failed(r, http_status, body);
        WHEN 'create_store', 'create_pos' THEN PERFORM mpqr.create_failed(r, http_status, body);
        ELSE NULL;  -- a fetch: the answer is stored and changes nothing
    END CASE;
END
$$;

-- A check or follow-up step was answered (2xx or 404).
--   publish: check_pos -> done if the POS shows it, else check_paid (or
--            check_paid_keep if it shows another order) -> done if paid,
--            failed if another order is shown, else the PUT again.
--   cancel:  check_pos -> the DELETE if the POS shows it, else check_paid ->
--            done (paid meanwhile), or cancelled or expired.
CREATE FUNCTION mpqr.on_phase_answer(r mpqr.requests, http_status integer, body text) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    j jsonb := CASE WHEN http_status = 404 THEN NULL ELSE mpqr.try_jsonb(body) END;
    o mpqr.orders;
    shown text;
    c record;
    hit jsonb;
BEGIN
    SELECT * INTO o FROM mpqr.orders x WHERE x.id = r.order_id;
    CASE r.phase
    WHEN 'check_pos' THEN
        shown := CASE jsonb_typeof(j)
                     WHEN 'array' THEN j -> 0 ->> 'external_reference'
                     WHEN 'object' THEN j ->> 'external_reference' END;
        IF r.kind = 'publish' THEN
            IF shown = o.external_reference THEN
                -- the PUT landed before the sender lost track of it
                PERFORM mpqr.finish_request(r, 'done', http_status, body, 'found on the POS after a lost answer');
                PERFORM mpqr.publish_done(r, NULL);
            ELSE
                PERFORM mpqr.requeue_request(r, CASE WHEN shown IS NULL THEN 'check_paid' ELSE 'check_paid_keep' END,
                                             '0', http_status, body,
                                             coalesce('the POS shows order ' || shown, 'the POS shows nothing'));
            END IF;
        ELSIF shown = o.external_reference THEN
            -- still there: now the DELETE
            PERFORM mpqr.requeue_request(r, NULL, '0', http_status, body, NULL);
        ELSE
            -- gone from the POS: maybe paid just now.  Look before saying
            -- cancelled or expired.
            PERFORM mpqr.requeue_request(r, 'check_paid', '0', http_status, body,
                                         'the order was no longer on the POS');
        END IF;
    WHEN 'check_paid', 'check_paid_keep' THEN
        FOR hit IN SELECT value FROM jsonb_array_elements(
                       CASE jsonb_typeof(j -> 'elements') WHEN 'array' THEN j -> 'elements' ELSE '[]' END)
        LOOP
            PERFORM mpqr.apply_merchant_order(r.account, hit);
        END LOOP;
        IF EXISTS (SELECT 1 FROM mpqr.merchant_orders m
                    WHERE m.order_id = o.id AND m.status = 'closed' AND m.total_amount = o.total_amount) THEN
            PERFORM mpqr.finish_request(r, 'done', http_status, body, 'already paid: not sent again');
        ELSIF r.kind = 'cancel' THEN
            -- nothing paid, and nothing left on the POS to remove
            PERFORM mpqr.finish_request(r, 'done', http_status, body, 'the order was no longer on the POS');
            c := mpqr.cancel_outcome(r.purpose);
            PERFORM mpqr.set_status(o.id, c.status, c.reason);
        ELSIF r.phase = 'check_paid_keep' THEN
            PERFORM mpqr.finish_request(r, 'failed', http_status, body,
                                        'the POS shows another order: not sent again, so as not to replace it');
            UPDATE mpqr.orders x SET error = 'the POS showed another order after a lost answer', updated_at = now()
             WHERE x.id = o.id;
            PERFORM mpqr.set_status(o.id, 'failed', 'replaced');
        ELSE
            -- nothing on the POS and nothing paid: safe to send again
            PERFORM mpqr.requeue_request(r, NULL, '0', http_status, body, NULL);
        END IF;
    WHEN 'fetch_order' THEN
        PERFORM mpqr.finish_request(r, 'done', http_status, body, 'could not cancel: fetched the order instead');
        IF j IS NOT NULL THEN
            PERFORM mpqr.apply_order(r.account, j);
        END IF;
        IF r.purpose = 'expire' THEN
            PERFORM mpqr.set_status(o.id, 'expired', 'expired');
        END IF;
    WHEN 'adopt' THEN
        SELECT e INTO hit FROM jsonb_array_elements(
                   CASE jsonb_typeof(j -> 'results') WHEN 'array' THEN j -> 'results' ELSE '[]' END) e
         WHERE e ->> 'external_id' = r.subject
         LIMIT 1;
        IF hit IS NOT NULL THEN
            PERFORM mpqr.finish_request(r, 'done', http_status, body, 'adopted what exists at Mercado Pago');
            PERFORM mpqr.create_done(r, hit);
        ELSIF r.http_status = 409 OR r.http_status = 400 THEN
            PERFORM mpqr.finish_request(r, 'failed', http_status, body, 'refused, and not found by its external id');
            PERFORM mpqr.create_failed(r, r.http_status, r.response);
        ELSE
            -- lost answer and nothing there: create it again
            PERFORM mpqr.requeue_request(r, NULL, '0', http_status, body, NULL);
        END IF;
    ELSE
        RAISE EXCEPTION 'unknown phase "%" of request %', r.phase, r.id;
    END CASE;
END
$$;
