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
