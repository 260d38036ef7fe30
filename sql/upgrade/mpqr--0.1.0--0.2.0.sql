-- mpqr upgrade from 0.1.0 to 0.2.0: the schema step.  The build appends
-- every file of sql/code/ to it, which makes all functions, views and
-- privileges anew.  test/integration/test_operations.py checks that the result
-- matches a fresh install of 0.2.0, catalog for catalog, and that the data
-- survives.
\echo Use "ALTER EXTENSION mpqr UPDATE TO '0.2.0'" to load this file. \quit

-- Grants that the DBA made on the API functions outlive their recreation:
-- they are kept here and given again at the end (sql/code/90_privileges.sql).
CREATE TEMP TABLE mpqr_saved_grants ON COMMIT DROP AS
SELECT p.proname::text AS function_name, a.grantee::regrole::text AS grantee
  FROM pg_catalog.pg_proc p
  JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid
                             AND d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e'
  JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND e.extname = 'mpqr'
  CROSS JOIN LATERAL pg_catalog.aclexplode(p.proacl) a
 WHERE p.proname LIKE 'mpqr\_%' AND a.privilege_type = 'EXECUTE'
   AND a.grantee <> p.proowner AND a.grantee <> 0;

-- Every function, view and trigger of 0.1.0 goes; sql/code/ makes them again.
DROP TRIGGER notifications_queue_fetch ON mpqr.notifications;
DROP VIEW mpqr.pos_qr;
DROP VIEW mpqr.anomalies_open;
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT d.objid::regprocedure
               FROM pg_catalog.pg_depend d
               JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND e.extname = 'mpqr'
              WHERE d.classid = 'pg_catalog.pg_proc'::regclass
                AND d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e'
    LOOP
        EXECUTE pg_catalog.format('DROP FUNCTION %s', f);
    END LOOP;
END
$$;

-- accounts: where each was configured (a restored copy sends nothing)
ALTER TABLE mpqr.accounts ADD COLUMN origin_system bigint, ADD COLUMN origin_database text;
UPDATE mpqr.accounts
   SET origin_system = (pg_catalog.pg_control_system()).system_identifier,
       origin_database = pg_catalog.current_database();
ALTER TABLE mpqr.accounts ALTER COLUMN origin_system SET NOT NULL,
                          ALTER COLUMN origin_database SET NOT NULL;
COMMENT ON COLUMN mpqr.accounts.origin_system IS 'System identifier of the cluster where the account was configured';
COMMENT ON COLUMN mpqr.accounts.origin_database IS 'Database where the account was configured';

-- orders: QR modes of the Orders API
ALTER TABLE mpqr.orders ADD COLUMN mode text NOT NULL DEFAULT 'static', ADD COLUMN qr_data text,
    ADD CONSTRAINT orders_mode_check CHECK (mode IN ('static', 'dynamic', 'hybrid'));
CREATE INDEX orders_published_checked ON mpqr.orders (last_checked_at NULLS FIRST, id)
    WHERE status = 'published';
COMMENT ON COLUMN mpqr.orders.mode IS 'QR mode of the Orders API: static (the POS''s printed QR), dynamic or hybrid';
COMMENT ON COLUMN mpqr.orders.qr_data IS 'The EMVCo string of a dynamic or hybrid order, for the POS to show as a QR';
CREATE TYPE mpqr.order_move AS (
    order_id    bigint,
    status      text,
    reason      text,
    detail      jsonb
);

-- refunds in process (Pix)
ALTER TABLE mpqr.refunds DROP CONSTRAINT refunds_status_check,
    ADD CONSTRAINT refunds_status_check CHECK (status IN ('queued', 'processing', 'in_process', 'approved',
                                                          'processed', 'rejected', 'failed'));
COMMENT ON COLUMN mpqr.refunds.status IS 'queued (not sent yet), processing or in_process (Mercado Pago is still doing it: the amount stays reserved), approved or processed (done), rejected (refused)';

-- requests: leases of an incarnation, the new kinds, checks on phase and purpose
ALTER TABLE mpqr.requests ADD COLUMN lease_owner bigint, ADD COLUMN main_sent_at timestamptz,
    DROP CONSTRAINT requests_kind_check,
    ADD CONSTRAINT requests_kind_check CHECK (kind IN (
        'publish', 'cancel', 'refund', 'create_store', 'create_pos',
        'fetch_merchant_order', 'fetch_payment', 'fetch_order', 'fetch_chargeback',
        'search_merchant_orders', 'search_payments', 'check_token')),
    ADD CONSTRAINT requests_phase_check CHECK (phase IN (
        'check_pos', 'check_paid', 'check_paid_keep', 'fetch_order', 'adopt', 'check_refund')),
    ADD CONSTRAINT requests_purpose_check CHECK (purpose IN ('cancel', 'supersede', 'expire'));
COMMENT ON COLUMN mpqr.requests.failures IS 'Retryable failures so far; mpqr.max_attempts bounds those of the kinds that may give up';
COMMENT ON COLUMN mpqr.requests.lease_owner IS 'The sender incarnation that holds the lease: a request held by a dead one is recovered at once';
COMMENT ON COLUMN mpqr.requests.main_sent_at IS 'When the main request (not a check phase) was last sent: until it may have reached Mercado Pago, a check that finds nothing looks again';
DROP INDEX mpqr.requests_queued;
DROP INDEX mpqr.requests_pending_fetch;
DROP INDEX mpqr.requests_order;
CREATE INDEX requests_order ON mpqr.requests (order_id, id) WHERE order_id IS NOT NULL;
CREATE INDEX requests_due ON mpqr.requests (not_before, id) WHERE state = 'queued';
CREATE INDEX requests_fetch_latest ON mpqr.requests (account, kind, subject, id)
    WHERE kind IN ('fetch_merchant_order', 'fetch_payment', 'fetch_order', 'fetch_chargeback',
                   'search_merchant_orders', 'search_payments', 'check_token');
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

-- the catch-up by payments search
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

-- notifications: no trigger any more (a restore queues nothing); new verdicts
ALTER TABLE mpqr.notifications DROP CONSTRAINT notifications_signature_check,
    ADD CONSTRAINT notifications_signature_check
        CHECK (signature IN ('valid', 'stale', 'invalid', 'unsigned', 'unverified')),
    DROP CONSTRAINT notifications_triggered_check,
    ADD CONSTRAINT notifications_triggered_check
        CHECK (triggered IN ('queued', 'coalesced', 'debounced', 'rate_limited', 'ignored', 'nothing'));
COMMENT ON COLUMN mpqr.notifications.headers IS 'The request headers of an allow-list, lowercased name to value';
COMMENT ON COLUMN mpqr.notifications.signature IS 'valid, stale (valid but old), invalid, unsigned (a webhook without x-signature for an account with a secret), or unverified (nothing to verify: an IPN, or an account without webhook_secret)';
COMMENT ON COLUMN mpqr.notifications.triggered IS 'What the notification asked of the outbox: queued, coalesced (a fetch was pending), debounced (a fetch ran moments ago: one more follows), rate_limited, ignored; nothing when no fetch was asked';
COMMENT ON COLUMN mpqr.notifications.fetch_request IS 'The fetch in mpqr.requests that this notification queued or joined';

-- money: claims are anomalies too
ALTER TABLE mpqr.anomalies DROP CONSTRAINT anomalies_kind_check,
    ADD CONSTRAINT anomalies_kind_check CHECK (kind IN ('late_payment', 'double_payment', 'amount_mismatch',
                                                        'shortfall', 'chargeback', 'mediation', 'claim'));
COMMENT ON TABLE mpqr.merchant_orders IS 'Every merchant order fetched from Mercado Pago (instore)';

-- pg_dump keeps every table now
SELECT pg_catalog.pg_extension_config_dump('mpqr.timers', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.catchups', '');
