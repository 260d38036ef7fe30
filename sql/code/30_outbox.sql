-- The outbox: one life cycle for every request to Mercado Pago's API.
--
-- The sender worker only moves bytes.  In one short transaction it calls
-- mpqr.claim_requests(), sends what that returns with no transaction open,
-- and hands the outcomes to mpqr.record_responses() in one transaction.
-- Everything else lives here: what to send, how to read an answer, retries,
-- leases, pausing.  What an answer means for an order, a refund or a POS
-- is up to each kind's own file (41_publish ... 45_fetch), through
-- mpqr.kind_answer().
--
-- Kinds: publish, cancel, refund, create_store, create_pos (they act at
-- Mercado Pago), and fetch_merchant_order, fetch_payment, fetch_order,
-- fetch_chargeback, search_merchant_orders, search_payments, check_token
-- (they only read).
--
-- States: queued -> inflight (claimed, with a lease) -> done | failed, or
-- back to queued (a retry, a phase, an account paused); cancelled when
-- withdrawn before it was sent.
--
-- Phases: a check or follow-up step that replaces the main request until it
-- is answered, then hands back to the main request or finishes it.
--
--   kind          phase            sends                              then
--   publish       -                PUT instore | POST /v1/orders      2xx done; 4xx failed (order failed)
--                 check_pos        GET what the POS shows             ours: done; another order:
--                                                                     check_paid_keep; nothing: check_paid,
--                                                                     once the lost PUT cannot still arrive
--                 check_paid[_keep] search the reference's payments   paid: done; _keep: failed (replaced);
--                                                                     else the main request again
--   cancel        -                DELETE instore | POST .../cancel   2xx done (cancelled or expired);
--                                                                     409 (not cancellable): fetch_order
--                 check_pos        (instore starts here)              ours: the DELETE; else check_paid
--                 check_paid       search the reference's payments    done: cancelled, expired or paid
--                 fetch_order      GET the order                      done, with what it says
--   refund        -                POST the refund                    final: done; in process: check_refund
--                 check_refund     GET the refund or the order        final: done; else again, later
--   create_*      -                POST /users/{id}/stores | /pos     2xx done; 409, "already used": adopt
--                 adopt            search by external id              found: done; refused: failed;
--                                                                     lost answer: the POST again
--   fetch_*, search_*, check_token GET                                2xx applied, done; 4xx failed
--
-- Answers, for every kind (mpqr.answer_class):
--   2xx             the kind's handler decides (success, or the phase's answer);
--   408 423 424 429 5xx but 501, network errors (0), and 409/422 that
--                   Mercado Pago documents as transient on cancel and refund:
--                   retried with backoff (mpqr.retry_delay), never before
--                   Retry-After.  Reads and publishes give up after
--                   mpqr.max_attempts; cancels, refunds and creations wait on
--                   Mercado Pago until it answers for good;
--   401 403         the token is refused: the account is paused and its
--                   requests wait - except on a fetch of a resource the
--                   account does not know, which only says "not yours, or no
--                   such id" (API reference 12.1): that fetch is dropped and
--                   counted, and a check_token (GET /users/me) decides;
--   other 4xx       final: the kind's handler decides.
--
-- The unknown-outcome rule (mpqr.unknown_outcome_phase), for a request that
-- may have been done although no answer came (a network error, a 5xx, a
-- lost lease): an instore PUT or DELETE first asks what the POS shows; a
-- store or POS creation first searches by external id; everything else is
-- sent again as it is - GETs are safe, and the POSTs that act carry an
-- idempotency key.  A check step that failed is simply repeated.
--
-- Leases: a claimed request carries a lease (mpqr.request_lease, never
-- shorter than a request can stay on the wire) and the incarnation of the
-- sender that holds it.  A new sender incarnation recovers at once every
-- request held by a dead one, and any lease that expired, through the
-- unknown-outcome rule.
--
-- Serial order: requests with the same serial_key (a POS, a store's
-- creation) go one at a time, in id order; mpqr_put_order() locks the POS,
-- so id order is commit order.
--
-- Lock order, on every path: the POS row, then order rows (in id order),
-- then request rows.  mpqr.record_responses() locks the POS and orders of
-- its batch first and writes its request rows last, after every other
-- effect.  Rows in flight are written only by the sender, and backends only
-- lock queued rows, so nobody waits for a request row while the sender
-- waits for something they hold.  Each unit of work of a worker first takes
-- a share lock on the extension itself (src/worker.c), so that DROP
-- EXTENSION waits for it instead of deadlocking with it.

-- Queue a request and wake the sender at commit.
CREATE FUNCTION mpqr.enqueue(account text, kind text, method text, path text,
                             body text DEFAULT NULL, subject text DEFAULT NULL,
                             serial_key text DEFAULT NULL, order_id bigint DEFAULT NULL,
                             idempotency_key text DEFAULT NULL, phase text DEFAULT NULL,
                             purpose text DEFAULT NULL, refund_id bigint DEFAULT NULL,
                             not_before timestamptz DEFAULT now())
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    rid bigint;
BEGIN
    INSERT INTO mpqr.requests (account, kind, method, path, body, subject, serial_key,
                               order_id, idempotency_key, phase, purpose, refund_id, not_before)
    VALUES (account, kind, method, path, body, subject, serial_key, order_id,
            idempotency_key, phase, purpose, refund_id, not_before)
    RETURNING id INTO rid;
    PERFORM mpqr.wake_sender_at_commit();
    RETURN rid;
END
$$;

-- The serial key of a POS: its requests go one at a time, in order.
CREATE FUNCTION mpqr.pos_serial_key(account text, pos_id text) RETURNS text
LANGUAGE sql IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE
AS $$ SELECT account || '/' || pos_id $$;

-- Paths of the instore (QR attended v2) API; every segment is encoded.
CREATE FUNCTION mpqr.instore_pos_path(collector_id bigint, pos_id text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
AS $$
BEGIN
    RETURN '/instore/qr/seller/collectors/' || collector_id || '/pos/'
           || mpqr.urlencode(pos_id) || '/orders';
END
$$;

CREATE FUNCTION mpqr.instore_store_pos_path(collector_id bigint, store_id text, pos_id text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
AS $$
BEGIN
    RETURN '/instore/qr/seller/collectors/' || collector_id || '/stores/'
           || mpqr.urlencode(store_id) || '/pos/' || mpqr.urlencode(pos_id) || '/orders';
END
$$;

-- Is this answer worth another attempt?  Network errors (0), timeouts,
-- locks, rate limits and server errors other than 501 are; so are the 409
-- and 422 that Mercado Pago documents as transient on cancels and refunds
-- (API reference 12.6).
CREATE FUNCTION mpqr.retryable(kind text, http_status integer, body text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT http_status = 0 OR http_status IN (408, 423, 424, 429)
           OR (http_status >= 500 AND http_status <> 501)
           OR (kind IN ('cancel', 'refund')
               AND (http_status = 422
                    OR (http_status = 409 AND mpqr.error_code(body) IN ('processor_communication_error',
                                                                        'post_processing_operation_pending'))))
$$;

-- The error code of an answer, in any of the envelopes Mercado Pago uses:
-- {"errors":[{"code"}]} (Orders API), {"error"} or {"errorKey"} (classic
-- and instore), or the first of "cause"/"causes".
CREATE FUNCTION mpqr.error_code(body text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    j jsonb := mpqr.try_jsonb(body);
BEGIN
    IF jsonb_typeof(j) <> 'object' THEN
        RETURN NULL;
    END IF;
    RETURN coalesce(j #>> '{errors,0,code}', j ->> 'error', j ->> 'errorKey',
                    j #>> '{cause,0,code}', j #>> '{causes,0,code}');
END
$$;

-- Delay before the next attempt: exponential from mpqr.retry_base_delay,
-- capped by mpqr.retry_max_delay, with jitter, and never before
-- Retry-After (itself taken up to an hour).
CREATE FUNCTION mpqr.retry_delay(failures integer, retry_after integer) RETURNS interval
LANGUAGE sql VOLATILE PARALLEL SAFE
AS $$
    SELECT greatest(
        least(mpqr.setting_interval('retry_base_delay') * power(2, least(greatest(failures, 1) - 1, 20)),
              mpqr.setting_interval('retry_max_delay')) * (0.5 + random() / 2),
        make_interval(secs => least(coalesce(retry_after, 0), 3600)))
$$;

-- Does a kind give up after mpqr.max_attempts retryable failures?  Reads
-- do (the sweep asks again); a publish does (its order stays queued and
-- shows as stuck until it expires).  Cancels, refunds and creations wait on
-- Mercado Pago until it answers for good.
CREATE FUNCTION mpqr.gives_up(kind text) RETURNS boolean
LANGUAGE sql IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE
AS $$ SELECT kind NOT IN ('cancel', 'refund', 'create_store', 'create_pos') $$;

-- The unknown-outcome rule: the phase a request goes through before it is
-- sent again, when it may have been done although no answer came.
-- http_status is NULL for a lost lease.
CREATE FUNCTION mpqr.unknown_outcome_phase(r mpqr.requests, http_status integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN r.phase IS NOT NULL THEN r.phase
        WHEN r.method IN ('PUT', 'DELETE') THEN 'check_pos'
        WHEN r.kind IN ('create_store', 'create_pos')
             AND coalesce(http_status, 0) NOT IN (423, 424, 429) THEN 'adopt'
        END
$$;

-- What to send for a request right now: its main request, or the step its
-- phase names.  method is NULL when there is nothing to send (the sender
-- records that as skipped).
CREATE FUNCTION mpqr.request_target(r mpqr.requests, a mpqr.accounts,
                                    OUT method text, OUT path text, OUT body text, OUT headers text[])
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
DECLARE
    o mpqr.orders;
    t record;
BEGIN
    IF r.order_id IS NOT NULL THEN
        SELECT * INTO o FROM mpqr.orders x WHERE x.id = r.order_id;
    END IF;
    CASE r.kind
        WHEN 'publish' THEN t := mpqr.publish_target(r, a, o);
        WHEN 'cancel' THEN t := mpqr.cancel_target(r, a, o);
        WHEN 'refund' THEN t := mpqr.refund_target(r, a, o);
        WHEN 'create_store', 'create_pos' THEN t := mpqr.create_target(r, a);
        ELSE
            SELECT r.method AS method, r.path AS path, r.body AS body, NULL::text[] AS headers INTO t;
    END CASE;
    method := t.method;
    path := t.path;
    body := t.body;
    headers := t.headers;
END
$$;

-- Can the last main request of r still reach Mercado Pago?  One that got
-- no answer at all (a crash, a dropped connection: http_status NULL or 0)
-- may be applied there a little later; a check that finds nothing is
-- trusted only once the request could no longer be on its way, as when it
-- would have timed out.  An answer, even a 5xx, means it is not on its way.
-- Returns how long to wait before checking again (NULL: no need).
CREATE FUNCTION mpqr.may_still_arrive(r mpqr.requests) RETURNS interval
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
DECLARE
    w interval := mpqr.setting_interval('http_timeout') + mpqr.setting_interval('connect_timeout');
BEGIN
    IF coalesce(r.http_status, 0) = 0 AND r.main_sent_at + w > now() THEN
        RETURN r.main_sent_at + w - now();
    END IF;
    RETURN NULL;
END
$$;

-- Requeue the requests whose outcome the sender can no longer tell: those
-- held by another (dead) sender incarnation, and expired leases.  Returns
-- how many.
CREATE FUNCTION mpqr.recover_requests(incarnation bigint) RETURNS integer
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    n integer;
BEGIN
    UPDATE mpqr.requests q
       SET state = 'queued',
           lease_until = NULL,
           lease_owner = NULL,
           not_before = now(),
           phase = mpqr.unknown_outcome_phase(q, NULL),
           failures = q.failures + 1,
           http_status = NULL,
           error = CASE WHEN q.lease_owner IS DISTINCT FROM incarnation
                        THEN 'the sender that sent it stopped: the outcome is unknown'
                        ELSE 'lease expired: the outcome of the last attempt is unknown' END
     WHERE q.state = 'inflight'
       AND (q.lease_owner IS DISTINCT FROM incarnation OR q.lease_until < now());
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- mpqr.claim_requests(max_rows, incarnation) returns setof mpqr.claimed_request
--
-- Claim at most max_rows due requests: not paused, of accounts configured in
-- this database, and first in line for their serial key.  They become in
-- flight, with a lease held by the sender incarnation given.
CREATE FUNCTION mpqr.claim_requests(max_rows integer, incarnation bigint)
RETURNS SETOF mpqr.claimed_request
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE
-- a generic plan of the claim, blind to max_rows, walked every queued row
SET plan_cache_mode = force_custom_plan
SET jit = off
AS $$
DECLARE
    -- a lease never ends while its request may still be on the wire
    lease interval := greatest(mpqr.setting_interval('request_lease'),
                               mpqr.setting_interval('http_timeout')
                               + mpqr.setting_interval('connect_timeout')
                               + interval '5 seconds');
    h record := mpqr.here();
BEGIN
    PERFORM mpqr.count_event('requests_recovered', mpqr.recover_requests(incarnation));
    RETURN QUERY
    WITH cand AS (
        SELECT q.id
          FROM mpqr.requests q
          JOIN mpqr.accounts a ON a.name = q.account
         WHERE q.state = 'queued'
           AND q.not_before <= now()
           AND a.paused_at IS NULL
           AND a.origin_system = h.system AND a.origin_database = h.database
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
         ORDER BY q.not_before, q.id
         LIMIT max_rows
           FOR UPDATE OF q SKIP LOCKED
    ), claimed AS (
        UPDATE mpqr.requests q
           SET state = 'inflight',
               attempts = q.attempts + 1,
               lease_until = now() + lease,
               lease_owner = incarnation,
               sent_at = now(),
               main_sent_at = CASE WHEN q.phase IS NULL THEN now() ELSE q.main_sent_at END
          FROM cand
         WHERE q.id = cand.id
        RETURNING q
    )
    SELECT (c.q).id, (c.q).attempts, t.method, t.path, t.body, a.access_token,
           (c.q).idempotency_key, t.headers
      FROM claimed c
      JOIN mpqr.accounts a ON a.name = (c.q).account
      CROSS JOIN LATERAL mpqr.request_target(c.q, a) t
     ORDER BY (c.q).id;
END
$$;

-- When the next queued request becomes due, if later than now: the sender
-- sleeps until then unless a commit wakes it.  NULL when nothing waits.
CREATE FUNCTION mpqr.outbox_next_due() RETURNS timestamptz
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN (SELECT min(due) FROM (
        (SELECT q.not_before AS due
           FROM mpqr.requests q
           JOIN mpqr.accounts a ON a.name = q.account
          WHERE q.state = 'queued' AND q.not_before > now() AND a.paused_at IS NULL
          ORDER BY q.not_before
          LIMIT 1)
        UNION ALL
        (SELECT q.lease_until
           FROM mpqr.requests q
          WHERE q.state = 'inflight'
          ORDER BY q.lease_until
          LIMIT 1)) d);
END
$$;

-- Pause an account whose token Mercado Pago refused: its requests stay
-- queued until mpqr_set_account() gives it a token.
CREATE FUNCTION mpqr.pause_account(account text, reason text) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
BEGIN
    UPDATE mpqr.accounts a
       SET paused_at = now(), pause_reason = reason
     WHERE a.name = pause_account.account AND a.paused_at IS NULL;
    IF FOUND THEN
        RAISE WARNING 'Mercado Pago account "%" paused: %', account, reason
            USING HINT = 'Give the account a valid token with mpqr_set_account(); its requests stay queued until then.';
    END IF;
END
$$;

-- How an answer is to be read (see the header of this file): success,
-- phase (the answer to a check step), retry, refused (the token), not_yours
-- (a fetch the token may not read), final (a 4xx), or skipped (nothing was
-- sent).
CREATE FUNCTION mpqr.answer_class(r mpqr.requests, http_status integer, body text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN http_status = -1 THEN 'skipped'
        -- an Orders API order created, but whose id the answer does not
        -- give (a truncated body): sent again with its idempotency key,
        -- which answers with the same order
        WHEN http_status BETWEEN 200 AND 299 AND r.phase IS NULL AND r.kind = 'publish'
             AND r.method = 'POST' AND (mpqr.try_jsonb(body) ->> 'id') IS NULL THEN 'retry'
        WHEN http_status BETWEEN 200 AND 299 THEN CASE WHEN r.phase IS NULL THEN 'success' ELSE 'phase' END
        WHEN http_status = 404 AND r.phase IS NOT NULL THEN 'phase'
        WHEN mpqr.retryable(r.kind, http_status, body) THEN 'retry'
        WHEN http_status IN (401, 403) THEN
            CASE WHEN r.kind IN ('fetch_merchant_order', 'fetch_payment', 'fetch_order', 'fetch_chargeback')
                      AND NOT mpqr.known_resource(r.account, r.kind, r.subject)
                 THEN 'not_yours' ELSE 'refused' END
        ELSE 'final' END
$$;

-- A transition of the batch.
CREATE FUNCTION mpqr.transition(r mpqr.requests, state text, phase text, delay interval,
                                http_status integer, response text, error text,
                                failure boolean DEFAULT false)
RETURNS mpqr.request_transition
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT ROW(r.id, state, phase, delay, http_status, response, error, failure)::mpqr.request_transition $$;

-- The kind's own reading of an answer.  Each returns the request's
-- transition, or NULL for the default of the class: done after a success or
-- a skip, failed after a final answer or when the retries gave up.
CREATE FUNCTION mpqr.kind_answer(r mpqr.requests, class text, http_status integer, body text, error text)
RETURNS mpqr.request_transition
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
BEGIN
    RETURN CASE
        WHEN r.kind = 'publish' THEN mpqr.publish_answer(r, class, http_status, body, error)
        WHEN r.kind = 'cancel' THEN mpqr.cancel_answer(r, class, http_status, body, error)
        WHEN r.kind = 'refund' THEN mpqr.refund_answer(r, class, http_status, body, error)
        WHEN r.kind IN ('create_store', 'create_pos') THEN mpqr.create_answer(r, class, http_status, body, error)
        ELSE mpqr.fetch_answer(r, class, http_status, body, error) END;
END
$$;

-- Read one outcome; return what becomes of its request.
CREATE FUNCTION mpqr.apply_outcome(r mpqr.requests, o mpqr.request_outcome)
RETURNS mpqr.request_transition
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    class text := mpqr.answer_class(r, o.http_status, o.body);
    err text := coalesce(o.error, CASE WHEN o.http_status > 0 THEN 'HTTP ' || o.http_status
                                       WHEN o.http_status = 0 THEN 'no answer' END);
    what text := r.method || ' ' || r.kind || coalesce(' ' || r.subject, '');
    t mpqr.request_transition;
BEGIN
    IF class = 'retry' THEN
        IF r.failures + 1 >= mpqr.setting('max_attempts')::integer AND mpqr.gives_up(r.kind) THEN
            class := 'gave_up';
            err := err || format(' (gave up after %s attempts)', r.failures + 1);
        ELSE
            RETURN mpqr.transition(r, 'queued', mpqr.unknown_outcome_phase(r, o.http_status),
                                   mpqr.retry_delay(r.failures + 1, o.retry_after),
                                   o.http_status, o.body, err, true);
        END IF;
    ELSIF class = 'refused' THEN
        PERFORM mpqr.pause_account(r.account, format('Mercado Pago answered %s to %s', o.http_status, what));
        IF r.kind = 'check_token' THEN
            RETURN mpqr.transition(r, 'done', r.phase, NULL, o.http_status, o.body, 'the token was refused: account paused');
        END IF;
        RETURN mpqr.transition(r, 'queued', r.phase, '0', o.http_status, o.body,
                               'account paused: HTTP ' || o.http_status);
    ELSIF class = 'not_yours' THEN
        -- a stray or forged notification: never a reason to pause (12.1)
        PERFORM mpqr.count_event('fetches_refused');
        PERFORM mpqr.queue_token_check(r.account);
        RETURN mpqr.transition(r, 'failed', r.phase, NULL, o.http_status, o.body,
                               format('Mercado Pago answered %s: not this account''s, or no such id', o.http_status));
    END IF;
    t := mpqr.kind_answer(r, class, o.http_status, o.body, err);
    IF t IS NULL THEN
        t := mpqr.transition(r, CASE WHEN class IN ('success', 'phase', 'skipped') THEN 'done' ELSE 'failed' END,
                             r.phase, NULL, o.http_status, o.body,
                             CASE WHEN class IN ('success', 'phase') THEN NULL ELSE err END);
    END IF;
    RETURN t;
END
$$;

-- Is this error the database's trouble rather than one answer's?  Then the
-- whole record fails, the sender tries again, and no outcome is lost.
CREATE FUNCTION mpqr.database_trouble(sqlstate text) RETURNS boolean
LANGUAGE sql IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE
AS $$
    SELECT left(sqlstate, 2) IN ('08', '40', '53', '57', '58', 'XX') OR sqlstate IN ('55P03', '55006')
$$;

-- Read a batch of outcomes; return their transitions.  The answers to
-- publishes that succeeded are applied set-based (mpqr.publish_done_batch);
-- every other answer by its kind's handler.  With one_by_one each outcome
-- runs in a subtransaction of its own, and one that cannot be applied (a
-- data error) counts as a lost answer for its own request only.
CREATE FUNCTION mpqr.apply_outcomes(live mpqr.requests[], outs mpqr.request_outcome[], one_by_one boolean)
RETURNS mpqr.request_transition[]
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    t mpqr.request_transition[] := '{}'::mpqr.request_transition[];
    fast boolean[];
    msg text;
    code text;
BEGIN
    IF NOT one_by_one THEN
        SELECT array_agg((live[i]).kind = 'publish' AND (live[i]).phase IS NULL
                         AND (outs[i]).http_status BETWEEN 200 AND 299
                         AND mpqr.answer_class(live[i], (outs[i]).http_status, (outs[i]).body) = 'success'
                         ORDER BY i)
          INTO fast
          FROM generate_subscripts(live, 1) i;
        t := mpqr.publish_done_batch(
                 ARRAY(SELECT live[i] FROM generate_subscripts(live, 1) i WHERE fast[i] ORDER BY i),
                 ARRAY(SELECT outs[i] FROM generate_subscripts(live, 1) i WHERE fast[i] ORDER BY i));
    END IF;
    FOR i IN 1 .. coalesce(array_length(live, 1), 0) LOOP
        CONTINUE WHEN NOT one_by_one AND fast[i];
        IF NOT one_by_one THEN
            t := t || mpqr.apply_outcome(live[i], outs[i]);
            CONTINUE;
        END IF;
        BEGIN
            IF (live[i]).kind = 'publish' AND (live[i]).phase IS NULL AND (outs[i]).http_status BETWEEN 200 AND 299 THEN
                t := t || mpqr.publish_done_batch(ARRAY[live[i]], ARRAY[outs[i]]);
            ELSE
                t := t || mpqr.apply_outcome(live[i], outs[i]);
            END IF;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, code = RETURNED_SQLSTATE;
            IF mpqr.database_trouble(code) THEN
                RAISE;
            END IF;
            RAISE WARNING 'could not apply the answer to request %: %', (live[i]).id, mpqr.excerpt(msg);
            -- as if no answer had come: retried, after a check where needed
            t := t || mpqr.transition(live[i], 'queued', mpqr.unknown_outcome_phase(live[i], 0),
                                      mpqr.retry_delay((live[i]).failures + 1, NULL),
                                      (outs[i]).http_status, (outs[i]).body,
                                      'could not apply the answer: ' || msg, true);
        END;
    END LOOP;
    RETURN t;
END
$$;

-- mpqr.record_responses(outcomes, incarnation)
--
-- Record what became of the sender's requests, in one transaction.  Only
-- outcomes of live attempts count: a request still in flight, with this
-- attempt number, held by this incarnation; a late outcome of an older
-- attempt is ignored.  The batch is applied in one subtransaction, and if
-- that fails row by row; an error that is the database's trouble (a lock
-- or statement timeout, a deadlock) fails the whole record, so that the
-- sender tries again and the leases take over if it cannot.
CREATE FUNCTION mpqr.record_responses(outcomes mpqr.request_outcome[], incarnation bigint)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET plan_cache_mode = force_custom_plan
SET jit = off
AS $$
DECLARE
    live mpqr.requests[];
    outs mpqr.request_outcome[];
    t mpqr.request_transition[];
    code text;
BEGIN
    SELECT array_agg(q ORDER BY q.id), array_agg(o ORDER BY q.id) INTO live, outs
      FROM unnest(outcomes) o
      JOIN mpqr.requests q ON q.id = o.id
     WHERE q.state = 'inflight' AND q.attempts = o.attempt AND q.lease_owner = incarnation;
    IF live IS NULL THEN
        RETURN;
    END IF;

    -- the lock order: the POS of the batch's orders, then the orders; the
    -- requests come last
    PERFORM 1 FROM mpqr.pos p
     WHERE p.external_id IN (SELECT o.pos_id FROM mpqr.orders o
                              WHERE o.id IN (SELECT (y).order_id FROM unnest(live) y))
     ORDER BY p.external_id
       FOR UPDATE OF p;
    PERFORM 1 FROM mpqr.orders x
     WHERE x.id IN (SELECT (y).order_id FROM unnest(live) y)
     ORDER BY x.id
       FOR UPDATE OF x;

    BEGIN
        t := mpqr.apply_outcomes(live, outs, false);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE;
        IF mpqr.database_trouble(code) THEN
            RAISE;
        END IF;
        t := mpqr.apply_outcomes(live, outs, true);
    END;

    UPDATE mpqr.requests q
       SET state = tr.state,
           phase = tr.phase,
           not_before = CASE WHEN tr.state = 'queued' THEN now() + coalesce(tr.delay, '0') ELSE q.not_before END,
           failures = q.failures + CASE WHEN tr.failure THEN 1 ELSE 0 END,
           http_status = tr.http_status,
           response = tr.response,
           error = tr.error,
           lease_until = NULL,
           lease_owner = NULL,
           finished_at = CASE WHEN tr.state IN ('done', 'failed') THEN now() END
      FROM unnest(t) tr
     WHERE q.id = tr.id;
    -- what may now be claimed: the next request of a serial key, a phase
    PERFORM mpqr.wake_sender_at_commit();
END
$$;
