-- Kind publish: putting an order on its POS's QR at Mercado Pago.
--
-- instore: PUT .../stores/{store}/pos/{pos}/orders (204); Orders API: POST
-- /v1/orders with the order's idempotency key (201 with the order).  The
-- body is built when the request is claimed, from the order, and is the
-- same on every re-send (the Orders API refuses a reused key with another
-- body).  A published order replaces what its POS showed: the older order
-- becomes cancelled (superseded).  After a lost answer an instore PUT is
-- checked first (check_pos, then check_paid), so that it never overwrites a
-- newer order or republishes one that was paid.

-- The notification URL of an account's orders, or NULL when
-- mpqr.public_url is empty (warned about once per server start, as is an
-- http:// URL).
CREATE FUNCTION mpqr.notification_url(account text) RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    base text := rtrim(mpqr.setting('public_url'), '/');
BEGIN
    IF base = '' THEN
        IF mpqr.warn_once(0) THEN
            RAISE WARNING 'mpqr.public_url is empty: orders go out without a notification_url'
                USING HINT = 'Payments are then found through the application''s webhook settings and the reconciliation sweep.';
        END IF;
        RETURN NULL;
    END IF;
    IF base ~* '^http://' AND mpqr.warn_once(1) THEN
        RAISE WARNING 'mpqr.public_url "%" is not HTTPS', mpqr.excerpt(base)
            USING HINT = 'Mercado Pago requires HTTPS; plain HTTP is only for testing.';
    END IF;
    RETURN base || '/notifications?account=' || account;
END
$$;

-- ISO-8601 duration of an interval, in whole seconds (PT600S).
CREATE FUNCTION mpqr.iso_duration(i interval) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
AS $$
BEGIN
    RETURN 'PT' || greatest(30, ceil(extract(epoch FROM i)))::bigint || 'S';
END
$$;

-- The publish request of an order: method, path and body, for its API.
-- Everything comes from the order's own columns, so that a re-send is the
-- same request.
CREATE FUNCTION mpqr.publish_request(o mpqr.orders, a mpqr.accounts, p mpqr.pos,
                                     OUT method text, OUT path text, OUT body text)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
BEGIN
    IF a.api = 'instore' THEN
        method := 'PUT';
        path := mpqr.instore_store_pos_path(a.collector_id, p.store_external_id, p.external_id);
        body := json_strip_nulls(json_build_object(
            'external_reference', o.external_reference,
            'title', o.title,
            'description', o.description,
            'notification_url', mpqr.notification_url(a.name),
            'expiration_date', to_char(o.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"+00:00"'),
            'total_amount', o.total_amount,
            'items', (SELECT json_agg(i || jsonb_build_object('total_amount',
                                                 (i ->> 'unit_price')::numeric * (i ->> 'quantity')::numeric)
                                      ORDER BY n)
                        FROM jsonb_array_elements(o.items) WITH ORDINALITY AS e(i, n))))::text;
    ELSE
        method := 'POST';
        path := '/v1/orders';
        body := json_build_object(
            'type', 'qr',
            'external_reference', o.external_reference,
            'description', o.description,
            'total_amount', mpqr.amount_text(o.total_amount, o.currency),
            'expiration_time', mpqr.iso_duration(o.expires_in),
            'config', json_build_object('qr', json_build_object('external_pos_id', p.external_id,
                                                                'mode', o.mode)),
            'transactions', json_build_object('payments', json_build_array(
                json_build_object('amount', mpqr.amount_text(o.total_amount, o.currency)))),
            'items', (SELECT json_agg(json_strip_nulls(json_build_object(
                                 'title', i -> 'title',
                                 'unit_price', mpqr.amount_text((i ->> 'unit_price')::numeric, o.currency),
                                 'quantity', (i ->> 'quantity')::numeric,
                                 'unit_measure', i -> 'unit_measure',
                                 'external_code', i -> 'sku_number')) ORDER BY n)
                        FROM jsonb_array_elements(o.items) WITH ORDINALITY AS e(i, n)))::text;
    END IF;
END
$$;

-- What a publish sends now (see mpqr.request_target).
CREATE FUNCTION mpqr.publish_target(r mpqr.requests, a mpqr.accounts, o mpqr.orders,
                                    OUT method text, OUT path text, OUT body text, OUT headers text[])
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    p mpqr.pos;
    t record;
BEGIN
    CASE r.phase
        WHEN 'check_pos' THEN
            method := 'GET';
            path := mpqr.instore_pos_path(a.collector_id, r.subject);
        WHEN 'check_paid', 'check_paid_keep' THEN
            method := 'GET';
            path := mpqr.payments_search_path(o.external_reference, 0);
        ELSE
            SELECT * INTO p FROM mpqr.pos x WHERE x.external_id = o.pos_id;
            t := mpqr.publish_request(o, a, p);
            method := t.method;
            path := t.path;
            body := t.body;
    END CASE;
END
$$;

-- Take an order's publish out of the queue, if it is still waiting there.
-- Returns 'withdrawn' when it was never sent (the order can be closed
-- locally, without a call), 'maybe_sent' when an earlier attempt's answer was
-- lost, and 'none' when no publish is waiting (it is on the wire, or done).
-- A publish that may have been sent stays queued for the Orders API, so that
-- its re-send with the same idempotency key tells the order's id, which a
-- cancel queued after it needs; an instore one is dropped, since a check of
-- what the POS shows and a DELETE follow.
--
-- Caller must hold the locks of the order's POS and of the order.
CREATE FUNCTION mpqr.withdraw_publish(order_id bigint, why text) RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    q record;
BEGIN
    -- the latest publish (one per attempt, the earlier ones are final),
    -- found through requests_order: a condition on state would let the
    -- planner pick requests_due, which churns
    SELECT x.id, x.state, x.failures, x.phase, x.method INTO q
      FROM mpqr.requests x
     WHERE x.order_id = withdraw_publish.order_id AND x.kind = 'publish'
     ORDER BY x.id DESC LIMIT 1
       FOR UPDATE;
    IF NOT FOUND OR q.state <> 'queued' THEN
        RETURN 'none';
    END IF;
    IF q.failures = 0 AND q.phase IS NULL THEN
        UPDATE mpqr.requests x SET state = 'cancelled', finished_at = now(), error = why
         WHERE x.id = q.id;
        RETURN 'withdrawn';
    END IF;
    IF q.method = 'PUT' THEN
        UPDATE mpqr.requests x SET state = 'cancelled', finished_at = now(), error = why
         WHERE x.id = q.id;
    END IF;
    RETURN 'maybe_sent';
END
$$;

-- Queue the publish of an order, superseding what its POS shows.
--
-- Caller must hold the lock on the POS row, so that the requests of a POS
-- are queued in commit order.  An older order still waiting in the queue is
-- cancelled here without a call.  For the Orders API, a published older
-- order is cancelled at Mercado Pago first (MP keeps one pending order per
-- QR); for instore, the new PUT replaces it, and it becomes cancelled once
-- that PUT is answered (publish_done_batch), so it is not even read here.
-- A dynamic order has a QR of its own: it supersedes nothing, and nothing
-- supersedes it.  This runs in every mpqr_put_order(): it makes one query
-- when nothing waits, and one insert.
CREATE FUNCTION mpqr.queue_publish(order_id bigint, external_reference text, pos_id text,
                                   mode text, idempotency_key text, account text, api text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    old record;
    key text := mpqr.pos_serial_key(account, pos_id);
    rid bigint;
BEGIN
    IF mode <> 'dynamic' THEN
        FOR old IN SELECT x.id, x.status FROM mpqr.orders x
                    WHERE x.pos_id = queue_publish.pos_id AND x.id <> queue_publish.order_id
                      AND x.status IN ('queued', 'published') AND x.mode <> 'dynamic'
                      AND (x.status = 'queued' OR queue_publish.api = 'orders')
                    ORDER BY x.id
                      FOR UPDATE
        LOOP
            IF old.status = 'queued'
               AND mpqr.withdraw_publish(old.id, 'superseded before it was sent') = 'withdrawn' THEN
                PERFORM mpqr.set_status(old.id, 'cancelled', 'superseded',
                                        jsonb_build_object('by', external_reference));
            ELSIF api = 'orders' THEN
                PERFORM mpqr.enqueue(account, 'cancel', 'POST', NULL,
                                     subject => pos_id, serial_key => key, order_id => old.id,
                                     idempotency_key => gen_random_uuid()::text,
                                     purpose => 'supersede');
            END IF;
        END LOOP;
    END IF;
    INSERT INTO mpqr.requests (account, kind, method, subject, serial_key, order_id, idempotency_key)
    VALUES (account, 'publish', CASE WHEN api = 'instore' THEN 'PUT' ELSE 'POST' END,
            pos_id, key, order_id, CASE WHEN api = 'orders' THEN idempotency_key END)
    RETURNING id INTO rid;
    PERFORM mpqr.wake_sender_at_commit();
    RETURN rid;
END
$$;

-- Publishes answered 2xx, as a set: their orders become published (with the
-- Orders API's id and qr_data), and what their POS showed before is
-- superseded.  Returns the requests' transitions (done).
--
-- Caller must hold the locks of the POS and the orders (record_responses).
CREATE FUNCTION mpqr.publish_done_batch(live mpqr.requests[], outs mpqr.request_outcome[])
RETURNS mpqr.request_transition[]
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    moves mpqr.order_move[];
    published integer;
BEGIN
    IF coalesce(array_length(live, 1), 0) = 0 THEN
        RETURN '{}'::mpqr.request_transition[];
    END IF;
    -- the Orders API answers with the order: keep its id and its QR data
    UPDATE mpqr.orders x
       SET mp_order_id = coalesce(j ->> 'id', x.mp_order_id),
           qr_data = coalesce(j #>> '{type_response,qr_data}', x.qr_data),
           updated_at = now()
      FROM (SELECT (live[i]).order_id AS order_id, mpqr.try_jsonb((outs[i]).body) AS j
              FROM generate_subscripts(live, 1) i
             WHERE (live[i]).method = 'POST' AND (outs[i]).body IS NOT NULL) b
     WHERE x.id = b.order_id AND jsonb_typeof(b.j) = 'object';

    -- each order now waiting for its customer may bring news of resources
    -- mpqr has not seen yet: the budget for fetching them grows with it
    published := mpqr.advance_orders(ARRAY(
        SELECT ROW((live[i]).order_id, 'published', NULL, NULL)::mpqr.order_move
          FROM generate_subscripts(live, 1) i));
    PERFORM mpqr.fund_unknown_fetches(published);

    -- the POS shows these orders now: what it showed before was replaced
    -- (instore: by the PUT; Orders API: it was cancelled first).  Orders put
    -- after one of them, still waiting to be sent, are not touched.
    -- (LATERAL: the open orders of each POS, through orders_pos_open,
    -- whatever the statistics say of a table that just grew)
    SELECT array_agg(ROW(x.id, 'cancelled', 'superseded',
                         jsonb_build_object('by', n.external_reference))::mpqr.order_move)
      INTO moves
      FROM (SELECT o.*, (live[i]).id AS request_id
              FROM generate_subscripts(live, 1) i
              JOIN mpqr.orders o ON o.id = (live[i]).order_id
             WHERE o.mode <> 'dynamic') n
     CROSS JOIN LATERAL (
            SELECT x.id FROM mpqr.orders x
             WHERE x.pos_id = n.pos_id AND x.id <> n.id AND x.mode <> 'dynamic'
               AND x.status IN ('queued', 'published')
               AND (x.status = 'published'
                    OR NOT EXISTS (SELECT 1 FROM mpqr.requests q
                                    WHERE q.order_id = x.id AND q.kind = 'publish'
                                      AND q.state IN ('queued', 'inflight') AND q.id > n.request_id))
            OFFSET 0) x;
    IF moves IS NOT NULL THEN
        PERFORM mpqr.advance_orders(moves);
    END IF;

    RETURN ARRAY(SELECT mpqr.transition(live[i], 'done', NULL, NULL, (outs[i]).http_status,
                                        (outs[i]).body, NULL)
                   FROM generate_subscripts(live, 1) i);
END
$$;

-- A publish was refused (a 4xx), or its retries gave up: the order fails,
-- with Mercado Pago's error kept; one that gave up stays queued, visible as
-- stuck, until it expires.
CREATE FUNCTION mpqr.publish_failed(r mpqr.requests, class text, http_status integer, body text, error text)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    j jsonb := mpqr.try_jsonb(body);
BEGIN
    UPDATE mpqr.orders x
       SET error = coalesce(publish_failed.error, format('Mercado Pago answered %s', http_status)),
           error_body = j, updated_at = now()
     WHERE x.id = r.order_id;
    IF class = 'final' THEN
        PERFORM mpqr.set_status(r.order_id, 'failed', 'rejected',
                                jsonb_build_object('http_status', http_status,
                                                   'body', coalesce(j, to_jsonb(left(body, 2000)))));
    END IF;
END
$$;

-- What an answer means for a publish (see mpqr.kind_answer).
--   check_pos          the POS shows this order: done; nothing: check_paid;
--                      another order: check_paid_keep
--   check_paid[_keep]  the payments of the reference: paid: done (never sent
--                      again); _keep: failed, so as not to replace the other
--                      order; else the PUT again
CREATE FUNCTION mpqr.publish_answer(r mpqr.requests, class text, http_status integer, body text, error text)
RETURNS mpqr.request_transition
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    j jsonb := CASE WHEN http_status = 404 THEN NULL ELSE mpqr.try_jsonb(body) END;
    o mpqr.orders;
    shown text;
    t mpqr.request_transition[];
BEGIN
    IF class = 'success' THEN
        t := mpqr.publish_done_batch(ARRAY[r], ARRAY[ROW(r.id, r.attempts, http_status, body, error, NULL)::mpqr.request_outcome]);
        RETURN t[1];
    ELSIF class IN ('final', 'gave_up') THEN
        IF r.phase IS NULL OR class = 'gave_up' THEN
            PERFORM mpqr.publish_failed(r, class, http_status, body, error);
        ELSE
            UPDATE mpqr.orders x SET error = 'could not check a lost publish: ' || coalesce(publish_answer.error, ''), updated_at = now()
             WHERE x.id = r.order_id;
        END IF;
        RETURN NULL;
    ELSIF class <> 'phase' THEN
        RETURN NULL;
    END IF;
    SELECT * INTO o FROM mpqr.orders x WHERE x.id = r.order_id;
    IF r.phase = 'check_pos' THEN
        shown := CASE jsonb_typeof(j)
                     WHEN 'array' THEN j -> 0 ->> 'external_reference'
                     WHEN 'object' THEN j ->> 'external_reference' END;
        IF shown IS NOT NULL AND shown <> o.external_reference AND EXISTS (
               SELECT 1 FROM mpqr.orders y
                WHERE y.account = o.account AND y.pos_id = o.pos_id
                  AND y.external_reference = shown AND y.id < o.id) THEN
            -- the POS still shows an earlier order of ours, the one this
            -- PUT replaces: as if it showed nothing of this one
            shown := NULL;
        END IF;
        IF shown = o.external_reference THEN
            -- the PUT landed before the sender lost track of it
            t := mpqr.publish_done_batch(ARRAY[r], ARRAY[ROW(r.id, r.attempts, http_status, NULL, NULL, NULL)::mpqr.request_outcome]);
            RETURN mpqr.transition(r, 'done', r.phase, NULL, http_status, body, 'found on the POS after a lost answer');
        END IF;
        IF shown IS NULL AND mpqr.may_still_arrive(r) IS NOT NULL THEN
            -- the lost PUT may still land: look again, soon (it usually
            -- lands within moments) and then less often, until it cannot.
            -- The request keeps the PUT's own (missing) answer, which is what
            -- may_still_arrive reads the next time.
            RETURN mpqr.transition(r, 'queued', 'check_pos',
                                   least(mpqr.may_still_arrive(r),
                                         greatest(interval '1 second', (now() - r.main_sent_at) / 2)),
                                   r.http_status, body,
                                   'the POS shows nothing yet; the last PUT may still arrive');
        END IF;
        RETURN mpqr.transition(r, 'queued', CASE WHEN shown IS NULL THEN 'check_paid' ELSE 'check_paid_keep' END,
                               '0', http_status, body,
                               coalesce('the POS shows order ' || mpqr.excerpt(shown), 'the POS shows nothing'));
    END IF;
    -- check_paid, check_paid_keep: what the payments of the reference say
    PERFORM mpqr.apply_payment_search(r.account, j);
    SELECT * INTO o FROM mpqr.orders x WHERE x.id = r.order_id;
    IF mpqr.status_rank(o.status) >= 3 THEN
        RETURN mpqr.transition(r, 'done', r.phase, NULL, http_status, body, 'already paid: not sent again');
    ELSIF r.phase = 'check_paid_keep' THEN
        UPDATE mpqr.orders x SET error = 'the POS showed another order after a lost answer', updated_at = now()
         WHERE x.id = o.id;
        PERFORM mpqr.set_status(o.id, 'failed', 'replaced');
        RETURN mpqr.transition(r, 'failed', r.phase, NULL, http_status, body,
                               'the POS shows another order: not sent again, so as not to replace it');
    END IF;
    -- nothing on the POS and nothing paid: safe to send again
    RETURN mpqr.transition(r, 'queued', NULL, '0', http_status, body, NULL);
END
$$;
