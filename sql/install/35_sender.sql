-- What the sender worker calls: claim, record, tick.

-- What to send for a request right now: its main request, or the check or
-- follow-up step its phase names.  Returns no path when there is nothing to
-- send (a cancel of an order that never reached Mercado Pago).
--   check_pos    GET what the POS shows (instore), before a re-send or a DELETE
--   check_paid   search the merchant orders of the reference for a closed one
--   fetch_order  GET the order (Orders API), after a 409 to its cancel
--   adopt        search a store or POS by external id, after a 409 or a crash
CREATE FUNCTION mpqr.request_target(kind text, phase text, main_method text, main_path text,
                                    main_body text, subject text, collector_id bigint,
                                    external_reference text, mp_order_id text,
                                    OUT method text, OUT path text, OUT body text)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    CASE phase
        WHEN 'check_pos' THEN
            method := 'GET';
            path := mpqr.instore_pos_path(collector_id, subject);
        WHEN 'check_paid', 'check_paid_keep' THEN
            method := 'GET';
            path := mpqr.fetch_path('search_merchant_orders', external_reference);
        WHEN 'fetch_order' THEN
            method := 'GET';
            path := mpqr.fetch_path('fetch_order', mp_order_id);
        WHEN 'adopt' THEN
            method := 'GET';
            path := CASE kind
                WHEN 'create_store' THEN '/users/' || collector_id || '/stores/search?external_id=' || mpqr.urlencode(subject)
                ELSE '/pos?external_id=' || mpqr.urlencode(subject) END;
        ELSE
            method := main_method;
            body := main_body;
            path := main_path;
            IF path IS NULL AND kind = 'cancel' AND mp_order_id IS NOT NULL THEN
                path := '/v1/orders/' || mpqr.urlencode(mp_order_id) || '/cancel';
            END IF;
    END CASE;
END
$$;

-- Requeue requests whose lease expired: they may have been sent.  Kinds for
-- which a blind re-send is unsafe start again with a check.
CREATE FUNCTION mpqr.recover_leases() RETURNS integer
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    n integer;
BEGIN
    UPDATE mpqr.requests q
       SET state = 'queued',
           lease_until = NULL,
           phase = CASE
               WHEN q.phase IS NOT NULL THEN q.phase
               WHEN q.method IN ('PUT', 'DELETE') THEN 'check_pos'
               WHEN q.kind IN ('create_store', 'create_pos') THEN 'adopt'
               ELSE NULL END,
           failures = q.failures + 1,
           error = 'lease expired: the outcome of the last attempt is unknown'
     WHERE q.state = 'inflight' AND q.lease_until < now();
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- mpqr.claim_requests(max_rows) returns what the sender must send now
--
-- Claims at most max_rows due requests: not paused, and first in line for
-- their POS.  Marks them in flight with a lease of mpqr.request_lease.
CREATE FUNCTION mpqr.claim_requests(max_rows integer)
RETURNS TABLE (id bigint, method text, path text, body text, token text, idempotency_key text,
               attempt integer)
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE
-- a generic plan of the claim, blind to max_rows, walked every queued row
-- (0.3 s per claim with 15,000 queued); and JIT never pays off here
SET plan_cache_mode = force_custom_plan
SET jit = off
AS $$
DECLARE
    -- a lease never ends while its request may still be on the wire
    lease interval := greatest(mpqr.setting_interval('request_lease', '60s'),
                               mpqr.setting_interval('http_timeout', '10s')
                               + mpqr.setting_interval('connect_timeout', '5s')
                               + interval '5 seconds');
    c record;
    t record;
BEGIN
    PERFORM mpqr.recover_leases();
    FOR c IN
        WITH cand AS (
            SELECT q.id
              FROM mpqr.requests q
              JOIN mpqr.accounts a ON a.name = q.account
             WHERE q.state = 'queued'
               AND q.not_before <= now()
               AND a.paused_at IS NULL
               AND (q.serial_key IS NULL OR NOT EXISTS (
                        SELECT 1 FROM mpqr.requests o
                         WHERE o.serial_key = q.serial_key
                           AND o.state IN ('queued', 'inflight')
                           AND o.id < q.id))
               -- a POS is created once its store exists at Mercado Pago
               AND (q.kind <> 'create_pos' OR NOT EXISTS (
                        SELECT 1 FROM mpqr.pos p
                          JOIN mpqr.requests s ON s.kind = 'create_store' AND s.account = p.account
                                              AND s.subject = p.store_external_id
                                              AND s.state IN ('queued', 'inflight')
                         WHERE p.external_id = q.subject))
             ORDER BY q.id
             LIMIT max_rows
               FOR UPDATE OF q SKIP LOCKED
        ), claimed AS (
            UPDATE mpqr.requests q
               SET state = 'inflight',
                   attempts = q.attempts + 1,
                   lease_until = now() + lease,
                   sent_at = now()
              FROM cand
             WHERE q.id = cand.id
            RETURNING q.id, q.kind, q.phase, q.method, q.path, q.body, q.subject,
                      q.account, q.order_id, q.idempotency_key, q.attempts, q.purpose
        )
        SELECT cl.*, a.collector_id, a.access_token, o.external_reference, o.mp_order_id
          FROM claimed cl
          JOIN mpqr.accounts a ON a.name = cl.account
          LEFT JOIN mpqr.orders o ON o.id = cl.order_id
         ORDER BY cl.id
    LOOP
        t := mpqr.request_target(c.kind, c.phase, c.method, c.path, c.body, c.subject,
                                 c.collector_id, c.external_reference, c.mp_order_id);
        IF t.path IS NULL THEN
            -- a cancel of an order that never reached Mercado Pago
            UPDATE mpqr.requests q
               SET state = 'done', lease_until = NULL, finished_at = now(),
                   error = 'nothing to send: the order never reached Mercado Pago'
             WHERE q.id = c.id;
            PERFORM mpqr.set_status(c.order_id, (mpqr.cancel_outcome(c.purpose)).status,
                                    (mpqr.cancel_outcome(c.purpose)).reason);
            CONTINUE;
        END IF;
        id := c.id;
        method := t.method;
        path := t.path;
        body := t.body;
        IF c.kind = 'create_pos' AND c.phase IS NULL THEN
            -- built now: its store exists at Mercado Pago by the time the
            -- POS is claimed, but may not have when it was queued
            SELECT mpqr.pos_body(p, coalesce(s.mp_store_id, p.mp_store_id)) INTO body
              FROM mpqr.pos p
              LEFT JOIN mpqr.stores s ON s.account = p.account AND s.external_id = p.store_external_id
             WHERE p.external_id = c.subject;
        END IF;
        token := c.access_token;
        idempotency_key := c.idempotency_key;
        attempt := c.attempts;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Is this answer worth another attempt?  Network errors (0), timeouts,
-- locks, rate limits and server errors other than 501 are.
CREATE FUNCTION mpqr.retryable(http_status integer) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT http_status = 0 OR http_status IN (408, 423, 424, 429)
           OR (http_status >= 500 AND http_status <> 501)
$$;

-- Delay before the next attempt: exponential from mpqr.retry_base_delay,
-- capped by mpqr.retry_max_delay, with jitter, and never before Retry-After.
CREATE FUNCTION mpqr.retry_delay(failures integer, retry_after integer) RETURNS interval
LANGUAGE sql VOLATILE PARALLEL SAFE
AS $$
    SELECT greatest(
        least(mpqr.setting_interval('retry_base_delay', '1s') * power(2, least(failures - 1, 20)),
              mpqr.setting_interval('retry_max_delay', '300s')) * (0.5 + random() / 2),
        coalesce(make_interval(secs => retry_after), '0'))
$$;

-- Close a request with its final state and answer.
CREATE FUNCTION mpqr.finish_request(r mpqr.requests, new_state text, http_status integer,
                                    response text, error text)
RETURNS void
LANGUAGE sql VOLATILE PARALLEL UNSAFE
AS $$
    UPDATE mpqr.requests q
       SET state = new_state, http_status = finish_request.http_status,
           response = finish_request.response, error = finish_request.error,
           lease_until = NULL, finished_at = now()
     WHERE q.id = r.id
$$;

-- Put a request back in the queue, optionally in another phase.
CREATE FUNCTION mpqr.requeue_request(r mpqr.requests, new_phase text, delay interval,
                                     http_status integer, response text, error text)
RETURNS void
LANGUAGE sql VOLATILE PARALLEL UNSAFE
AS $$
    UPDATE mpqr.requests q
       SET state = 'queued', phase = new_phase, not_before = now() + delay,
           http_status = requeue_request.http_status, response = requeue_request.response,
           error = requeue_request.error, lease_until = NULL
     WHERE q.id = r.id
$$;

-- Read an answer as JSON; NULL when it is not JSON.
CREATE FUNCTION mpqr.try_jsonb(body text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN body::jsonb;
EXCEPTION WHEN data_exception THEN
    RETURN NULL;
END
$$;

-- Apply one answer to its request.
CREATE FUNCTION mpqr.handle_response(r mpqr.requests, http_status integer, body text,
                                     error text, retry_after integer)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    max_attempts integer := mpqr.setting('max_attempts', '10')::integer;
    what text := r.method || ' ' || coalesce(r.kind, '') || ' ' || coalesce(r.subject, '');
BEGIN
    IF r.phase IS NOT NULL AND (http_status BETWEEN 200 AND 299 OR http_status = 404) THEN
        PERFORM mpqr.on_phase_answer(r, http_status, body);
    ELSIF http_status BETWEEN 200 AND 299 THEN
        PERFORM mpqr.finish_request(r, 'done', http_status, body, error);
        PERFORM mpqr.on_success(r, http_status, body);
    ELSIF mpqr.retryable(http_status) THEN
        IF r.failures + 1 >= max_attempts THEN
            PERFORM mpqr.finish_request(r, 'failed', http_status, body,
                coalesce(error, 'HTTP ' || http_status) || format(' (gave up after %s attempts)', r.failures + 1));
            PERFORM mpqr.on_failure(r, http_status, body, error);
        ELSE
            -- the request may have been done (a 5xx, a timeout or a lost
            -- answer say nothing about that): the kinds that are unsafe to
            -- send blindly are checked first, as after an expired lease
            PERFORM mpqr.requeue_request(r,
                CASE WHEN r.phase IS NOT NULL THEN r.phase
                     WHEN r.method IN ('PUT', 'DELETE') THEN 'check_pos'
                     WHEN r.kind IN ('create_store', 'create_pos') AND http_status IN (0, 408, 500, 502, 504)
                         THEN 'adopt' END,
                mpqr.retry_delay(r.failures + 1, retry_after),
                http_status, body, coalesce(error, 'HTTP ' || http_status));
            UPDATE mpqr.requests q SET failures = q.failures + 1 WHERE q.id = r.id;
        END IF;
    ELSIF http_status IN (401, 403) THEN
        -- a revoked or expired token: pause the account, keep everything queued
        UPDATE mpqr.accounts a
           SET paused_at = coalesce(a.paused_at, now()),
               pause_reason = format('Mercado Pago answered %s to %s', http_status, what)
         WHERE a.name = r.account AND a.paused_at IS NULL;
        IF FOUND THEN
            RAISE WARNING 'Mercado Pago account "%" paused: the API answered % (the access token was refused)', r.account, http_status
                USING HINT = 'Give the account a valid token with mpqr_set_account(); its requests stay queued until then.';
        END IF;
        UPDATE mpqr.requests q
           SET state = 'queued', lease_until = NULL,
               http_status = handle_response.http_status, response = handle_response.body,
               error = 'account paused: HTTP ' || handle_response.http_status
         WHERE q.id = r.id;
    ELSIF r.kind IN ('create_store', 'create_pos')
          AND (http_status = 409 OR (http_status = 400 AND body ILIKE '%already%used%')) THEN
        PERFORM mpqr.requeue_request(r, 'adopt', '0', http_status, body, 'exists already: adopting it');
    ELSE
        PERFORM mpqr.finish_request(r, 'failed', http_status, body, coalesce(error, 'HTTP ' || http_status));
        PERFORM mpqr.on_failure(r, http_status, body, error);
    END IF;
END
$$;

-- mpqr.record_responses(ids, http_status, bodies, errors, retry_after, attempts)
--
-- Record the outcomes of the sender's requests, in one transaction.
-- attempts are those claim_requests() returned: a late outcome of an older
-- attempt (its lease expired and the request was claimed again) is ignored.
-- The batch is applied in one subtransaction; if that fails, it is applied
-- again row by row.  An outcome that cannot be applied (a data error) counts
-- as a lost answer for its own request, and nothing else; any other error
-- (a lock or statement timeout, a deadlock) fails the whole record, so that
-- the sender tries again and the leases take over.
CREATE FUNCTION mpqr.record_responses(ids bigint[], http_status integer[], bodies text[],
                                      errors text[], retry_after integer[],
                                      attempts integer[] DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    r mpqr.requests;
    msg text;
    code text;
    n integer := coalesce(array_length(ids, 1), 0);
BEGIN
    BEGIN
        FOR i IN 1 .. n LOOP
            SELECT * INTO r FROM mpqr.requests q WHERE q.id = ids[i] FOR UPDATE;
            CONTINUE WHEN NOT FOUND OR r.state <> 'inflight'
                          OR r.attempts IS DISTINCT FROM coalesce(attempts[i], r.attempts);
            PERFORM mpqr.handle_response(r, http_status[i], bodies[i], errors[i], retry_after[i]);
        END LOOP;
        RETURN;
    EXCEPTION WHEN OTHERS THEN
        NULL;  -- everything above was rolled back: redo it row by row
    END;
    FOR i IN 1 .. n LOOP
        SELECT * INTO r FROM mpqr.requests q WHERE q.id = ids[i] FOR UPDATE;
        CONTINUE WHEN NOT FOUND OR r.state <> 'inflight'
                      OR r.attempts IS DISTINCT FROM coalesce(attempts[i], r.attempts);
        BEGIN
            PERFORM mpqr.handle_response(r, http_status[i], bodies[i], errors[i], retry_after[i]);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, code = RETURNED_SQLSTATE;
            IF left(code, 2) IN ('08', '40', '53', '57', '58', 'XX')
               OR code IN ('55P03', '55006') THEN
                RAISE;
            END IF;
            RAISE WARNING 'could not apply the answer to request %: %', r.id, msg;
            BEGIN
                -- as if no answer had come: retried, after a check where needed
                PERFORM mpqr.handle_response(r, 0, NULL, 'could not apply the answer: ' || msg, NULL);
            EXCEPTION WHEN OTHERS THEN
                PERFORM mpqr.finish_request(r, 'failed', http_status[i], bodies[i],
                                            'could not apply the answer: ' || msg);
                UPDATE mpqr.orders o SET error = 'could not apply the answer: ' || msg
                 WHERE o.id = r.order_id AND o.status = 'queued';
            END;
        END;
    END LOOP;
END
$$;

-- mpqr.tick() runs the periodic duties; the sender calls it about once per
-- mpqr.poll_interval.
CREATE FUNCTION mpqr.tick() RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
BEGIN
    PERFORM mpqr.expire_due_orders();
    PERFORM mpqr.sweep();
    PERFORM mpqr.purge_old();
END
$$;
