-- The outbox of API requests, drained by the sender background worker.
--
-- The sender only moves bytes: it calls mpqr.claim_requests() in one short
-- transaction, performs the HTTP requests with no transaction open, and hands
-- the outcomes to mpqr.record_responses() in one transaction.  What to send,
-- how to read an answer, retries, backoff and pausing live here.
--
-- Life of a request: queued -> inflight (claimed, with a lease) -> done, or
-- failed (final), or back to queued (retry, or an account paused by a 401).
-- A request whose lease expired may have been sent: it is queued again, and
-- the kinds for which a blind re-send is unsafe first go through a check
-- phase (see mpqr.request_target()).  Requests with the same serial_key (the
-- POS) go one at a time, in id order; mpqr_put_order() locks the POS, so id
-- order is commit order.

CREATE TABLE mpqr.requests (
    id              bigserial PRIMARY KEY,
    account         text NOT NULL REFERENCES mpqr.accounts (name) ON UPDATE CASCADE,
    kind            text NOT NULL,
    subject         text,
    serial_key      text,
    order_id        bigint,
    method          text NOT NULL,
    path            text,
    body            text,
    idempotency_key text,
    phase           text,
    purpose         text,
    refund_id       bigint,
    state           text NOT NULL DEFAULT 'queued',
    attempts        integer NOT NULL DEFAULT 0,
    failures        integer NOT NULL DEFAULT 0,
    not_before      timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    finished_at     timestamptz,
    http_status     integer,
    response        text,
    error           text,
    CONSTRAINT requests_state_check CHECK (state IN ('queued', 'inflight', 'done', 'failed', 'cancelled')),
    CONSTRAINT requests_kind_check CHECK (kind IN (
        'publish', 'cancel', 'fetch_merchant_order', 'fetch_payment', 'fetch_order',
        'search_merchant_orders', 'refund', 'create_store', 'create_pos'))
);
COMMENT ON TABLE mpqr.requests IS 'Outbox of Mercado Pago API requests, drained by the mpqr sender worker';
COMMENT ON COLUMN mpqr.requests.subject IS 'What the request is about: the POS, the resource id, or the store or POS external id';
COMMENT ON COLUMN mpqr.requests.serial_key IS 'Requests with the same key are sent one at a time, in id order';
COMMENT ON COLUMN mpqr.requests.attempts IS 'Times claimed; also the token that ties an outcome to its attempt';
COMMENT ON COLUMN mpqr.requests.failures IS 'Retryable failures so far; mpqr.max_attempts bounds them';
COMMENT ON COLUMN mpqr.requests.purpose IS 'Why a cancel was sent: cancel, supersede or expire';
COMMENT ON COLUMN mpqr.requests.phase IS 'A check or follow-up step that replaces the main request until it is done';
REVOKE ALL ON TABLE mpqr.requests FROM PUBLIC;

-- The claim walks only what is queued; expired leases have their own path.
CREATE INDEX requests_queued ON mpqr.requests (id) WHERE state = 'queued';
CREATE INDEX requests_inflight ON mpqr.requests (lease_until) WHERE state = 'inflight';
CREATE INDEX requests_serial ON mpqr.requests (serial_key, id)
    WHERE state IN ('queued', 'inflight') AND serial_key IS NOT NULL;
CREATE INDEX requests_order ON mpqr.requests (order_id) WHERE order_id IS NOT NULL;
CREATE INDEX requests_pending_fetch ON mpqr.requests (account, kind, subject)
    WHERE state = 'queued'
      AND kind IN ('fetch_merchant_order', 'fetch_payment', 'fetch_order', 'search_merchant_orders');
CREATE INDEX requests_finished ON mpqr.requests (finished_at) WHERE state IN ('done', 'failed', 'cancelled');

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
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT account || '/' || pos_id $$;

-- Paths of the instore (QR attended v2) API.
CREATE FUNCTION mpqr.instore_pos_path(collector_id bigint, pos_id text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT '/instore/qr/seller/collectors/' || collector_id || '/pos/'
           || pg_catalog.replace(pos_id, '/', '%2F') || '/orders'
$$;

CREATE FUNCTION mpqr.instore_store_pos_path(collector_id bigint, store_id text, pos_id text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT '/instore/qr/seller/collectors/' || collector_id || '/stores/'
           || pg_catalog.replace(store_id, '/', '%2F') || '/pos/'
           || pg_catalog.replace(pos_id, '/', '%2F') || '/orders'
$$;

-- Percent-encode a query-string value.
CREATE FUNCTION mpqr.urlencode(value text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT string_agg(CASE WHEN b ~ '^[A-Za-z0-9_.~-]$' THEN b
                           ELSE upper(regexp_replace(encode(convert_to(b, 'UTF8'), 'hex'), '(..)', '%\1', 'g'))
                      END, '' ORDER BY i)
    FROM regexp_split_to_table(value, '') WITH ORDINALITY AS t(b, i)
$$;

-- A fetch's path, by kind and the id of its resource.
CREATE FUNCTION mpqr.fetch_path(kind text, resource_id text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT CASE kind
        WHEN 'fetch_merchant_order' THEN '/merchant_orders/' || mpqr.urlencode(resource_id)
        WHEN 'fetch_payment' THEN '/v1/payments/' || mpqr.urlencode(resource_id)
        WHEN 'fetch_order' THEN '/v1/orders/' || mpqr.urlencode(resource_id)
        WHEN 'search_merchant_orders' THEN '/merchant_orders/search?external_reference=' || mpqr.urlencode(resource_id)
    END
$$;

-- Has mpqr seen this resource before?  Fetches of resources it does not
-- know share one global rate limit (mpqr.unknown_fetch_rate per second), so
-- that notifications cannot buy an attacker unlimited API calls.  The token
-- buckets live in shared memory, so that the listener and the sender never
-- wait for each other on them.  mpqr.known_resource() is defined with the
-- reconciliation tables.
CREATE FUNCTION mpqr.take_token(bucket text, rate double precision) RETURNS boolean
AS 'MODULE_PATHNAME', 'mpqr_take_token'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;

-- True the first time it is called with this flag since the server started.
CREATE FUNCTION mpqr.warn_once(flag integer) RETURNS boolean
AS 'MODULE_PATHNAME', 'mpqr_warn_once'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;

-- When the periodic duties that do not run on every tick last ran.
CREATE TABLE mpqr.timers (
    name        text PRIMARY KEY,
    last_run    timestamptz NOT NULL
);
REVOKE ALL ON TABLE mpqr.timers FROM PUBLIC;
INSERT INTO mpqr.timers VALUES ('purge', 'epoch');

-- Queue a fetch of a merchant order, payment or order, unless one for the same
-- resource is still queued (only pending fetches are coalesced: a fetch
-- already sent may have read the state before the change now notified).
-- Returns what it did: queued, coalesced, rate_limited or ignored.  A fetch
-- that mpqr itself needs (trusted: a follow-up of an answer, a check of its
-- own order) is never rate limited.
CREATE FUNCTION mpqr.queue_fetch(account text, resource text, resource_id text,
                                 notification_id bigint DEFAULT NULL,
                                 rate_limited boolean DEFAULT false,
                                 trusted boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    k text := CASE resource WHEN 'merchant_order' THEN 'fetch_merchant_order'
                            WHEN 'payment' THEN 'fetch_payment'
                            WHEN 'order' THEN 'fetch_order'
                            WHEN 'search' THEN 'search_merchant_orders' END;
BEGIN
    IF account IS NULL OR k IS NULL OR resource_id IS NULL OR resource_id = ''
       OR length(resource_id) > 128 THEN
        RETURN 'ignored';
    END IF;
    IF resource IN ('merchant_order', 'payment') AND resource_id !~ '^[0-9]{1,20}$' THEN
        RETURN 'ignored';
    END IF;
    PERFORM 1 FROM mpqr.requests r
     WHERE r.state = 'queued' AND r.kind = k AND r.account = queue_fetch.account
       AND r.subject = resource_id
       AND r.kind IN ('fetch_merchant_order', 'fetch_payment', 'fetch_order', 'search_merchant_orders')
     LIMIT 1;
    IF FOUND THEN
        RETURN 'coalesced';
    END IF;
    IF NOT trusted
       AND (rate_limited OR NOT mpqr.known_resource(account, resource, resource_id))
       AND NOT mpqr.take_token('unknown_fetch', mpqr.setting('unknown_fetch_rate', '10')::double precision) THEN
        RETURN 'rate_limited';
    END IF;
    PERFORM mpqr.enqueue(account, k, 'GET', mpqr.fetch_path(k, resource_id), subject => resource_id);
    RETURN 'queued';
END
$$;
