-- Kind cancel: taking an order off its POS at Mercado Pago, for a cancel, a
-- supersede (Orders API) or the end of an expired order.
--
-- instore: first check what the POS shows (check_pos); a DELETE only if it
-- shows this order; if it does not, check the payments (check_paid), since
-- the order may have just been paid.  Orders API: POST .../cancel with its
-- own idempotency key, bound when sent, once the order has its id; a 409
-- (not cancellable) means it may have been paid, so the order is fetched
-- (fetch_order) and the POS's next request waits.

-- Queue the removal of an order from its POS.
CREATE FUNCTION mpqr.queue_cancel(o mpqr.orders, purpose text) RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    a mpqr.accounts;
BEGIN
    SELECT * INTO a FROM mpqr.accounts x WHERE x.name = o.account;
    IF a.api = 'instore' THEN
        RETURN mpqr.enqueue(o.account, 'cancel', 'DELETE', mpqr.instore_pos_path(a.collector_id, o.pos_id),
                            subject => o.pos_id, serial_key => mpqr.pos_serial_key(o.account, o.pos_id),
                            order_id => o.id, phase => 'check_pos', purpose => purpose);
    END IF;
    RETURN mpqr.enqueue(o.account, 'cancel', 'POST', NULL,
                        subject => o.pos_id, serial_key => mpqr.pos_serial_key(o.account, o.pos_id),
                        order_id => o.id, idempotency_key => gen_random_uuid()::text,
                        purpose => purpose);
END
$$;

-- The status an order gets when a cancel of this purpose is confirmed.
CREATE FUNCTION mpqr.cancel_outcome(purpose text, OUT status text, OUT reason text)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    status := CASE purpose WHEN 'expire' THEN 'expired' ELSE 'cancelled' END;
    reason := CASE purpose WHEN 'expire' THEN 'expired' WHEN 'supersede' THEN 'superseded' ELSE 'cancelled' END;
END
$$;

-- Close the order as the cancel's purpose says.
CREATE FUNCTION mpqr.cancel_close(r mpqr.requests) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    c record := mpqr.cancel_outcome(r.purpose);
BEGIN
    PERFORM mpqr.set_status(r.order_id, c.status, c.reason);
END
$$;

-- What a cancel sends now (see mpqr.request_target).  An Orders API cancel
-- of an order that never got its id has nothing to send.
CREATE FUNCTION mpqr.cancel_target(r mpqr.requests, a mpqr.accounts, o mpqr.orders,
                                   OUT method text, OUT path text, OUT body text, OUT headers text[])
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
BEGIN
    CASE r.phase
        WHEN 'check_pos' THEN
            method := 'GET';
            path := mpqr.instore_pos_path(a.collector_id, r.subject);
        WHEN 'check_paid' THEN
            method := 'GET';
            path := mpqr.payments_search_path(o.external_reference, 0);
        WHEN 'fetch_order' THEN
            method := 'GET';
            path := '/v1/orders/' || mpqr.urlencode(o.mp_order_id);
        ELSE
            IF r.method = 'DELETE' THEN
                method := r.method;
                path := r.path;
            ELSIF o.mp_order_id IS NOT NULL THEN
                method := 'POST';
                path := '/v1/orders/' || mpqr.urlencode(o.mp_order_id) || '/cancel';
            END IF;
    END CASE;
END
$$;

-- What an answer means for a cancel (see mpqr.kind_answer).
CREATE FUNCTION mpqr.cancel_answer(r mpqr.requests, class text, http_status integer, body text, error text)
RETURNS mpqr.request_transition
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    j jsonb := CASE WHEN http_status = 404 THEN NULL ELSE mpqr.try_jsonb(body) END;
    o mpqr.orders;
    shown text;
BEGIN
    SELECT * INTO o FROM mpqr.orders x WHERE x.id = r.order_id;
    IF class = 'skipped' THEN
        PERFORM mpqr.cancel_close(r);
        RETURN mpqr.transition(r, 'done', r.phase, NULL, NULL, NULL,
                               'nothing to send: the order never reached Mercado Pago');
    ELSIF class = 'success' THEN
        PERFORM mpqr.cancel_close(r);
        RETURN NULL;
    ELSIF class = 'final' THEN
        IF r.phase IS NULL AND r.method = 'POST' AND http_status = 409 THEN
            -- not cancellable: it may have just been paid
            RETURN mpqr.transition(r, 'queued', 'fetch_order', '0', http_status, body,
                                   'the order could not be cancelled: fetching its state');
        ELSIF r.phase IS NULL AND r.method = 'DELETE' AND mpqr.error_code(body) = 'pos_obtainment_by_external_id_error' THEN
            -- Mercado Pago does not know the POS: nothing is left to remove
            RETURN mpqr.transition(r, 'queued', 'check_paid', '0', http_status, body,
                                   'Mercado Pago does not know the POS: nothing to remove');
        ELSIF r.purpose = 'expire' THEN
            PERFORM mpqr.set_status(r.order_id, 'expired', 'expired');
        END IF;
        RETURN NULL;
    ELSIF class <> 'phase' THEN
        RETURN NULL;
    END IF;
    CASE r.phase
        WHEN 'check_pos' THEN
            shown := CASE jsonb_typeof(j)
                         WHEN 'array' THEN j -> 0 ->> 'external_reference'
                         WHEN 'object' THEN j ->> 'external_reference' END;
            IF shown = o.external_reference THEN
                -- still there: now the DELETE
                RETURN mpqr.transition(r, 'queued', NULL, '0', http_status, body, NULL);
            END IF;
            -- gone from the POS: maybe paid just now; look before closing it
            RETURN mpqr.transition(r, 'queued', 'check_paid', '0', http_status, body,
                                   'the order was no longer on the POS');
        WHEN 'check_paid' THEN
            PERFORM mpqr.apply_payment_search(r.account, j);
            SELECT * INTO o FROM mpqr.orders x WHERE x.id = r.order_id;
            IF mpqr.status_rank(o.status) >= 3 THEN
                RETURN mpqr.transition(r, 'done', r.phase, NULL, http_status, body, 'paid meanwhile');
            END IF;
            PERFORM mpqr.cancel_close(r);
            RETURN mpqr.transition(r, 'done', r.phase, NULL, http_status, body,
                                   'the order was no longer on the POS');
        WHEN 'fetch_order' THEN
            IF j IS NOT NULL THEN
                PERFORM mpqr.apply_order(r.account, j);
            END IF;
            IF r.purpose = 'expire' THEN
                PERFORM mpqr.set_status(o.id, 'expired', 'expired');
            END IF;
            RETURN mpqr.transition(r, 'done', r.phase, NULL, http_status, body,
                                   'could not cancel: fetched the order instead');
        ELSE
            RETURN NULL;
    END CASE;
END
$$;
