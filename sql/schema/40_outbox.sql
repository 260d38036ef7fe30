-- The outbox of API requests, drained by the sender background worker, and
-- the state of its periodic duties.  The life cycle of a request is written
-- in sql/code/30_outbox.sql.

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
    -- 0.2.0
    lease_owner     bigint,
    main_sent_at    timestamptz,
    CONSTRAINT requests_state_check CHECK (state IN ('queued', 'inflight', 'done', 'failed', 'cancelled')),
    CONSTRAINT requests_kind_check CHECK (kind IN (
        'publish', 'cancel', 'refund', 'create_store', 'create_pos',
        'fetch_merchant_order', 'fetch_payment', 'fetch_order', 'fetch_chargeback',
        'search_merchant_orders', 'search_payments', 'check_token')),
    CONSTRAINT requests_phase_check CHECK (phase IN (
        'check_pos', 'check_paid', 'check_paid_keep', 'fetch_order', 'adopt', 'check_refund')),
    CONSTRAINT requests_purpose_check CHECK (purpose IN ('cancel', 'supersede', 'expire'))
);
COMMENT ON TABLE mpqr.requests IS 'Outbox of Mercado Pago API requests, drained by the mpqr sender worker';
COMMENT ON COLUMN mpqr.requests.subject IS 'What the request is about: the POS, the resource id, or the store or POS external id';
COMMENT ON COLUMN mpqr.requests.serial_key IS 'Requests with the same key are sent one at a time, in id order';
COMMENT ON COLUMN mpqr.requests.attempts IS 'Times claimed; also the token that ties an outcome to its attempt';
COMMENT ON COLUMN mpqr.requests.failures IS 'Retryable failures so far; mpqr.max_attempts bounds those of the kinds that may give up';
COMMENT ON COLUMN mpqr.requests.purpose IS 'Why a cancel was sent: cancel, supersede or expire';
COMMENT ON COLUMN mpqr.requests.phase IS 'A check or follow-up step that replaces the main request until it is done';
COMMENT ON COLUMN mpqr.requests.lease_owner IS 'The sender incarnation that holds the lease: a request held by a dead one is recovered at once';
COMMENT ON COLUMN mpqr.requests.main_sent_at IS 'When the main request (not a check phase) was last sent: until it may have reached Mercado Pago, a check that finds nothing looks again';
REVOKE ALL ON TABLE mpqr.requests FROM PUBLIC;

-- The claim walks what is queued in the order it becomes due; the same index
-- tells when the next delayed request is due.  Expired leases and the
-- requests of a dead sender have their own path.
CREATE INDEX requests_due ON mpqr.requests (not_before, id) WHERE state = 'queued';
CREATE INDEX requests_inflight ON mpqr.requests (lease_until) WHERE state = 'inflight';
CREATE INDEX requests_serial ON mpqr.requests (serial_key, id)
    WHERE state IN ('queued', 'inflight') AND serial_key IS NOT NULL;
CREATE INDEX requests_order ON mpqr.requests (order_id, id) WHERE order_id IS NOT NULL;
-- the latest fetch of a resource: coalescing and debouncing
CREATE INDEX requests_fetch_latest ON mpqr.requests (account, kind, subject, id)
    WHERE kind IN ('fetch_merchant_order', 'fetch_payment', 'fetch_order', 'fetch_chargeback',
                   'search_merchant_orders', 'search_payments', 'check_token');
CREATE INDEX requests_finished ON mpqr.requests (finished_at) WHERE state IN ('done', 'failed', 'cancelled');

-- What the sender worker and the SQL hand each other (src/outbox_sql.c).
CREATE TYPE mpqr.claimed_request AS (
    id              bigint,
    attempt         integer,
    method          text,       -- NULL: nothing to send, record it as skipped
    path            text,
    body            text,
    token           text,
    idempotency_key text,
    headers         text[]      -- extra "Name: value" lines
);
COMMENT ON TYPE mpqr.claimed_request IS 'A request the sender must send now, as mpqr.claim_requests() returns it';

CREATE TYPE mpqr.request_outcome AS (
    id              bigint,
    attempt         integer,
    http_status     integer,    -- 0 for a network error, -1 when nothing was sent
    body            text,
    error           text,
    retry_after     integer     -- seconds of Retry-After, NULL when absent
);
COMMENT ON TYPE mpqr.request_outcome IS 'What became of a claimed request, as the sender hands it to mpqr.record_responses()';

-- What the recording decides for one request (sql/code/30_outbox.sql); the
-- transitions of a batch are written in one statement, after every other
-- effect of the batch.
CREATE TYPE mpqr.request_transition AS (
    id              bigint,
    state           text,       -- done, failed, or queued again
    phase           text,       -- the phase it is queued in (NULL: the main request)
    delay           interval,   -- not before now() plus this
    http_status     integer,
    response        text,
    error           text,
    failure         boolean     -- counts as a retryable failure
);

-- When the periodic duties that do not run on every tick last ran.  The
-- rows are made when a duty first runs, never by this script: pg_dump keeps
-- the table, and a restore would collide with rows made here.
CREATE TABLE mpqr.timers (
    name        text PRIMARY KEY,
    last_run    timestamptz NOT NULL
);
REVOKE ALL ON TABLE mpqr.timers FROM PUBLIC;

-- The catch-up of each account: a paged /v1/payments/search by
-- date_last_updated over a moving window finds the payments, refunds and
-- chargebacks that notifications missed.
CREATE TABLE mpqr.catchups (
    account         text PRIMARY KEY REFERENCES mpqr.accounts (name) ON UPDATE CASCADE ON DELETE CASCADE,
    covered_until   timestamptz,
    window_begin    timestamptz,
    window_end      timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz,
    pages           integer NOT NULL DEFAULT 0,
    found           integer NOT NULL DEFAULT 0,
    error           text
);
COMMENT ON TABLE mpqr.catchups IS 'Per account: how far the payments search has looked, and the window it is looking at';
COMMENT ON COLUMN mpqr.catchups.covered_until IS 'Every payment updated before this was seen (less the overlap)';
REVOKE ALL ON TABLE mpqr.catchups FROM PUBLIC;
