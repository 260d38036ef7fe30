-- mpqr install script, assembled at build time from sql/install/*.sql in name order.
\echo Use "CREATE EXTENSION mpqr" to load this file. \quit

-- The extension's data lives in schema mpqr.  Its API functions (mpqr_*) live
-- in the schema the extension is created in, public by default.  Tables that
-- hold secrets are never readable by PUBLIC; the API functions run as the
-- extension's owner (SECURITY DEFINER, with a pinned search_path) and are
-- granted to application roles by the DBA (see README).
CREATE SCHEMA mpqr;
COMMENT ON SCHEMA mpqr IS 'Mercado Pago in-store QR payments: data of the mpqr extension';

-- Small immutable helpers shared by every concern.

-- Currency of a Mercado Pago site.
CREATE FUNCTION mpqr.site_currency(site_id text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT CASE site_id
        WHEN 'MLA' THEN 'ARS' WHEN 'MLB' THEN 'BRL' WHEN 'MLM' THEN 'MXN'
        WHEN 'MLU' THEN 'UYU' WHEN 'MLC' THEN 'CLP' WHEN 'MCO' THEN 'COP'
        WHEN 'MPE' THEN 'PEN' END
$$;

-- Does this currency take integer amounts only (Chile and Colombia)?
CREATE FUNCTION mpqr.integer_currency(currency text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT currency IN ('CLP', 'COP') $$;

-- An amount as Mercado Pago's Orders API wants it: a string with two decimals,
-- or none for currencies without decimals.
CREATE FUNCTION mpqr.amount_text(amount numeric, currency text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT CASE WHEN mpqr.integer_currency(currency)
                THEN trim(to_char(amount, 'FM999999999999990'))
                ELSE trim(to_char(amount, 'FM999999999999990.00')) END
$$;

-- A setting of mpqr, with its default when the library is not loaded in this
-- session (current_setting would fail on an unknown name).
CREATE FUNCTION mpqr.setting(name text, fallback text) RETURNS text
LANGUAGE sql STABLE STRICT PARALLEL SAFE
AS $$ SELECT coalesce(nullif(pg_catalog.current_setting('mpqr.' || name, true), ''), fallback) $$;

-- A time setting of mpqr as an interval (current_setting shows it with its
-- unit, such as 15min or 200ms; a bare number is taken as seconds).
CREATE FUNCTION mpqr.setting_interval(name text, fallback text) RETURNS interval
LANGUAGE sql STABLE STRICT PARALLEL SAFE
AS $$
    SELECT CASE WHEN v ~ '^[0-9]+$' THEN (v || ' s')::interval ELSE v::interval END
    FROM (SELECT mpqr.setting(name, fallback) AS v) s
$$;
-- Accounts: the Mercado Pago collectors (merchants) this database serves.

CREATE TABLE mpqr.accounts (
    name            text PRIMARY KEY,
    collector_id    bigint NOT NULL UNIQUE,
    access_token    text NOT NULL,
    webhook_secret  text,
    site_id         text NOT NULL,
    api             text NOT NULL,
    is_default      boolean NOT NULL DEFAULT false,
    paused_at       timestamptz,
    pause_reason    text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT accounts_name_check CHECK (name ~ '^[A-Za-z0-9_-]{1,64}$'),
    CONSTRAINT accounts_collector_check CHECK (collector_id > 0),
    CONSTRAINT accounts_site_check CHECK (site_id IN ('MLA', 'MLB', 'MLM', 'MLU', 'MLC', 'MCO', 'MPE')),
    CONSTRAINT accounts_api_check CHECK (api IN ('instore', 'orders'))
);
CREATE UNIQUE INDEX accounts_one_default ON mpqr.accounts (is_default) WHERE is_default;
COMMENT ON TABLE mpqr.accounts IS 'Mercado Pago accounts (collectors); holds access tokens, never readable by PUBLIC';
REVOKE ALL ON TABLE mpqr.accounts FROM PUBLIC;

-- Raise a clear error unless the argument is given.
CREATE FUNCTION mpqr.require(value anyelement, what text) RETURNS anyelement
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    IF value IS NULL THEN
        RAISE EXCEPTION '% must not be null', what
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    RETURN value;
END
$$;

-- Check the fields of an account; used by add and set.
CREATE FUNCTION mpqr.check_account(name text, collector_id bigint, access_token text,
                                   site_id text, api text) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    IF name !~ '^[A-Za-z0-9_-]{1,64}$' THEN
        RAISE EXCEPTION 'invalid account name "%"', name
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Account names have 1 to 64 letters, digits, "-" or "_"; they appear in notification URLs.';
    END IF;
    IF collector_id <= 0 THEN
        RAISE EXCEPTION 'invalid collector_id %', collector_id
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'The collector_id is the Mercado Pago user id of the seller, a positive number.';
    END IF;
    IF access_token = '' OR access_token ~ '\s' THEN
        RAISE EXCEPTION 'invalid access token'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'An access token is a non-empty string without spaces.';
    END IF;
    IF site_id NOT IN ('MLA', 'MLB', 'MLM', 'MLU', 'MLC', 'MCO', 'MPE') THEN
        RAISE EXCEPTION 'invalid site_id "%"', site_id
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use one of MLA, MLB, MLM, MLU, MLC, MCO, MPE.';
    END IF;
    IF api NOT IN ('instore', 'orders') THEN
        RAISE EXCEPTION 'invalid api "%"', api
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use "instore" (QR attended v2) or "orders" (the Orders API).';
    END IF;
END
$$;

-- mpqr_add_account(name, collector_id, access_token, webhook_secret, site_id, api)
-- Add a Mercado Pago account.  The first account becomes the default one.
CREATE FUNCTION mpqr_add_account(name text, collector_id bigint, access_token text,
                                 webhook_secret text DEFAULT NULL,
                                 site_id text DEFAULT 'MLA',
                                 api text DEFAULT 'instore')
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM mpqr.require(name, 'name');
    PERFORM mpqr.require(collector_id, 'collector_id');
    PERFORM mpqr.require(access_token, 'access_token');
    PERFORM mpqr.require(site_id, 'site_id');
    PERFORM mpqr.require(api, 'api');
    -- a token or secret read from a file comes with its newline
    access_token := btrim(access_token, E' \t\r\n');
    webhook_secret := btrim(webhook_secret, E' \t\r\n');
    PERFORM mpqr.check_account(name, collector_id, access_token, site_id, api);
    IF EXISTS (SELECT 1 FROM mpqr.accounts a WHERE a.name = mpqr_add_account.name) THEN
        RAISE EXCEPTION 'account "%" already exists', name
            USING ERRCODE = 'unique_violation',
                  HINT = 'Use mpqr_set_account() to change it.';
    END IF;
    IF EXISTS (SELECT 1 FROM mpqr.accounts a WHERE a.collector_id = mpqr_add_account.collector_id) THEN
        RAISE EXCEPTION 'collector % already belongs to another account', collector_id
            USING ERRCODE = 'unique_violation';
    END IF;
    INSERT INTO mpqr.accounts (name, collector_id, access_token, webhook_secret, site_id, api, is_default)
    VALUES (name, collector_id, access_token, nullif(webhook_secret, ''), site_id, api,
            NOT EXISTS (SELECT 1 FROM mpqr.accounts));
END
$$;

-- mpqr_set_account(name, collector_id, access_token, webhook_secret, site_id, api, is_default)
-- Change an account; arguments left NULL keep their value, and an empty
-- webhook_secret removes the secret.  It also resumes an account that a 401
-- or 403 paused, and takes effect without a restart.
CREATE FUNCTION mpqr_set_account(name text, collector_id bigint DEFAULT NULL,
                                 access_token text DEFAULT NULL,
                                 webhook_secret text DEFAULT NULL,
                                 site_id text DEFAULT NULL,
                                 api text DEFAULT NULL,
                                 is_default boolean DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a mpqr.accounts;
BEGIN
    PERFORM mpqr.require(name, 'name');
    SELECT * INTO a FROM mpqr.accounts x WHERE x.name = mpqr_set_account.name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account "%" does not exist', name
            USING ERRCODE = 'undefined_object';
    END IF;
    a.collector_id := coalesce(collector_id, a.collector_id);
    a.access_token := coalesce(btrim(access_token, E' \t\r\n'), a.access_token);
    webhook_secret := btrim(webhook_secret, E' \t\r\n');
    a.site_id := coalesce(site_id, a.site_id);
    a.api := coalesce(api, a.api);
    PERFORM mpqr.check_account(a.name, a.collector_id, a.access_token, a.site_id, a.api);
    IF is_default THEN
        UPDATE mpqr.accounts x SET is_default = false WHERE x.is_default AND x.name <> a.name;
    END IF;
    UPDATE mpqr.accounts x
       SET collector_id = a.collector_id,
           access_token = a.access_token,
           webhook_secret = CASE WHEN mpqr_set_account.webhook_secret IS NULL THEN x.webhook_secret
                                 ELSE nullif(mpqr_set_account.webhook_secret, '') END,
           site_id = a.site_id,
           api = a.api,
           is_default = coalesce(mpqr_set_account.is_default, x.is_default),
           paused_at = NULL,
           pause_reason = NULL,
           updated_at = now()
     WHERE x.name = a.name;
    IF a.paused_at IS NOT NULL THEN
        RAISE NOTICE 'account "%" resumed', a.name;
    END IF;
    PERFORM mpqr.wake_sender_at_commit();
END
$$;

-- The account to use: the one named, else the default one.
CREATE FUNCTION mpqr.account_or_default(name text) RETURNS mpqr.accounts
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
DECLARE
    a mpqr.accounts;
BEGIN
    IF name IS NULL THEN
        SELECT * INTO a FROM mpqr.accounts WHERE is_default;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'no Mercado Pago account is defined'
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Add one with mpqr_add_account().';
        END IF;
    ELSE
        SELECT * INTO a FROM mpqr.accounts x WHERE x.name = account_or_default.name;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'account "%" does not exist', name
                USING ERRCODE = 'undefined_object';
        END IF;
    END IF;
    RETURN a;
END
$$;

-- Set the sender's latch when the calling transaction commits.
CREATE FUNCTION mpqr.wake_sender_at_commit() RETURNS void
AS 'MODULE_PATHNAME', 'mpqr_wake_sender_at_commit'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
-- Stores and points of sale (POS), with the ids and QR links Mercado Pago gave them.

CREATE TABLE mpqr.stores (
    account         text NOT NULL REFERENCES mpqr.accounts (name) ON UPDATE CASCADE,
    external_id     text NOT NULL,
    name            text,
    location        jsonb,
    business_hours  jsonb,
    mp_store_id     text,
    status          text NOT NULL,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, external_id),
    CONSTRAINT stores_status_check CHECK (status IN ('queued', 'created', 'linked', 'failed'))
);
COMMENT ON TABLE mpqr.stores IS 'Stores of each account; mp_store_id is Mercado Pago''s id once created';

CREATE TABLE mpqr.pos (
    external_id          text PRIMARY KEY,
    account              text NOT NULL REFERENCES mpqr.accounts (name) ON UPDATE CASCADE,
    store_external_id    text NOT NULL,
    name                 text NOT NULL,
    category             integer,
    status               text NOT NULL,
    mp_pos_id            bigint,
    mp_store_id          text,
    uuid                 text,
    qr                   jsonb,
    qr_image             text,
    qr_template_document text,
    qr_template_image    text,
    qr_code              text,
    error                text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pos_status_check CHECK (status IN ('queued', 'created', 'linked', 'failed'))
);
COMMENT ON TABLE mpqr.pos IS 'Points of sale: the POS external id is the pos_id of mpqr_put_order()';
COMMENT ON COLUMN mpqr.pos.qr IS 'The qr object Mercado Pago returned (image, template_document, template_image)';

-- Check the fields Mercado Pago validates on a POS.
CREATE FUNCTION mpqr.check_pos(external_pos_id text, name text) RETURNS void
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
AS $$
BEGIN
    IF external_pos_id !~ '^[A-Za-z0-9]{1,39}$' THEN
        RAISE EXCEPTION 'invalid POS external id "%"', external_pos_id
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Mercado Pago takes 1 to 39 letters or digits, without spaces, "-" or "_".';
    END IF;
    IF name = '' OR length(name) >= 45 THEN
        RAISE EXCEPTION 'invalid POS name "%"', name
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Mercado Pago takes a non-empty name of fewer than 45 characters.';
    END IF;
END
$$;
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
-- Orders: mpqr_put_order(), the state machine, and the outcome of a publish.

CREATE TABLE mpqr.orders (
    id                  bigserial PRIMARY KEY,
    account             text NOT NULL REFERENCES mpqr.accounts (name) ON UPDATE CASCADE,
    external_reference  text NOT NULL,
    pos_id              text NOT NULL REFERENCES mpqr.pos (external_id) ON UPDATE CASCADE,
    total_amount        numeric NOT NULL,
    currency            text NOT NULL,
    title               text NOT NULL,
    description         text NOT NULL,
    items               jsonb NOT NULL,
    expires_in          interval NOT NULL,
    expires_at          timestamptz NOT NULL,
    status              text NOT NULL DEFAULT 'queued',
    status_reason       text,
    paid_amount         numeric NOT NULL DEFAULT 0,
    refunded_amount     numeric NOT NULL DEFAULT 0,
    mp_order_id         text,
    previous_mp_order_ids text[],
    idempotency_key     text NOT NULL,
    attempt             integer NOT NULL DEFAULT 1,
    error               text,
    error_body          jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    attempt_at          timestamptz NOT NULL DEFAULT now(),
    published_at        timestamptz,
    paid_at             timestamptz,
    closed_at           timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    last_checked_at     timestamptz,
    UNIQUE (account, external_reference),
    CONSTRAINT orders_status_check CHECK (status IN ('queued', 'published', 'paid', 'cancelled',
                                                     'expired', 'failed', 'refunded'))
);
CREATE INDEX orders_pos_open ON mpqr.orders (pos_id) WHERE status IN ('queued', 'published');
CREATE INDEX orders_reference ON mpqr.orders (external_reference);
CREATE INDEX orders_mp_order_id ON mpqr.orders (mp_order_id) WHERE mp_order_id IS NOT NULL;
CREATE INDEX orders_previous_mp_order_ids ON mpqr.orders USING gin (previous_mp_order_ids)
    WHERE previous_mp_order_ids IS NOT NULL;
-- expiry and the sweep walk only what is open, or still watched for late money
CREATE INDEX orders_open ON mpqr.orders (expires_at) WHERE status IN ('queued', 'published');
CREATE INDEX orders_watched ON mpqr.orders ((greatest(expires_at, closed_at)))
    WHERE status IN ('cancelled', 'expired');
COMMENT ON TABLE mpqr.orders IS 'Orders put on a POS QR, with their status and the money Mercado Pago confirmed';
COMMENT ON COLUMN mpqr.orders.mp_order_id IS 'The Orders API id, or the merchant order that paid it (instore)';
COMMENT ON COLUMN mpqr.orders.previous_mp_order_ids IS 'Orders API ids of earlier attempts, still watched for late money';
COMMENT ON COLUMN mpqr.orders.status_reason IS 'Why the status was reached: superseded, cancelled, rejected, ...';

CREATE TABLE mpqr.order_events (
    id          bigserial PRIMARY KEY,
    order_id    bigint NOT NULL REFERENCES mpqr.orders (id) ON DELETE CASCADE,
    from_status text,
    to_status   text NOT NULL,
    reason      text,
    detail      jsonb,
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX order_events_order ON mpqr.order_events (order_id, id);
COMMENT ON TABLE mpqr.order_events IS 'Status history of the orders: one row per transition';

-- Rank of a status: a status only moves to a higher rank.  Money that
-- Mercado Pago confirmed (paid, refunded) outranks everything.
CREATE FUNCTION mpqr.status_rank(status text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT CASE status
        WHEN 'queued' THEN 0 WHEN 'published' THEN 1
        WHEN 'cancelled' THEN 2 WHEN 'expired' THEN 2 WHEN 'failed' THEN 2
        WHEN 'paid' THEN 3 WHEN 'refunded' THEN 4 END
$$;

-- Announce an order on channel mpqr_order.
CREATE FUNCTION mpqr.notify_order(o mpqr.orders) RETURNS void
LANGUAGE sql VOLATILE PARALLEL UNSAFE
AS $$
    SELECT pg_notify('mpqr_order', jsonb_build_object(
        'external_reference', o.external_reference,
        'status', o.status,
        'reason', o.status_reason,
        'paid_amount', o.paid_amount,
        'refunded_amount', o.refunded_amount,
        'total_amount', o.total_amount,
        'currency', o.currency,
        'pos_id', o.pos_id,
        'account', o.account,
        'order_id', o.id)::text)
$$;

-- Move an order to a new status, if that moves it forward: records the
-- event and sends the NOTIFY.  Returns whether it moved.  new_attempt allows
-- the one backward move, from a final status to queued (mpqr_retry_order).
CREATE FUNCTION mpqr.set_status(order_id bigint, new_status text, reason text DEFAULT NULL,
                                detail jsonb DEFAULT NULL, new_attempt boolean DEFAULT false)
RETURNS boolean
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    o mpqr.orders;
    old_status text;
BEGIN
    SELECT * INTO o FROM mpqr.orders x WHERE x.id = set_status.order_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF NOT new_attempt AND mpqr.status_rank(new_status) <= mpqr.status_rank(o.status) THEN
        RETURN false;
    END IF;
    old_status := o.status;
    UPDATE mpqr.orders x
       SET status = new_status,
           status_reason = reason,
           published_at = CASE WHEN new_status = 'published' THEN coalesce(x.published_at, now()) ELSE x.published_at END,
           paid_at = CASE WHEN new_status = 'paid' THEN coalesce(x.paid_at, now()) ELSE x.paid_at END,
           closed_at = CASE WHEN mpqr.status_rank(new_status) >= 2 THEN now() ELSE NULL END,
           updated_at = now()
     WHERE x.id = o.id
    RETURNING * INTO o;
    INSERT INTO mpqr.order_events (order_id, from_status, to_status, reason, detail)
    VALUES (o.id, old_status, new_status, reason, detail);
    PERFORM mpqr.notify_order(o);
    RETURN true;
END
$$;

-- The order of a reference: the one of the account named, else the only one.
-- With lock, its POS and then the order are locked, in the order
-- mpqr_put_order() takes them, so that the POS's requests stay in commit order.
CREATE FUNCTION mpqr.find_order(external_reference text, account text, lock boolean DEFAULT true)
RETURNS mpqr.orders
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    o mpqr.orders;
    n integer;
BEGIN
    PERFORM mpqr.require(external_reference, 'external_reference');
    SELECT count(*) INTO n FROM mpqr.orders x
     WHERE x.external_reference = find_order.external_reference
       AND (find_order.account IS NULL OR x.account = find_order.account);
    IF n = 0 THEN
        RAISE EXCEPTION 'order "%" does not exist', external_reference
            USING ERRCODE = 'undefined_object';
    ELSIF n > 1 THEN
        RAISE EXCEPTION 'order "%" exists in more than one account', external_reference
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Name the account with account => ''...''.';
    END IF;
    SELECT * INTO o FROM mpqr.orders x
     WHERE x.external_reference = find_order.external_reference
       AND (find_order.account IS NULL OR x.account = find_order.account);
    IF lock THEN
        PERFORM 1 FROM mpqr.pos x WHERE x.external_id = o.pos_id FOR UPDATE;
        SELECT * INTO o FROM mpqr.orders x WHERE x.id = o.id FOR UPDATE;
    END IF;
    RETURN o;
END
$$;

-- Check an amount of a currency: positive, with the decimals it allows.
CREATE FUNCTION mpqr.check_amount(amount numeric, currency text, what text) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    IF amount IS NULL THEN
        RAISE EXCEPTION '% must not be null', what USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF amount <= 0 THEN
        RAISE EXCEPTION '% must be positive', what
            USING ERRCODE = 'invalid_parameter_value', DETAIL = format('The value was %s.', amount);
    END IF;
    IF mpqr.integer_currency(currency) AND amount <> trunc(amount) THEN
        RAISE EXCEPTION '% must be a whole number in %', what, currency
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('The value was %s; Mercado Pago takes no decimals in %s.', amount, currency);
    END IF;
    IF amount <> round(amount, 2) THEN
        RAISE EXCEPTION '% has more than 2 decimals', what
            USING ERRCODE = 'invalid_parameter_value', DETAIL = format('The value was %s.', amount);
    END IF;
END
$$;

-- Validate the items of an order and return them normalized: title,
-- unit_price, quantity, unit_measure and any of sku_number, category,
-- description.  With no items, one item: the title, quantity 1, the total.
CREATE FUNCTION mpqr.normalize_items(items jsonb, total_amount numeric, title text, currency text,
                                     api text)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    it jsonb;
    result jsonb := '[]';
    sum numeric := 0;
    n integer := 0;
    price numeric;
    qty numeric;
BEGIN
    IF items IS NULL OR items = 'null'::jsonb THEN
        RETURN jsonb_build_array(jsonb_build_object('title', title, 'unit_price', total_amount,
                                                    'quantity', 1, 'unit_measure', 'unit'));
    END IF;
    IF jsonb_typeof(items) <> 'array' OR jsonb_array_length(items) = 0 THEN
        RAISE EXCEPTION 'items must be a non-empty JSON array'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass items like ''[{"title":"Pizza","unit_price":75,"quantity":2}]'', or none.';
    END IF;
    FOR it IN SELECT value FROM jsonb_array_elements(items) LOOP
        n := n + 1;
        IF jsonb_typeof(it) <> 'object' THEN
            RAISE EXCEPTION 'item % is not a JSON object', n USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF jsonb_typeof(it -> 'title') IS DISTINCT FROM 'string' OR it ->> 'title' = '' THEN
            RAISE EXCEPTION 'item % has no title', n USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF jsonb_typeof(it -> 'unit_price') IS DISTINCT FROM 'number' THEN
            RAISE EXCEPTION 'item % has no numeric unit_price', n USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF jsonb_typeof(it -> 'quantity') IS DISTINCT FROM 'number' THEN
            RAISE EXCEPTION 'item % has no numeric quantity', n USING ERRCODE = 'invalid_parameter_value';
        END IF;
        price := (it ->> 'unit_price')::numeric;
        qty := (it ->> 'quantity')::numeric;
        PERFORM mpqr.check_amount(price, currency, format('unit_price of item %s', n));
        IF qty <= 0 THEN
            RAISE EXCEPTION 'quantity of item % must be positive', n
                USING ERRCODE = 'invalid_parameter_value', DETAIL = format('The value was %s.', qty);
        END IF;
        -- what each API documents: the Orders API takes whole quantities;
        -- instore takes unit_measure "unit" or "pack"
        IF api = 'orders' AND qty <> trunc(qty) THEN
            RAISE EXCEPTION 'quantity of item % must be a whole number in the Orders API', n
                USING ERRCODE = 'invalid_parameter_value', DETAIL = format('The value was %s.', qty);
        END IF;
        IF api = 'instore' AND it ? 'unit_measure' AND (it ->> 'unit_measure') NOT IN ('unit', 'pack') THEN
            RAISE EXCEPTION 'unit_measure of item % must be "unit" or "pack"', n
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF it ? 'unit_measure' AND jsonb_typeof(it -> 'unit_measure') <> 'string' THEN
            RAISE EXCEPTION 'unit_measure of item % must be a string', n
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        sum := sum + price * qty;
        result := result || jsonb_build_array(
            jsonb_strip_nulls(jsonb_build_object(
                'sku_number', it -> 'sku_number', 'category', it -> 'category',
                'title', it -> 'title', 'description', it -> 'description',
                'unit_price', price, 'quantity', qty,
                'unit_measure', coalesce(it ->> 'unit_measure', 'unit'))));
    END LOOP;
    IF sum <> total_amount THEN
        RAISE EXCEPTION 'items do not add up to the total'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('The items add up to %s, the total_amount is %s.', sum, total_amount);
    END IF;
    RETURN result;
END
$$;

-- The notification URL of an account's orders, or NULL when
-- mpqr.public_url is empty (warned about once per server start, as is an
-- http:// URL).
CREATE FUNCTION mpqr.notification_url(account text) RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    base text := rtrim(mpqr.setting('public_url', ''), '/');
BEGIN
    IF base = '' THEN
        IF mpqr.warn_once(0) THEN
            RAISE WARNING 'mpqr.public_url is empty: orders go out without a notification_url'
                USING HINT = 'Payments are then found through the application''s webhook settings and the reconciliation sweep.';
        END IF;
        RETURN NULL;
    END IF;
    IF base ~* '^http://' THEN
        IF mpqr.warn_once(1) THEN
            RAISE WARNING 'mpqr.public_url "%" is not HTTPS', base
                USING HINT = 'Mercado Pago requires HTTPS; plain HTTP is only for testing.';
        END IF;
    END IF;
    RETURN base || '/notifications?account=' || account;
END
$$;

-- ISO-8601 duration of an interval, in seconds (PT900S).
CREATE FUNCTION mpqr.iso_duration(i interval) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT 'PT' || greatest(1, ceil(extract(epoch FROM i)))::bigint || 'S' $$;

-- The publish request of an order: method, path and body, for its API.
CREATE FUNCTION mpqr.publish_request(o mpqr.orders, a mpqr.accounts, p mpqr.pos,
                                     OUT method text, OUT path text, OUT body text)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    url text := mpqr.notification_url(a.name);
BEGIN
    IF a.api = 'instore' THEN
        method := 'PUT';
        path := mpqr.instore_store_pos_path(a.collector_id, p.store_external_id, p.external_id);
        body := jsonb_strip_nulls(jsonb_build_object(
            'external_reference', o.external_reference,
            'title', o.title,
            'description', o.description,
            'notification_url', url,
            'expiration_date', to_char(o.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"+00:00"'),
            'total_amount', o.total_amount,
            'items', (SELECT jsonb_agg(i || jsonb_build_object('total_amount',
                                                  (i ->> 'unit_price')::numeric * (i ->> 'quantity')::numeric)
                                       ORDER BY n)
                        FROM jsonb_array_elements(o.items) WITH ORDINALITY AS e(i, n))))::text;
    ELSE
        method := 'POST';
        path := '/v1/orders';
        body := jsonb_build_object(
            'type', 'qr',
            'external_reference', o.external_reference,
            'description', o.description,
            'total_amount', mpqr.amount_text(o.total_amount, o.currency),
            'expiration_time', mpqr.iso_duration(o.expires_at - now()),
            'config', jsonb_build_object('qr', jsonb_build_object('external_pos_id', p.external_id,
                                                                  'mode', 'static')),
            'transactions', jsonb_build_object('payments', jsonb_build_array(
                jsonb_build_object('amount', mpqr.amount_text(o.total_amount, o.currency)))),
            'items', (SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                                 'title', i -> 'title',
                                 'unit_price', mpqr.amount_text((i ->> 'unit_price')::numeric, o.currency),
                                 'quantity', (i ->> 'quantity')::numeric,
                                 'unit_measure', i -> 'unit_measure',
                                 'external_code', i -> 'sku_number')) ORDER BY n)
                        FROM jsonb_array_elements(o.items) WITH ORDINALITY AS e(i, n)))::text;
    END IF;
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
CREATE FUNCTION mpqr.withdraw_publish(o mpqr.orders, why text) RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    q mpqr.requests;
    api text;
BEGIN
    SELECT * INTO q FROM mpqr.requests x
     WHERE x.order_id = o.id AND x.kind = 'publish' AND x.state = 'queued'
     ORDER BY x.id DESC LIMIT 1
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'none';
    END IF;
    IF q.failures = 0 AND q.phase IS NULL THEN
        UPDATE mpqr.requests x SET state = 'cancelled', finished_at = now(), error = why
         WHERE x.id = q.id;
        RETURN 'withdrawn';
    END IF;
    SELECT a.api INTO api FROM mpqr.accounts a WHERE a.name = o.account;
    IF api = 'instore' THEN
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
-- that PUT is answered.
CREATE FUNCTION mpqr.queue_publish(o mpqr.orders) RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    a mpqr.accounts;
    p mpqr.pos;
    t record;
    old mpqr.orders;
    key text := mpqr.pos_serial_key(o.account, o.pos_id);
BEGIN
    SELECT * INTO a FROM mpqr.accounts x WHERE x.name = o.account;
    SELECT * INTO p FROM mpqr.pos x WHERE x.external_id = o.pos_id;
    FOR old IN SELECT * FROM mpqr.orders x
                WHERE x.pos_id = o.pos_id AND x.id <> o.id AND x.status IN ('queued', 'published')
                ORDER BY x.id
    LOOP
        IF old.status = 'queued'
           AND mpqr.withdraw_publish(old, 'superseded before it was sent') = 'withdrawn' THEN
            PERFORM mpqr.set_status(old.id, 'cancelled', 'superseded',
                                    jsonb_build_object('by', o.external_reference));
        ELSIF a.api = 'orders' THEN
            PERFORM mpqr.enqueue(o.account, 'cancel', 'POST', NULL,
                                 subject => o.pos_id, serial_key => key, order_id => old.id,
                                 idempotency_key => gen_random_uuid()::text,
                                 purpose => 'supersede');
        END IF;
    END LOOP;
    t := mpqr.publish_request(o, a, p);
    RETURN mpqr.enqueue(o.account, 'publish', t.method, t.path, t.body,
                        subject => o.pos_id, serial_key => key, order_id => o.id,
                        idempotency_key => CASE WHEN a.api = 'orders' THEN o.idempotency_key END);
END
$$;

-- mpqr_put_order(pos_id, external_reference, total_amount, items, title, description, expires_in)
-- Put an order on a POS's QR.  It is sent once the calling transaction
-- commits; a rollback sends nothing.  Returns the order's id.  The same
-- reference with the same content returns the existing order and sends
-- nothing again; with other content it is an error.
CREATE FUNCTION mpqr_put_order(pos_id text, external_reference text, total_amount numeric,
                               items jsonb DEFAULT NULL, title text DEFAULT NULL,
                               description text DEFAULT NULL, expires_in interval DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p mpqr.pos;
    a mpqr.accounts;
    o mpqr.orders;
    cur text;
    norm jsonb;
    ttl interval;
BEGIN
    PERFORM mpqr.require(pos_id, 'pos_id');
    PERFORM mpqr.require(external_reference, 'external_reference');
    IF length(external_reference) > 64 OR external_reference !~ '^[A-Za-z0-9_-]+$' THEN
        RAISE EXCEPTION 'invalid external_reference "%"', external_reference
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Mercado Pago takes 1 to 64 letters, digits, "-" or "_".';
    END IF;
    SELECT * INTO p FROM mpqr.pos x WHERE x.external_id = mpqr_put_order.pos_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'point of sale "%" does not exist', pos_id
            USING ERRCODE = 'undefined_object',
                  HINT = 'Add it with mpqr_add_pos().';
    END IF;
    IF p.status NOT IN ('created', 'linked', 'queued') THEN
        RAISE EXCEPTION 'point of sale "%" is not usable', pos_id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('Its creation at Mercado Pago failed: %s', p.error);
    END IF;
    SELECT * INTO a FROM mpqr.accounts x WHERE x.name = p.account;
    cur := mpqr.site_currency(a.site_id);
    PERFORM mpqr.check_amount(total_amount, cur, 'total_amount');
    IF title = '' THEN
        title := NULL;
    END IF;
    title := coalesce(title, 'Order ' || external_reference);
    description := coalesce(nullif(description, ''), title);
    IF length(description) > 150 THEN
        RAISE EXCEPTION 'description is longer than 150 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    norm := mpqr.normalize_items(items, total_amount, title, cur, a.api);
    ttl := coalesce(expires_in, mpqr.setting_interval('default_expires_in', '15min'));
    IF ttl <= interval '0' THEN
        RAISE EXCEPTION 'expires_in must be positive'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('The value was %s seconds.', trim_scale(extract(epoch FROM ttl)));
    END IF;

    SELECT * INTO o FROM mpqr.orders x
     WHERE x.account = a.name AND x.external_reference = mpqr_put_order.external_reference;
    IF FOUND THEN
        IF o.pos_id = p.external_id AND o.total_amount = mpqr_put_order.total_amount
           AND o.items = norm AND o.title = mpqr_put_order.title
           AND o.description = mpqr_put_order.description THEN
            RETURN o.id;
        END IF;
        RAISE EXCEPTION 'order "%" already exists with different content', external_reference
            USING ERRCODE = 'unique_violation',
                  HINT = 'Use a new external_reference, or mpqr_retry_order() for a new attempt of a failed, expired or cancelled order.';
    END IF;

    INSERT INTO mpqr.orders (account, external_reference, pos_id, total_amount, currency, title,
                             description, items, expires_in, expires_at, idempotency_key)
    VALUES (a.name, external_reference, p.external_id, total_amount, cur, title,
            description, norm, ttl, now() + ttl, gen_random_uuid()::text)
    RETURNING * INTO o;
    INSERT INTO mpqr.order_events (order_id, from_status, to_status, reason)
    VALUES (o.id, NULL, 'queued', 'put');
    PERFORM mpqr.queue_publish(o);
    RETURN o.id;
END
$$;

-- mpqr_retry_order(external_reference, account) starts a new attempt of a
-- failed, expired or cancelled order; returns the order's id.
CREATE FUNCTION mpqr_retry_order(external_reference text, account text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    o mpqr.orders;
BEGIN
    o := mpqr.find_order(external_reference, account);
    IF o.status NOT IN ('failed', 'expired', 'cancelled') THEN
        RAISE EXCEPTION 'order "%" is %', external_reference, o.status
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Only a failed, expired or cancelled order can get a new attempt.';
    END IF;
    UPDATE mpqr.orders x
       SET attempt = x.attempt + 1, attempt_at = now(), expires_at = now() + x.expires_in,
           idempotency_key = gen_random_uuid()::text, mp_order_id = NULL,
           previous_mp_order_ids = CASE WHEN x.mp_order_id IS NULL THEN x.previous_mp_order_ids
                                        ELSE array_append(x.previous_mp_order_ids, x.mp_order_id) END,
           error = NULL, error_body = NULL, paid_amount = 0, closed_at = NULL
     WHERE x.id = o.id
    RETURNING * INTO o;
    PERFORM mpqr.set_status(o.id, 'queued', 'retry', jsonb_build_object('attempt', o.attempt),
                            new_attempt => true);
    SELECT * INTO o FROM mpqr.orders x WHERE x.id = o.id;
    PERFORM mpqr.queue_publish(o);
    RETURN o.id;
END
$$;

-- A publish was answered 2xx (204 instore, 201 Orders API).
CREATE FUNCTION mpqr.publish_done(r mpqr.requests, body text) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    o mpqr.orders;
    old mpqr.orders;
    j jsonb := mpqr.try_jsonb(body);
BEGIN
    SELECT * INTO o FROM mpqr.orders x WHERE x.id = r.order_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF j ? 'id' AND r.method = 'POST' THEN
        UPDATE mpqr.orders x SET mp_order_id = j ->> 'id', updated_at = now() WHERE x.id = o.id;
    END IF;
    PERFORM mpqr.set_status(o.id, 'published', NULL);
    -- the POS shows this order now: whatever it showed before was replaced
    -- (instore: by this PUT; Orders API: it was cancelled first).  Orders
    -- still waiting to be sent after this one are not touched.
    FOR old IN SELECT * FROM mpqr.orders x
                WHERE x.pos_id = o.pos_id AND x.id <> o.id
                  AND (x.status = 'published'
                       OR (x.status = 'queued' AND NOT EXISTS (
                               SELECT 1 FROM mpqr.requests q
                                WHERE q.order_id = x.id AND q.kind = 'publish'
                                  AND q.state IN ('queued', 'inflight') AND q.id > r.id)))
    LOOP
        PERFORM mpqr.set_status(old.id, 'cancelled', 'superseded',
                                jsonb_build_object('by', o.external_reference));
    END LOOP;
END
$$;

-- A publish was refused (a 4xx), or given up after its retries: the order fails.
CREATE FUNCTION mpqr.publish_failed(r mpqr.requests, http_status integer, body text, error text)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
BEGIN
    UPDATE mpqr.orders x
       SET error = coalesce(publish_failed.error, format('Mercado Pago answered %s', http_status)),
           error_body = mpqr.try_jsonb(body), updated_at = now()
     WHERE x.id = r.order_id;
    IF mpqr.retryable(http_status) THEN
        -- stuck: stays visible as queued with its error, for mpqr_status()
        RETURN;
    END IF;
    PERFORM mpqr.set_status(r.order_id, 'failed', 'rejected',
                            jsonb_build_object('http_status', http_status, 'body', coalesce(mpqr.try_jsonb(body), to_jsonb(body))));
END
$$;
-- Stores, POS, cancels and refunds: what a merchant sets up once, and undoes.

-- The serial key of a store's creation: the POS of that store wait for it.
CREATE FUNCTION mpqr.store_serial_key(account text, store text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT 'store:' || account || '/' || store $$;

-- mpqr_add_store(account, external_id, name, location, business_hours)
-- Create a store at Mercado Pago (through the sender) and keep its id.
CREATE FUNCTION mpqr_add_store(account text, external_id text, name text, location jsonb,
                               business_hours jsonb DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a mpqr.accounts;
BEGIN
    PERFORM mpqr.require(external_id, 'external_id');
    PERFORM mpqr.require(name, 'name');
    PERFORM mpqr.require(location, 'location');
    a := mpqr.account_or_default(account);
    IF external_id !~ '^[A-Za-z0-9]{1,60}$' THEN
        RAISE EXCEPTION 'invalid store external id "%"', external_id
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Mercado Pago takes 1 to 60 letters or digits.';
    END IF;
    IF name = '' THEN
        RAISE EXCEPTION 'store name must not be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF jsonb_typeof(location) <> 'object' THEN
        RAISE EXCEPTION 'location must be a JSON object'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Mercado Pago takes street_number, street_name, city_name, state_name, latitude, longitude and reference.';
    END IF;
    IF business_hours IS NOT NULL AND jsonb_typeof(business_hours) <> 'object' THEN
        RAISE EXCEPTION 'business_hours must be a JSON object' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM mpqr.stores s WHERE s.account = a.name AND s.external_id = mpqr_add_store.external_id) THEN
        RAISE EXCEPTION 'store "%" already exists in account "%"', external_id, a.name
            USING ERRCODE = 'unique_violation';
    END IF;
    INSERT INTO mpqr.stores (account, external_id, name, location, business_hours, status)
    VALUES (a.name, external_id, name, location, business_hours, 'queued');
    PERFORM mpqr.enqueue(a.name, 'create_store', 'POST', '/users/' || a.collector_id || '/stores',
                         jsonb_strip_nulls(jsonb_build_object('name', name, 'external_id', external_id,
                                                              'location', location,
                                                              'business_hours', business_hours))::text,
                         subject => external_id,
                         serial_key => mpqr.store_serial_key(a.name, external_id));
END
$$;

-- The body of a POS creation.  The claim builds it again when the POS is
-- sent, because store_id is NULL until the store exists at MP.
CREATE FUNCTION mpqr.pos_body(p mpqr.pos, mp_store_id text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object(
        'name', p.name, 'fixed_amount', true, 'store_id', mp_store_id,
        'external_store_id', p.store_external_id, 'external_id', p.external_id,
        'category', p.category))::text
$$;

-- mpqr_add_pos(external_pos_id, store, name, category, account, register)
-- Create a POS at Mercado Pago with its QR (register => true), or link one
-- that exists there already (register => false, no API call).
CREATE FUNCTION mpqr_add_pos(external_pos_id text, store text, name text,
                             category integer DEFAULT NULL, account text DEFAULT NULL,
                             register boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a mpqr.accounts;
    s mpqr.stores;
    p mpqr.pos;
BEGIN
    PERFORM mpqr.require(external_pos_id, 'external_pos_id');
    PERFORM mpqr.require(store, 'store');
    PERFORM mpqr.require(name, 'name');
    PERFORM mpqr.require(register, 'register');
    PERFORM mpqr.check_pos(external_pos_id, name);
    IF account IS NULL THEN
        -- the account of the store, when mpqr knows exactly one store by that id
        SELECT x.account INTO account FROM mpqr.stores x WHERE x.external_id = store;
        IF (SELECT count(*) FROM mpqr.stores x WHERE x.external_id = store) > 1 THEN
            account := NULL;
        END IF;
    END IF;
    a := mpqr.account_or_default(account);
    IF category IS NOT NULL AND category <= 0 THEN
        RAISE EXCEPTION 'invalid category %', category
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'The category is a positive MCC code, such as 621102 for gastronomy in Argentina.';
    END IF;
    IF EXISTS (SELECT 1 FROM mpqr.pos x WHERE x.external_id = external_pos_id) THEN
        RAISE EXCEPTION 'point of sale "%" already exists', external_pos_id
            USING ERRCODE = 'unique_violation';
    END IF;
    IF NOT register THEN
        INSERT INTO mpqr.pos (external_id, account, store_external_id, name, category, status)
        VALUES (external_pos_id, a.name, store, name, category, 'linked');
        RETURN;
    END IF;
    SELECT * INTO s FROM mpqr.stores x WHERE x.account = a.name AND x.external_id = store;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'store "%" does not exist in account "%"', store, a.name
            USING ERRCODE = 'undefined_object',
                  HINT = 'Add it with mpqr_add_store(), or link an existing POS with register => false.';
    ELSIF s.status = 'failed' THEN
        RAISE EXCEPTION 'store "%" could not be created at Mercado Pago', store
            USING ERRCODE = 'object_not_in_prerequisite_state', DETAIL = s.error;
    END IF;
    INSERT INTO mpqr.pos (external_id, account, store_external_id, name, category, status, mp_store_id)
    VALUES (external_pos_id, a.name, store, name, category, 'queued', s.mp_store_id)
    RETURNING * INTO p;
    PERFORM mpqr.enqueue(a.name, 'create_pos', 'POST', '/pos', mpqr.pos_body(p, s.mp_store_id),
                         subject => external_pos_id,
                         serial_key => mpqr.pos_serial_key(a.name, external_pos_id));
END
$$;

-- Each POS with its QR links, for printing.
CREATE VIEW mpqr.pos_qr AS
SELECT p.external_id AS pos_id, p.name, p.account, p.store_external_id, s.name AS store_name,
       p.status, p.mp_pos_id, p.uuid, p.qr_image, p.qr_template_document, p.qr_template_image,
       p.qr_code, p.qr
  FROM mpqr.pos p
  LEFT JOIN mpqr.stores s ON s.account = p.account AND s.external_id = p.store_external_id;
COMMENT ON VIEW mpqr.pos_qr IS 'Each POS with its QR links (PNG, printable PDF template), for printing';

-- A store or POS was created (201), or found by its external id (adopt).
CREATE FUNCTION mpqr.create_done(r mpqr.requests, j jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
BEGIN
    IF r.kind = 'create_store' THEN
        UPDATE mpqr.stores s SET mp_store_id = j ->> 'id', status = 'created', error = NULL, updated_at = now()
         WHERE s.account = r.account AND s.external_id = r.subject;
        UPDATE mpqr.pos p SET mp_store_id = j ->> 'id', updated_at = now()
         WHERE p.account = r.account AND p.store_external_id = r.subject;
    ELSE
        UPDATE mpqr.pos p
           SET mp_pos_id = (j ->> 'id')::bigint, status = 'created', error = NULL,
               mp_store_id = coalesce(j ->> 'store_id', p.mp_store_id),
               uuid = j ->> 'uuid', qr = j -> 'qr', qr_image = j #>> '{qr,image}',
               qr_template_document = j #>> '{qr,template_document}',
               qr_template_image = j #>> '{qr,template_image}',
               qr_code = j ->> 'qr_code', updated_at = now()
         WHERE p.external_id = r.subject;
    END IF;
END
$$;

-- A store or POS creation was refused.
CREATE FUNCTION mpqr.create_failed(r mpqr.requests, http_status integer, body text) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    msg text := format('Mercado Pago answered %s: %s', http_status, left(coalesce(body, ''), 500));
BEGIN
    IF r.kind = 'create_store' THEN
        UPDATE mpqr.stores s SET status = 'failed', error = msg, updated_at = now()
         WHERE s.account = r.account AND s.external_id = r.subject;
        UPDATE mpqr.pos p SET status = 'failed', error = 'its store could not be created: ' || msg, updated_at = now()
         WHERE p.account = r.account AND p.store_external_id = r.subject AND p.status = 'queued';
        UPDATE mpqr.requests q SET state = 'cancelled', finished_at = now(), error = 'its store could not be created'
          FROM mpqr.pos p
         WHERE q.kind = 'create_pos' AND q.state = 'queued' AND q.account = r.account
           AND p.external_id = q.subject AND p.store_external_id = r.subject;
    ELSE
        UPDATE mpqr.pos p SET status = 'failed', error = msg, updated_at = now()
         WHERE p.external_id = r.subject;
    END IF;
END
$$;

-- mpqr_cancel_order(external_reference, account)
-- Cancel an unpaid order.  A queued order is cancelled before it is sent; a
-- published one becomes cancelled once Mercado Pago confirms.
CREATE FUNCTION mpqr_cancel_order(external_reference text, account text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    o mpqr.orders;
BEGIN
    o := mpqr.find_order(external_reference, account);
    IF o.status IN ('paid', 'refunded') THEN
        RAISE EXCEPTION 'order "%" is %', external_reference, o.status
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Give the money back with mpqr_refund().';
    ELSIF o.status = 'cancelled' THEN
        RAISE NOTICE 'order "%" is already cancelled', external_reference;
        RETURN;
    ELSIF o.status IN ('expired', 'failed') THEN
        RAISE EXCEPTION 'order "%" is %', external_reference, o.status
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'There is nothing to cancel.';
    END IF;
    IF o.status = 'queued' AND mpqr.withdraw_publish(o, 'cancelled before it was sent') = 'withdrawn' THEN
        PERFORM mpqr.set_status(o.id, 'cancelled', 'cancelled');
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM mpqr.requests q
                WHERE q.order_id = o.id AND q.kind = 'cancel' AND q.state IN ('queued', 'inflight')) THEN
        RETURN;
    END IF;
    PERFORM mpqr.queue_cancel(o, 'cancel');
END
$$;

-- Queue the removal of an order from its POS: a cancel, or the end of an
-- expired order.  instore: check what the POS shows, then DELETE; Orders
-- API: POST .../cancel (its path is bound when sent, once the order has its
-- Mercado Pago id).
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
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE purpose WHEN 'expire' THEN 'expired' ELSE 'cancelled' END,
           CASE purpose WHEN 'expire' THEN 'expired' WHEN 'supersede' THEN 'superseded' ELSE 'cancelled' END
$$;

-- A cancel was confirmed by Mercado Pago.
CREATE FUNCTION mpqr.cancel_done(r mpqr.requests, j jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    c record := mpqr.cancel_outcome(r.purpose);
BEGIN
    PERFORM mpqr.set_status(r.order_id, c.status, c.reason);
END
$$;

-- A cancel was refused.  A 409 from the Orders API means the order may just
-- have been paid: fetch it instead (the next request of the POS waits).
CREATE FUNCTION mpqr.cancel_failed(r mpqr.requests, http_status integer, body text) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
BEGIN
    IF http_status = 409 AND r.method = 'POST' THEN
        PERFORM mpqr.requeue_request(r, 'fetch_order', '0', http_status, body,
                                     'the order could not be cancelled: fetching its state');
    ELSIF r.purpose = 'expire' THEN
        PERFORM mpqr.set_status(r.order_id, 'expired', 'expired');
    END IF;
END
$$;
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
-- Notifications: every request POSTed to the listener's /notifications, kept
-- raw, with what mpqr made of it.
--
-- The listener worker only moves bytes.  For each complete request it calls
-- mpqr.ingest_notification() inside its batch transaction, and answers the
-- HTTP status that function returns once the batch has committed:
--   200  stored (whatever it names, even nothing, or an unknown collector);
--   401  a wrong webhook signature under mpqr.signature_policy = 'enforce':
--        nothing is stored;
--   400  never returned here: a body that is not JSON makes the cast below
--        raise a data exception, and the listener then answers that request
--        400 and stores the rest of its batch.
--
-- Notifications are only triggers.  The BEFORE INSERT trigger queues a fetch
-- of the resource named (mpqr.queue_fetch() coalesces it with a fetch still
-- pending, and rate-limits resources mpqr does not know); nothing changes
-- state until the API's answer to that fetch is recorded.  Each delivery,
-- repeats included, gets its own row, and a repeat never suppresses a fetch.

CREATE TABLE mpqr.notifications (
    id              bigserial PRIMARY KEY,
    received_at     timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    account         text REFERENCES mpqr.accounts (name) ON UPDATE CASCADE ON DELETE SET NULL,
    query           jsonb NOT NULL DEFAULT '{}',
    headers         jsonb NOT NULL DEFAULT '{}',
    body            text,
    body_json       jsonb,
    topic           text,
    resource_id     text,
    action          text,
    user_id         bigint,
    signature       text NOT NULL,
    request_id      text,
    retry           integer,
    triggered       text NOT NULL DEFAULT 'nothing',
    fetch_request   bigint,
    CONSTRAINT notifications_signature_check
        CHECK (signature IN ('valid', 'stale', 'invalid', 'unverified')),
    CONSTRAINT notifications_triggered_check
        CHECK (triggered IN ('queued', 'coalesced', 'rate_limited', 'ignored', 'nothing'))
);
COMMENT ON TABLE mpqr.notifications IS 'Every notification received by the mpqr listener, raw, with its signature verdict and what it triggered';
COMMENT ON COLUMN mpqr.notifications.account IS 'From account= in the query, else the body''s user_id, else the default account; NULL for an unknown collector';
COMMENT ON COLUMN mpqr.notifications.query IS 'Query arguments, name to value (URL-decoded)';
COMMENT ON COLUMN mpqr.notifications.headers IS 'Request headers, lowercased name to value (credentials left out)';
COMMENT ON COLUMN mpqr.notifications.body_json IS 'The body parsed; NULL when there was no body';
COMMENT ON COLUMN mpqr.notifications.topic IS 'IPN topic or webhook type: merchant_order, payment, order, topic_merchant_order_wh, chargebacks, ...';
COMMENT ON COLUMN mpqr.notifications.resource_id IS 'The id named: IPN id, webhook data.id (query, else body), else the body''s id for topic_merchant_order_wh';
COMMENT ON COLUMN mpqr.notifications.signature IS 'valid, stale (valid but old), invalid (stored under signature_policy = record), or unverified (nothing to verify: an IPN, a webhook without x-signature, or an account without webhook_secret)';
COMMENT ON COLUMN mpqr.notifications.triggered IS 'What mpqr.queue_fetch() did: queued, coalesced, rate_limited or ignored; nothing when no fetch was asked';
COMMENT ON COLUMN mpqr.notifications.fetch_request IS 'The pending fetch in mpqr.requests that this notification queued or joined';
REVOKE ALL ON TABLE mpqr.notifications FROM PUBLIC;
REVOKE ALL ON SEQUENCE mpqr.notifications_id_seq FROM PUBLIC;

-- Retention deletes by age; mpqr_status() counts the unknown collectors.
-- There is no index on account: accounts are renamed or deleted rarely
-- enough that a scan then is cheaper than an index on every insert.
CREATE INDEX notifications_received_at ON mpqr.notifications (received_at);
CREATE INDEX notifications_resource ON mpqr.notifications (resource_id) WHERE resource_id IS NOT NULL;
CREATE INDEX notifications_unknown_account ON mpqr.notifications (received_at) WHERE account IS NULL;

SELECT pg_catalog.pg_extension_config_dump('mpqr.notifications', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.notifications_id_seq', '');

-- mpqr.signature_verdict(secret, x_signature, data_id, request_id, tolerance)
-- Judge an x-signature header: valid, stale, invalid, unsigned (no header) or
-- unverified (no secret).  The manifest is id:{data_id};request-id:{request_id};ts:{ts};
-- without the pairs whose value is NULL; data_id is tried as given and
-- lowercased.  A NULL tolerance never makes a signature stale.
CREATE FUNCTION mpqr.signature_verdict(secret text, x_signature text, data_id text,
                                       request_id text, tolerance interval)
RETURNS text
AS 'MODULE_PATHNAME', 'mpqr_signature_verdict'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL SAFE;
REVOKE ALL ON FUNCTION mpqr.signature_verdict(text, text, text, text, interval) FROM PUBLIC;

-- mpqr.ingest_notification(query_names, query_values, header_names, header_values, body)
-- Store one request received by the listener; return the HTTP status to
-- answer.  Header names arrive lowercased; body is NULL when there was none.
--
-- The forms Mercado Pago uses:
--   IPN               ?topic=merchant_order&id=N (or payment, chargebacks),
--                     body optional; any x-signature is ignored (MP documents
--                     that it cannot be validated);
--   webhook           ?data.id=X&type=T, JSON body, x-signature, x-request-id;
--   body-only webhook only mpqr's ?account=, the type and id in the body
--                     (topic_merchant_order_wh has its id at the top level).
CREATE FUNCTION mpqr.ingest_notification(query_names text[], query_values text[],
                                         header_names text[], header_values text[],
                                         body text)
RETURNS integer
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    q jsonb := jsonb_object(coalesce(query_names, '{}'), coalesce(query_values, '{}'));
    h jsonb := jsonb_object(coalesce(header_names, '{}'), coalesce(header_values, '{}'))
               - '{authorization,proxy-authorization,cookie}'::text[];
    j jsonb;
    o jsonb;
    is_ipn boolean := q ? 'topic';
    is_webhook boolean;
    v_topic text;
    v_resource text;
    v_user_text text;
    v_user bigint;
    v_account text;
    v_secret text;
    v_xsig text := h ->> 'x-signature';
    v_signature text;
    v_retry integer;
BEGIN
    -- A body that is not JSON raises a data exception here: the listener
    -- answers this request 400 and stores the rest of its batch.
    IF body IS NOT NULL AND btrim(body, E' \t\r\n') <> '' THEN
        j := body::jsonb;
        IF jsonb_typeof(j) = 'object' THEN
            o := j;
        END IF;
    END IF;

    v_topic := coalesce(q ->> 'topic', q ->> 'type', o ->> 'type', o ->> 'topic');
    is_webhook := NOT is_ipn AND (q ? 'data.id' OR q ? 'type' OR o ? 'type');

    IF is_ipn THEN
        -- IPN: ?id=, else the last segment of the body's resource URL
        v_resource := coalesce(nullif(q ->> 'id', ''),
                               substring(o ->> 'resource' FROM '([^/?]+)/?(\?.*)?$'));
    ELSE
        v_resource := coalesce(nullif(q ->> 'data.id', ''), o #>> '{data,id}',
                               CASE WHEN v_topic = 'topic_merchant_order_wh' THEN o ->> 'id' END);
    END IF;

    v_user_text := o ->> 'user_id';
    IF v_user_text ~ '^[0-9]{1,18}$' THEN
        v_user := v_user_text::bigint;
    END IF;

    -- The account (design section 7): account= if it names one of ours,
    -- else the collector the body names (none when it is not ours), else
    -- the default account.
    IF q ? 'account' THEN
        SELECT a.name INTO v_account FROM mpqr.accounts a WHERE a.name = q ->> 'account';
    END IF;
    IF v_account IS NULL THEN
        IF v_user_text IS NOT NULL THEN
            SELECT a.name INTO v_account FROM mpqr.accounts a WHERE a.collector_id = v_user;
        ELSE
            SELECT a.name INTO v_account FROM mpqr.accounts a WHERE a.is_default;
        END IF;
    END IF;

    -- The signature: only signed webhooks can be verified.  Everything else
    -- (an IPN, signed or not, or an unsigned QR webhook) is stored as
    -- unverified, as design section 7 says; whether an x-signature came at
    -- all shows in headers.
    IF NOT is_webhook OR v_xsig IS NULL OR btrim(v_xsig) = '' THEN
        v_signature := 'unverified';
    ELSE
        SELECT a.webhook_secret INTO v_secret FROM mpqr.accounts a WHERE a.name = v_account;
        v_signature := mpqr.signature_verdict(v_secret, v_xsig, q ->> 'data.id',
                                              h ->> 'x-request-id',
                                              mpqr.setting_interval('signature_tolerance', '300'));
    END IF;
    IF v_signature = 'invalid' AND mpqr.setting('signature_policy', 'enforce') = 'enforce' THEN
        RETURN 401;
    END IF;

    IF h ->> 'x-retry' ~ '^[0-9]{1,9}$' THEN
        v_retry := (h ->> 'x-retry')::integer;
    END IF;

    INSERT INTO mpqr.notifications (account, query, headers, body, body_json, topic,
                                    resource_id, action, user_id, signature, request_id, retry)
    VALUES (v_account, q, h, ingest_notification.body, j, v_topic,
            v_resource, o ->> 'action', v_user, v_signature, h ->> 'x-request-id', v_retry);
    RETURN 200;
END
$$;
REVOKE ALL ON FUNCTION mpqr.ingest_notification(text[], text[], text[], text[], text) FROM PUBLIC;

-- Queue the fetch a notification asks for, and record what happened.
--
-- merchant_order and topic_merchant_order_wh fetch the merchant order,
-- payment the payment, order the Orders API order, and a chargeback the
-- payment its body names.  Unknown topics, notifications that name no
-- resource and unknown collectors trigger nothing.  A notification stored
-- with an invalid signature (signature_policy = record) still fetches, under
-- the global rate limit of unknown resources.  This is a BEFORE trigger so
-- that the outcome lands in the row without a second write; the row's id is
-- therefore not passed to mpqr.queue_fetch().
CREATE FUNCTION mpqr.notification_queue_fetch()
RETURNS trigger
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    resource text;
    resource_id text := NEW.resource_id;
BEGIN
    resource := CASE NEW.topic
        WHEN 'merchant_order' THEN 'merchant_order'
        WHEN 'topic_merchant_order_wh' THEN 'merchant_order'
        WHEN 'payment' THEN 'payment'
        WHEN 'order' THEN 'order'
        WHEN 'chargebacks' THEN 'payment'
        WHEN 'topic_chargebacks_wh' THEN 'payment'
    END;
    IF NEW.topic IN ('chargebacks', 'topic_chargebacks_wh') THEN
        IF jsonb_typeof(NEW.body_json) = 'object' THEN
            resource_id := coalesce(NEW.body_json #>> '{data,payment_id}',
                                    NEW.body_json ->> 'payment_id');
        ELSE
            resource_id := NULL;
        END IF;
    END IF;

    NEW.triggered := 'nothing';
    NEW.fetch_request := NULL;
    IF resource IS NULL OR resource_id IS NULL OR NEW.account IS NULL THEN
        RETURN NEW;
    END IF;

    NEW.triggered := mpqr.queue_fetch(NEW.account, resource, resource_id, NULL,
                                      rate_limited => NEW.signature = 'invalid');
    IF NEW.triggered IN ('queued', 'coalesced') THEN
        SELECT r.id INTO NEW.fetch_request
          FROM mpqr.requests r
         WHERE r.state = 'queued' AND r.kind LIKE 'fetch%' AND r.kind = 'fetch_' || resource
           AND r.account = NEW.account AND r.subject = resource_id
         ORDER BY r.id DESC
         LIMIT 1;
    END IF;
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION mpqr.notification_queue_fetch() FROM PUBLIC;

CREATE TRIGGER notifications_queue_fetch
    BEFORE INSERT ON mpqr.notifications
    FOR EACH ROW EXECUTE FUNCTION mpqr.notification_queue_fetch();
-- Reconciliation: what Mercado Pago's API says about orders and payments,
-- applied through the state machine.
--
-- Notifications are only triggers.  Orders change state only here, from a
-- merchant order, payment or order fetched from the API with the account's
-- own token.  Money that Mercado Pago confirmed always wins; stale snapshots
-- never move anything backwards.

CREATE TABLE mpqr.merchant_orders (
    id                  bigint PRIMARY KEY,
    account             text NOT NULL REFERENCES mpqr.accounts (name) ON UPDATE CASCADE,
    order_id            bigint REFERENCES mpqr.orders (id) ON DELETE SET NULL,
    external_reference  text,
    status              text,
    order_status        text,
    total_amount        numeric,
    paid_amount         numeric,
    refunded_amount     numeric,
    last_updated        timestamptz,
    body                jsonb NOT NULL,
    fetched_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX merchant_orders_reference ON mpqr.merchant_orders (account, external_reference);
CREATE INDEX merchant_orders_order ON mpqr.merchant_orders (order_id);
COMMENT ON TABLE mpqr.merchant_orders IS 'Every merchant order fetched from Mercado Pago (instore): one per scan';

CREATE TABLE mpqr.payments (
    id                  text PRIMARY KEY,
    account             text NOT NULL REFERENCES mpqr.accounts (name) ON UPDATE CASCADE,
    order_id            bigint REFERENCES mpqr.orders (id) ON DELETE SET NULL,
    external_reference  text,
    merchant_order_id   bigint,
    mp_order_id         text,
    reference_id        text,
    status              text NOT NULL,
    status_detail       text,
    amount              numeric,
    amount_refunded     numeric NOT NULL DEFAULT 0,
    currency            text,
    operation_type      text,
    approved_at         timestamptz,
    last_modified       timestamptz,
    body                jsonb,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_order ON mpqr.payments (order_id);
CREATE INDEX payments_reference ON mpqr.payments (external_reference);
COMMENT ON TABLE mpqr.payments IS 'Payments as Mercado Pago reports them; status is MP''s word, verbatim';
COMMENT ON COLUMN mpqr.payments.external_reference IS 'The reference of the order it paid';

CREATE TABLE mpqr.anomalies (
    id          bigserial PRIMARY KEY,
    order_id    bigint REFERENCES mpqr.orders (id) ON DELETE CASCADE,
    kind        text NOT NULL,
    detail      jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    resolution  text,
    CONSTRAINT anomalies_kind_check CHECK (kind IN ('late_payment', 'double_payment', 'amount_mismatch',
                                                    'shortfall', 'chargeback', 'mediation'))
);
CREATE UNIQUE INDEX anomalies_once ON mpqr.anomalies (order_id, kind, (detail ->> 'key'));
COMMENT ON TABLE mpqr.anomalies IS 'Money events that need a person: see the view mpqr.anomalies_open';

CREATE VIEW mpqr.anomalies_open AS
SELECT an.id, an.kind, o.external_reference, o.account, o.pos_id, o.status, o.total_amount,
       o.paid_amount, o.refunded_amount, an.detail, an.created_at,
       CASE an.kind
           WHEN 'late_payment' THEN 'The order was cancelled, superseded or expired, and then paid: deliver it, or give the money back with mpqr_refund().'
           WHEN 'double_payment' THEN 'The customer paid more than once: refund the extra payment with mpqr_refund().'
           WHEN 'amount_mismatch' THEN 'A merchant order with another total was paid for this reference: check it with Mercado Pago before delivering.'
           WHEN 'shortfall' THEN 'Paid below the total (a coupon or a Mercado Pago discount): check the settlement.'
           WHEN 'chargeback' THEN 'A payment was charged back after the sale: answer the dispute in Mercado Pago.'
           WHEN 'mediation' THEN 'A payment is in mediation: answer the claim in Mercado Pago.'
       END AS action
  FROM mpqr.anomalies an
  LEFT JOIN mpqr.orders o ON o.id = an.order_id
 WHERE an.resolved_at IS NULL;
COMMENT ON VIEW mpqr.anomalies_open IS 'Anomalies to work through, with the action each needs';

-- Record an anomaly once (per order, kind and key), with an event and a NOTIFY.
CREATE FUNCTION mpqr.flag(order_id bigint, kind text, detail jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    o mpqr.orders;
BEGIN
    INSERT INTO mpqr.anomalies (order_id, kind, detail)
    VALUES (order_id, kind, detail)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT * INTO o FROM mpqr.orders x WHERE x.id = flag.order_id;
    INSERT INTO mpqr.order_events (order_id, from_status, to_status, reason, detail)
    VALUES (o.id, o.status, o.status, 'anomaly: ' || kind, detail);
    PERFORM pg_notify('mpqr_order', jsonb_build_object(
        'external_reference', o.external_reference, 'status', o.status, 'paid_amount', o.paid_amount,
        'anomaly', kind, 'account', o.account, 'pos_id', o.pos_id, 'order_id', o.id)::text);
    RAISE WARNING 'order "%": %', o.external_reference, replace(kind, '_', ' ');
END
$$;

-- Does mpqr know this resource?  Fetches of unknown ones are rate limited.
CREATE FUNCTION mpqr.known_resource(account text, resource text, resource_id text) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN CASE resource
        WHEN 'merchant_order' THEN resource_id ~ '^[0-9]{1,18}$'
                                   AND EXISTS (SELECT 1 FROM mpqr.merchant_orders m
                                                WHERE m.id = resource_id::bigint
                                                  AND m.account = known_resource.account)
        WHEN 'payment' THEN EXISTS (SELECT 1 FROM mpqr.payments p
                                     WHERE p.id = resource_id AND p.account = known_resource.account)
        WHEN 'order' THEN EXISTS (SELECT 1 FROM mpqr.orders o
                                   WHERE o.mp_order_id = resource_id AND o.account = known_resource.account)
                       OR EXISTS (SELECT 1 FROM mpqr.orders o
                                   WHERE o.previous_mp_order_ids @> ARRAY[resource_id]
                                     AND o.previous_mp_order_ids IS NOT NULL
                                     AND o.account = known_resource.account)
        WHEN 'search' THEN true
        ELSE false END;
END
$$;

-- Parse a timestamp from the API; NULL when absent or malformed.
CREATE FUNCTION mpqr.api_time(value text) RETURNS timestamptz
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN value::timestamptz;
EXCEPTION WHEN data_exception THEN
    RETURN NULL;
END
$$;

-- A number from the API (numbers, or strings in the Orders API).
CREATE FUNCTION mpqr.api_numeric(value jsonb) RETURNS numeric
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    IF value IS NULL OR jsonb_typeof(value) = 'null' THEN
        RETURN NULL;
    END IF;
    RETURN (value #>> '{}')::numeric;
EXCEPTION WHEN data_exception THEN
    RETURN NULL;
END
$$;

-- Insert or update a payment, unless the stored one is newer.
CREATE FUNCTION mpqr.upsert_payment(p mpqr.payments) RETURNS void
LANGUAGE sql VOLATILE PARALLEL UNSAFE
AS $$
    INSERT INTO mpqr.payments AS x (id, account, order_id, external_reference, merchant_order_id,
                                    mp_order_id, reference_id,
                                    status, status_detail, amount, amount_refunded, currency,
                                    operation_type, approved_at, last_modified, body)
    VALUES (p.id, p.account, p.order_id, p.external_reference,
            p.merchant_order_id, p.mp_order_id, p.reference_id,
            p.status, p.status_detail, p.amount, coalesce(p.amount_refunded, 0), p.currency,
            p.operation_type, p.approved_at, p.last_modified, p.body)
    ON CONFLICT (id) DO UPDATE
       SET order_id = coalesce(excluded.order_id, x.order_id),
           external_reference = coalesce(excluded.external_reference, x.external_reference),
           merchant_order_id = coalesce(excluded.merchant_order_id, x.merchant_order_id),
           mp_order_id = coalesce(excluded.mp_order_id, x.mp_order_id),
           reference_id = coalesce(excluded.reference_id, x.reference_id),
           status = excluded.status, status_detail = excluded.status_detail,
           amount = coalesce(excluded.amount, x.amount),
           amount_refunded = greatest(excluded.amount_refunded, x.amount_refunded),
           currency = coalesce(excluded.currency, x.currency),
           operation_type = coalesce(excluded.operation_type, x.operation_type),
           approved_at = coalesce(excluded.approved_at, x.approved_at),
           last_modified = coalesce(excluded.last_modified, x.last_modified),
           body = coalesce(excluded.body, x.body), updated_at = now()
     WHERE x.last_modified IS NULL OR excluded.last_modified IS NULL
        OR excluded.last_modified >= x.last_modified
$$;

-- Payment statuses of money that was confirmed at some point.
CREATE FUNCTION mpqr.money_status(status text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT status IN ('approved', 'refunded', 'in_mediation', 'charged_back', 'processed', 'accredited') $$;

-- Recompute an order's money from its stored payments, and flag what is odd.
CREATE FUNCTION mpqr.refresh_money(order_id bigint) RETURNS mpqr.orders
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    o mpqr.orders;
    pay mpqr.payments;
BEGIN
    UPDATE mpqr.orders x
       SET paid_amount = coalesce((SELECT sum(p.amount) FROM mpqr.payments p
                                    WHERE p.order_id = x.id AND mpqr.money_status(p.status)
                                      -- not the payments of a merchant order with another total
                                      AND NOT EXISTS (SELECT 1 FROM mpqr.merchant_orders m
                                                       WHERE m.id = p.merchant_order_id
                                                         AND m.total_amount <> x.total_amount)), 0),
           refunded_amount = greatest(x.refunded_amount,
                                      coalesce((SELECT sum(p.amount_refunded) FROM mpqr.payments p
                                                 WHERE p.order_id = x.id), 0)),
           last_checked_at = now(), updated_at = now()
     WHERE x.id = refresh_money.order_id
    RETURNING * INTO o;
    FOR pay IN SELECT * FROM mpqr.payments p
                WHERE p.order_id = o.id AND p.status IN ('charged_back', 'in_mediation')
    LOOP
        PERFORM mpqr.flag(o.id, CASE pay.status WHEN 'charged_back' THEN 'chargeback' ELSE 'mediation' END,
                          jsonb_build_object('key', pay.id, 'payment_id', pay.id, 'amount', pay.amount));
    END LOOP;
    IF o.paid_amount > o.total_amount THEN
        PERFORM mpqr.flag(o.id, 'double_payment',
                          jsonb_build_object('key', 'overpaid', 'paid_amount', o.paid_amount,
                                             'total_amount', o.total_amount));
    END IF;
    RETURN o;
END
$$;

-- The order is paid: move it (money wins over cancelled, superseded and
-- expired, which also get a late_payment anomaly), and flag a shortfall.
CREATE FUNCTION mpqr.mark_paid(o mpqr.orders, mp_id text, detail jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    was text := o.status;
    why text := o.status_reason;
BEGIN
    IF mpqr.status_rank(o.status) >= 3 THEN
        RETURN;
    END IF;
    UPDATE mpqr.orders x SET mp_order_id = coalesce(mp_id, x.mp_order_id) WHERE x.id = o.id;
    IF was IN ('cancelled', 'expired', 'failed') THEN
        PERFORM mpqr.set_status(o.id, 'paid', 'late_payment', detail || jsonb_build_object('was', was));
        PERFORM mpqr.flag(o.id, 'late_payment',
                          jsonb_build_object('key', 'late', 'was', was, 'reason', why) || detail);
    ELSE
        PERFORM mpqr.set_status(o.id, 'paid', NULL, detail);
    END IF;
    SELECT * INTO o FROM mpqr.orders x WHERE x.id = o.id;
    IF o.paid_amount < o.total_amount THEN
        PERFORM mpqr.flag(o.id, 'shortfall',
                          jsonb_build_object('key', 'shortfall', 'paid_amount', o.paid_amount,
                                             'total_amount', o.total_amount,
                                             'missing', o.total_amount - o.paid_amount));
    END IF;
END
$$;

-- Apply a merchant order fetched from the API (instore).
CREATE FUNCTION mpqr.apply_merchant_order(account text, mo jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    a mpqr.accounts;
    o mpqr.orders;
    mo_id bigint;
    pay jsonb;
    closed_ids bigint[];
BEGIN
    SELECT * INTO a FROM mpqr.accounts x WHERE x.name = apply_merchant_order.account;
    IF jsonb_typeof(mo) <> 'object' OR NOT mo ? 'id' THEN
        RETURN;
    END IF;
    -- only merchant orders of this account's collector count
    IF (mo #>> '{collector,id}') IS DISTINCT FROM a.collector_id::text THEN
        RETURN;
    END IF;
    mo_id := (mo ->> 'id')::bigint;
    SELECT * INTO o FROM mpqr.orders x
     WHERE x.account = a.name AND x.external_reference = mo ->> 'external_reference'
       FOR UPDATE;
    INSERT INTO mpqr.merchant_orders AS m (id, account, order_id, external_reference, status, order_status,
                                           total_amount, paid_amount, refunded_amount, last_updated, body)
    VALUES (mo_id, a.name, o.id, mo ->> 'external_reference', mo ->> 'status', mo ->> 'order_status',
            mpqr.api_numeric(mo -> 'total_amount'), mpqr.api_numeric(mo -> 'paid_amount'),
            mpqr.api_numeric(mo -> 'refunded_amount'), mpqr.api_time(mo ->> 'last_updated'), mo)
    ON CONFLICT (id) DO UPDATE
       SET status = excluded.status, order_status = excluded.order_status,
           total_amount = excluded.total_amount, paid_amount = excluded.paid_amount,
           refunded_amount = excluded.refunded_amount, last_updated = excluded.last_updated,
           body = excluded.body, fetched_at = now(), order_id = coalesce(excluded.order_id, m.order_id)
     WHERE (m.last_updated IS NULL OR excluded.last_updated IS NULL
            OR excluded.last_updated >= m.last_updated)
       -- a closed merchant order never reopens
       AND NOT (m.status = 'closed' AND excluded.status IS DISTINCT FROM 'closed');
    IF o.id IS NULL THEN
        -- a merchant order of a reference mpqr does not know changes nothing
        RETURN;
    END IF;
    FOR pay IN SELECT value FROM jsonb_array_elements(coalesce(mo -> 'payments', '[]')) LOOP
        PERFORM mpqr.upsert_payment(ROW(
            pay ->> 'id', a.name, o.id, o.external_reference, mo_id, NULL, NULL,
            pay ->> 'status', pay ->> 'status_detail',
            mpqr.api_numeric(pay -> 'transaction_amount'), coalesce(mpqr.api_numeric(pay -> 'amount_refunded'), 0),
            pay ->> 'currency_id', pay ->> 'operation_type', mpqr.api_time(pay ->> 'date_approved'),
            mpqr.api_time(pay ->> 'last_modified'), pay, now())::mpqr.payments);
    END LOOP;
    o := mpqr.refresh_money(o.id);

    SELECT array_agg(m.id ORDER BY m.id) INTO closed_ids
      FROM mpqr.merchant_orders m
     WHERE m.order_id = o.id AND m.status = 'closed';
    IF closed_ids IS NULL THEN
        RETURN;
    END IF;
    -- a closed merchant order with another total is not a payment of our order
    PERFORM mpqr.flag(o.id, 'amount_mismatch',
                      jsonb_build_object('key', m.id, 'merchant_order_id', m.id,
                                         'mp_total', m.total_amount, 'total_amount', o.total_amount))
       FROM mpqr.merchant_orders m
      WHERE m.order_id = o.id AND m.status = 'closed' AND m.total_amount <> o.total_amount;
    SELECT array_agg(m.id ORDER BY m.id) INTO closed_ids
      FROM mpqr.merchant_orders m
     WHERE m.order_id = o.id AND m.status = 'closed' AND m.total_amount = o.total_amount;
    IF closed_ids IS NULL THEN
        RETURN;
    END IF;
    IF array_length(closed_ids, 1) > 1 THEN
        PERFORM mpqr.flag(o.id, 'double_payment',
                          jsonb_build_object('key', 'merchant_orders', 'merchant_orders', to_jsonb(closed_ids)));
    END IF;
    PERFORM mpqr.mark_paid(o, closed_ids[1]::text, jsonb_build_object('merchant_order_id', closed_ids[1]));
    SELECT * INTO o FROM mpqr.orders x WHERE x.id = o.id;
    IF o.status = 'paid' AND o.paid_amount > 0 AND NOT EXISTS (
           SELECT 1 FROM mpqr.payments p
            WHERE p.order_id = o.id AND p.status IN ('approved', 'in_mediation', 'charged_back')) THEN
        PERFORM mpqr.set_status(o.id, 'refunded', 'refunded',
                                jsonb_build_object('refunded_amount', o.refunded_amount));
    END IF;
END
$$;

-- Record the payments of an Orders API order document on our order.
CREATE FUNCTION mpqr.upsert_order_payments(o mpqr.orders, j jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    pay jsonb;
BEGIN
    FOR pay IN SELECT value FROM jsonb_array_elements(coalesce(j #> '{transactions,payments}', '[]')) LOOP
        PERFORM mpqr.upsert_payment(ROW(
            pay ->> 'id', o.account, o.id, o.external_reference, NULL, j ->> 'id', pay #>> '{reference,id}',
            pay ->> 'status', pay ->> 'status_detail',
            coalesce(mpqr.api_numeric(pay -> 'paid_amount'), mpqr.api_numeric(pay -> 'amount')), 0,
            o.currency, NULL,
            CASE WHEN pay ->> 'status' IN ('processed', 'refunded')
                 THEN mpqr.api_time(j ->> 'last_updated_date') END,
            NULL, pay, now())::mpqr.payments);
    END LOOP;
END
$$;

-- Apply an order fetched from the Orders API.
CREATE FUNCTION mpqr.apply_order(account text, j jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    a mpqr.accounts;
    o mpqr.orders;
    refunded numeric;
BEGIN
    SELECT * INTO a FROM mpqr.accounts x WHERE x.name = apply_order.account;
    IF jsonb_typeof(j) <> 'object' OR NOT j ? 'id' THEN
        RETURN;
    END IF;
    IF j ? 'user_id' AND (j ->> 'user_id') IS DISTINCT FROM a.collector_id::text THEN
        RETURN;
    END IF;
    SELECT * INTO o FROM mpqr.orders x
     WHERE x.account = a.name AND x.mp_order_id = j ->> 'id'
       FOR UPDATE;
    IF NOT FOUND THEN
        -- our order whose publish answer was lost: the order document says
        -- which reference it is
        SELECT * INTO o FROM mpqr.orders x
         WHERE x.account = a.name AND x.mp_order_id IS NULL
           AND x.external_reference = j ->> 'external_reference'
           FOR UPDATE;
        IF FOUND THEN
            UPDATE mpqr.orders x SET mp_order_id = j ->> 'id' WHERE x.id = o.id
            RETURNING * INTO o;
        END IF;
    END IF;
    IF NOT FOUND THEN
        -- an earlier attempt's order: only its money counts (a payment that
        -- arrived late on it), never its expiry or cancellation
        SELECT * INTO o FROM mpqr.orders x
         WHERE x.account = a.name AND x.previous_mp_order_ids IS NOT NULL
           AND x.previous_mp_order_ids @> ARRAY[j ->> 'id']
           FOR UPDATE;
        IF NOT FOUND OR coalesce(j ->> 'status', '') NOT IN ('processed', 'refunded') THEN
            RETURN;
        END IF;
        PERFORM mpqr.upsert_order_payments(o, j);
        o := mpqr.refresh_money(o.id);
        IF mpqr.status_rank(o.status) < 3 THEN
            -- money on an earlier attempt: the current one must not be paid too
            IF o.status = 'published' THEN
                PERFORM mpqr.queue_cancel(o, 'supersede');
            END IF;
            PERFORM mpqr.set_status(o.id, 'paid', 'late_payment',
                                    jsonb_build_object('earlier_attempt', j ->> 'id'));
            PERFORM mpqr.flag(o.id, 'late_payment',
                              jsonb_build_object('key', j ->> 'id', 'earlier_attempt', j ->> 'id',
                                                 'was', o.status));
        END IF;
        RETURN;
    END IF;
    PERFORM mpqr.upsert_order_payments(o, j);
    SELECT sum(mpqr.api_numeric(rf -> 'amount')) INTO refunded
      FROM jsonb_array_elements(coalesce(j #> '{transactions,refunds}', '[]')) rf
     WHERE rf ->> 'status' = 'processed';
    UPDATE mpqr.orders x
       SET refunded_amount = greatest(x.refunded_amount, coalesce(refunded, 0))
     WHERE x.id = o.id;
    o := mpqr.refresh_money(o.id);
    IF mpqr.api_numeric(j -> 'total_paid_amount') IS NOT NULL THEN
        UPDATE mpqr.orders x SET paid_amount = mpqr.api_numeric(j -> 'total_paid_amount')
         WHERE x.id = o.id
        RETURNING * INTO o;
    END IF;
    CASE j ->> 'status'
        WHEN 'processed' THEN
            PERFORM mpqr.mark_paid(o, j ->> 'id', jsonb_build_object('status_detail', j ->> 'status_detail'));
        WHEN 'refunded' THEN
            PERFORM mpqr.mark_paid(o, j ->> 'id', jsonb_build_object('status_detail', j ->> 'status_detail'));
            UPDATE mpqr.orders x SET refunded_amount = greatest(x.refunded_amount, x.paid_amount)
             WHERE x.id = o.id;
            UPDATE mpqr.refunds f SET status = 'processed', updated_at = now()
             WHERE f.order_id = o.id AND f.status = 'processing';
            PERFORM mpqr.set_status(o.id, 'refunded', 'refunded');
        WHEN 'expired' THEN
            PERFORM mpqr.set_status(o.id, 'expired', 'expired');
        WHEN 'canceled' THEN
            PERFORM mpqr.set_status(o.id, 'cancelled', coalesce(o.status_reason, 'cancelled'));
        ELSE
            NULL;
    END CASE;
END
$$;

-- A fetch was answered: apply what it says.
CREATE FUNCTION mpqr.fetch_done(r mpqr.requests, j jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    e jsonb;
    a mpqr.accounts;
BEGIN
    IF j IS NULL THEN
        RETURN;
    END IF;
    CASE r.kind
        WHEN 'fetch_merchant_order' THEN
            PERFORM mpqr.apply_merchant_order(r.account, j);
        WHEN 'search_merchant_orders' THEN
            FOR e IN SELECT value FROM jsonb_array_elements(
                         CASE jsonb_typeof(j -> 'elements') WHEN 'array' THEN j -> 'elements' ELSE '[]' END)
            LOOP
                PERFORM mpqr.apply_merchant_order(r.account, e);
            END LOOP;
        WHEN 'fetch_order' THEN
            PERFORM mpqr.apply_order(r.account, j);
        WHEN 'fetch_payment' THEN
            SELECT * INTO a FROM mpqr.accounts x WHERE x.name = r.account;
            IF (j ->> 'collector_id') IS DISTINCT FROM a.collector_id::text THEN
                RETURN;
            END IF;
            -- the payment names its merchant order: that is what decides
            IF (j #>> '{order,id}') ~ '^[0-9]{1,18}$' THEN
                PERFORM mpqr.queue_fetch(r.account, 'merchant_order', j #>> '{order,id}', trusted => true);
            ELSIF j ? 'external_reference' THEN
                PERFORM mpqr.queue_fetch(r.account, 'search', j ->> 'external_reference', trusted => true);
            END IF;
        ELSE
            NULL;
    END CASE;
END
$$;
-- The backstop for lost notifications: the sweep, expiry, mpqr_reconcile(),
-- and the receipt of a paid order.

-- Queue a status check of an order: instore searches the merchant orders of
-- its reference, the Orders API fetches the order.  Returns what it did.
CREATE FUNCTION mpqr.queue_check(o mpqr.orders) RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    api text;
    what text;
BEGIN
    SELECT a.api INTO api FROM mpqr.accounts a WHERE a.name = o.account;
    IF api = 'orders' THEN
        -- earlier attempts' orders are still watched for late money
        PERFORM mpqr.queue_fetch(o.account, 'order', prev, trusted => true)
           FROM unnest(o.previous_mp_order_ids) prev;
        IF o.mp_order_id IS NULL THEN
            RETURN 'ignored';
        END IF;
        what := mpqr.queue_fetch(o.account, 'order', o.mp_order_id, trusted => true);
    ELSE
        what := mpqr.queue_fetch(o.account, 'search', o.external_reference, trusted => true);
    END IF;
    UPDATE mpqr.orders x SET last_checked_at = now() WHERE x.id = o.id;
    RETURN what;
END
$$;

-- The orders still watched for money: open ones (index orders_open), and
-- cancelled, superseded or expired ones until their expiry, or their close
-- if later, plus mpqr.late_payment_grace (index orders_watched).  The one
-- place this rule lives: the sweep and mpqr_reconcile() both read it.
CREATE FUNCTION mpqr.watched_orders() RETURNS SETOF mpqr.orders
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT * FROM mpqr.orders x
     WHERE x.status = 'published'
    UNION ALL
    SELECT * FROM mpqr.orders x
     WHERE x.status IN ('cancelled', 'expired')
       AND greatest(x.expires_at, x.closed_at) > now() - mpqr.setting_interval('late_payment_grace', '1h')
$$;

-- Expire what reached its expiry.  A queued order that was never sent
-- expires here, without a call.  Any other (published, or queued but maybe
-- sent: its answer was lost, or its retries gave up) gets a final check and
-- is removed from its POS; it becomes expired once that is done, unless
-- money arrived.
CREATE FUNCTION mpqr.expire_due_orders() RETURNS integer
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    o mpqr.orders;
    n integer := 0;
BEGIN
    FOR o IN SELECT * FROM mpqr.orders x
              WHERE x.status IN ('queued', 'published') AND x.expires_at <= now()
                AND NOT EXISTS (SELECT 1 FROM mpqr.requests q
                                 WHERE q.order_id = x.id AND q.kind = 'cancel'
                                   AND q.purpose = 'expire' AND q.created_at >= x.attempt_at)
              ORDER BY x.expires_at
              LIMIT 1000
                FOR UPDATE SKIP LOCKED
    LOOP
        IF o.status = 'queued'
           AND mpqr.withdraw_publish(o, 'the order expired before it was sent') = 'withdrawn' THEN
            PERFORM mpqr.set_status(o.id, 'expired', 'expired before it was sent');
            n := n + 1;
            CONTINUE;
        END IF;
        PERFORM mpqr.queue_check(o);
        PERFORM mpqr.queue_cancel(o, 'expire');
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- Check the orders whose news is late, under one global rate limit:
-- published orders past mpqr.fast_check_after are checked every
-- mpqr.fast_check_interval until their expiry; watched cancelled and
-- expired orders every mpqr.reconcile_interval; at most mpqr.sweep_rate
-- checks per second.
CREATE FUNCTION mpqr.sweep() RETURNS integer
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    fast_after interval := mpqr.setting_interval('fast_check_after', '30s');
    fast_every interval := mpqr.setting_interval('fast_check_interval', '5s');
    slow_every interval := mpqr.setting_interval('reconcile_interval', '60s');
    o mpqr.orders;
    n integer := 0;
BEGIN
    FOR o IN SELECT * FROM mpqr.watched_orders() x
              WHERE (x.status <> 'published'
                     OR coalesce(x.published_at, x.created_at) <= now() - fast_after)
                AND (x.last_checked_at IS NULL OR x.last_checked_at <= now() -
                     CASE WHEN x.status = 'published' AND now() < x.expires_at THEN fast_every ELSE slow_every END)
              ORDER BY x.last_checked_at NULLS FIRST, x.id
              LIMIT 100
    LOOP
        EXIT WHEN NOT mpqr.take_token('sweep', mpqr.setting('sweep_rate', '20')::double precision);
        PERFORM mpqr.queue_check(o);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- Delete finished requests and old notifications past mpqr.retention, at
-- most once every ten minutes, and at most 10,000 of each at a time, so that
-- a large backlog never holds back the tick's other duties.
CREATE FUNCTION mpqr.purge_old() RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    keep interval := mpqr.setting_interval('retention', '90d');
BEGIN
    UPDATE mpqr.timers t SET last_run = now()
     WHERE t.name = 'purge' AND t.last_run < now() - interval '10 minutes';
    IF NOT FOUND THEN
        RETURN;
    END IF;
    DELETE FROM mpqr.requests q
     WHERE q.id IN (SELECT x.id FROM mpqr.requests x
                     WHERE x.state IN ('done', 'failed', 'cancelled') AND x.finished_at < now() - keep
                     LIMIT 10000);
    DELETE FROM mpqr.notifications n
     WHERE n.id IN (SELECT x.id FROM mpqr.notifications x
                     WHERE x.received_at < now() - keep
                     LIMIT 10000);
END
$$;

-- mpqr_reconcile(older_than) queues a status check of every open order at
-- least that old (all of them by default), and of the cancelled, superseded
-- and expired orders still watched for late money.  Returns how many.
CREATE FUNCTION mpqr_reconcile(older_than interval DEFAULT '0')
RETURNS integer
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    o mpqr.orders;
    n integer := 0;
BEGIN
    PERFORM mpqr.require(older_than, 'older_than');
    FOR o IN SELECT * FROM mpqr.watched_orders() x
              WHERE x.created_at <= now() - older_than
              ORDER BY x.id
    LOOP
        IF mpqr.queue_check(o) IN ('queued', 'coalesced') THEN
            n := n + 1;
        END IF;
    END LOOP;
    RETURN n;
END
$$;

-- mpqr_receipt(external_reference, account) returns a plain-text receipt of
-- a paid order: merchant, POS, items, total, payments, and refunds if any.
CREATE FUNCTION mpqr_receipt(external_reference text, account text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    o mpqr.orders;
    a mpqr.accounts;
    p mpqr.pos;
    s mpqr.stores;
    lines text[] := '{}';
    it jsonb;
    pay mpqr.payments;
    f mpqr.refunds;
    w integer := 44;
BEGIN
    PERFORM mpqr.require(external_reference, 'external_reference');
    SELECT * INTO o FROM mpqr.orders x
     WHERE x.external_reference = mpqr_receipt.external_reference
       AND (mpqr_receipt.account IS NULL OR x.account = mpqr_receipt.account);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'order "%" does not exist', external_reference USING ERRCODE = 'undefined_object';
    END IF;
    IF (SELECT count(*) FROM mpqr.orders x
         WHERE x.external_reference = mpqr_receipt.external_reference
           AND (mpqr_receipt.account IS NULL OR x.account = mpqr_receipt.account)) > 1 THEN
        RAISE EXCEPTION 'order "%" exists in more than one account', external_reference
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Name the account with account => ''...''.';
    END IF;
    IF o.status NOT IN ('paid', 'refunded') THEN
        RAISE EXCEPTION 'order "%" was never paid', external_reference
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('Its status is %s.', o.status);
    END IF;
    SELECT * INTO a FROM mpqr.accounts x WHERE x.name = o.account;
    SELECT * INTO p FROM mpqr.pos x WHERE x.external_id = o.pos_id;
    SELECT * INTO s FROM mpqr.stores x WHERE x.account = o.account AND x.external_id = p.store_external_id;

    lines := lines || repeat('=', w)
                   || lpad('RECEIPT', (w + 7) / 2)
                   || repeat('=', w)
                   || format('Merchant:  %s (collector %s)', a.name, a.collector_id)
                   || format('Store:     %s', coalesce(s.name || ' (' || p.store_external_id || ')', p.store_external_id))
                   || format('POS:       %s (%s)', p.external_id, p.name)
                   || format('Reference: %s', o.external_reference)
                   || format('Paid at:   %s', to_char(o.paid_at, 'YYYY-MM-DD HH24:MI:SS TZ'))
                   || repeat('-', w);
    FOR it IN SELECT value FROM jsonb_array_elements(o.items) LOOP
        lines := lines || (rpad(format('%s x %s', it ->> 'quantity', it ->> 'title'), w - 12)
                           || lpad(to_char((it ->> 'unit_price')::numeric * (it ->> 'quantity')::numeric, 'FM999999990.00'), 12));
    END LOOP;
    lines := lines || repeat('-', w)
                   || (rpad('TOTAL ' || o.currency, w - 12) || lpad(to_char(o.total_amount, 'FM999999990.00'), 12))
                   || (rpad('PAID', w - 12) || lpad(to_char(o.paid_amount, 'FM999999990.00'), 12));
    IF o.refunded_amount > 0 THEN
        lines := lines || (rpad('REFUNDED', w - 12) || lpad(to_char(o.refunded_amount, 'FM999999990.00'), 12));
    END IF;
    lines := lines || repeat('-', w) || 'Payments:'::text;
    FOR pay IN SELECT * FROM mpqr.payments x WHERE x.order_id = o.id ORDER BY x.approved_at NULLS LAST, x.id LOOP
        lines := lines || format('  %s  %s  %s  %s', pay.id, pay.status,
                                 to_char(pay.amount, 'FM999999990.00'),
                                 coalesce(to_char(pay.approved_at, 'YYYY-MM-DD HH24:MI:SS TZ'), ''));
    END LOOP;
    IF o.mp_order_id IS NOT NULL THEN
        lines := lines || format('Mercado Pago order: %s', o.mp_order_id);
    END IF;
    IF EXISTS (SELECT 1 FROM mpqr.refunds x WHERE x.order_id = o.id) THEN
        lines := lines || 'Refunds:'::text;
        FOR f IN SELECT * FROM mpqr.refunds x WHERE x.order_id = o.id ORDER BY x.id LOOP
            lines := lines || format('  %s  %s  %s  %s', coalesce(f.mp_refund_id, '(pending)'),
                                     coalesce(f.payment_id, o.mp_order_id), to_char(f.amount, 'FM999999990.00'),
                                     f.status);
        END LOOP;
    END IF;
    lines := lines || repeat('=', w)
                   || format('Status: %s', upper(o.status))
                   || repeat('=', w);
    RETURN array_to_string(lines, E'\n');
END
$$;
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
-- mpqr_status(): the workers, the listen address and port, the queues,
-- counters and last errors, as name/value rows.

CREATE FUNCTION mpqr.worker_status()
RETURNS TABLE (name text, value text)
AS 'MODULE_PATHNAME', 'mpqr_worker_status'
LANGUAGE C VOLATILE STRICT PARALLEL SAFE;

-- mpqr_status() returns table (name text, value text)
CREATE FUNCTION mpqr_status()
RETURNS TABLE (name text, value text)
LANGUAGE sql VOLATILE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT w.name, w.value FROM mpqr.worker_status() w
    UNION ALL
    SELECT 'requests_' || s, count(q.id)::text
      FROM unnest(ARRAY['queued', 'inflight', 'failed']) s
      LEFT JOIN mpqr.requests q ON q.state = s
     GROUP BY s
    UNION ALL
    SELECT 'requests_due', count(*)::text FROM mpqr.requests q WHERE q.state = 'queued' AND q.not_before <= now()
    UNION ALL
    SELECT 'oldest_queued_request_age', (now() - min(q.created_at))::text
      FROM mpqr.requests q WHERE q.state IN ('queued', 'inflight')
    UNION ALL
    SELECT 'orders_' || s, count(o.id)::text
      FROM unnest(ARRAY['queued', 'published', 'paid', 'cancelled', 'expired', 'failed', 'refunded']) s
      LEFT JOIN mpqr.orders o ON o.status = s
     GROUP BY s
    UNION ALL
    SELECT 'orders_stuck', count(*)::text FROM mpqr.orders o WHERE o.status = 'queued' AND o.error IS NOT NULL
    UNION ALL
    SELECT 'account_paused:' || a.name, coalesce(a.pause_reason, 'paused') || ' since ' || a.paused_at
      FROM mpqr.accounts a WHERE a.paused_at IS NOT NULL
    UNION ALL
    SELECT 'accounts_paused', count(*)::text FROM mpqr.accounts a WHERE a.paused_at IS NOT NULL
    UNION ALL
    SELECT 'notifications', count(*)::text FROM mpqr.notifications
    UNION ALL
    SELECT 'notifications_unknown_account', count(*)::text FROM mpqr.notifications n WHERE n.account IS NULL
    UNION ALL
    SELECT 'anomalies_open', count(*)::text FROM mpqr.anomalies an WHERE an.resolved_at IS NULL
    UNION ALL
    (SELECT 'last_request_error', format('%s %s %s: %s (%s)', q.method, q.kind, coalesce(q.subject, ''),
                                         q.error, coalesce(q.finished_at, q.sent_at))
       FROM mpqr.requests q
      WHERE q.error IS NOT NULL AND q.state IN ('failed', 'queued')
      ORDER BY coalesce(q.finished_at, q.sent_at) DESC NULLS LAST
      LIMIT 1)
$$;
-- Privileges and pg_dump: the last part of the install script.

-- pg_dump keeps the business tables and their sequences.
SELECT pg_catalog.pg_extension_config_dump('mpqr.accounts', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.stores', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.pos', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.orders', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.orders_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.order_events', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.order_events_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.requests', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.requests_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.merchant_orders', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.payments', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.anomalies', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.anomalies_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.refunds', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.refunds_id_seq', '');

-- Nothing in schema mpqr is PUBLIC's: the DBA grants what each role needs
-- (README, "Privileges").  Reporting roles get SELECT on the order tables;
-- application roles get EXECUTE on the mpqr_* functions.
REVOKE ALL ON ALL TABLES IN SCHEMA mpqr FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA mpqr FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA mpqr FROM PUBLIC;
REVOKE ALL ON FUNCTION mpqr_add_account(text, bigint, text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mpqr_set_account(text, bigint, text, text, text, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION mpqr_add_store(text, text, text, jsonb, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION mpqr_add_pos(text, text, text, integer, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION mpqr_put_order(text, text, numeric, jsonb, text, text, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION mpqr_retry_order(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mpqr_cancel_order(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mpqr_refund(text, numeric, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mpqr_reconcile(interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION mpqr_receipt(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mpqr_status() FROM PUBLIC;
