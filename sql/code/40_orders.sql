-- Orders: the state machine, validation at the door, and the SQL API of a
-- sale (mpqr_put_order, mpqr_retry_order, mpqr_cancel_order).  What is sent
-- to Mercado Pago for them lives in the kinds' files (41_publish,
-- 42_cancel).

-- Rank of a status: a status only moves to a higher rank.  Money that
-- Mercado Pago confirmed (paid, refunded) outranks everything.
CREATE FUNCTION mpqr.status_rank(status text) RETURNS integer
LANGUAGE sql IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE
AS $$
    SELECT CASE status
        WHEN 'queued' THEN 0 WHEN 'published' THEN 1
        WHEN 'cancelled' THEN 2 WHEN 'expired' THEN 2 WHEN 'failed' THEN 2
        WHEN 'paid' THEN 3 WHEN 'refunded' THEN 4 END
$$;

-- What NOTIFY mpqr_order says about an order.  A published dynamic or
-- hybrid order carries qr_data, the EMVCo string the POS shows as a QR.
CREATE FUNCTION mpqr.order_payload(o mpqr.orders) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object(
        'external_reference', o.external_reference,
        'status', o.status,
        'reason', o.status_reason,
        'paid_amount', o.paid_amount,
        'refunded_amount', o.refunded_amount,
        'total_amount', o.total_amount,
        'currency', o.currency,
        'pos_id', o.pos_id,
        'account', o.account,
        'order_id', o.id,
        'mode', o.mode,
        'mp_order_id', o.mp_order_id,
        'qr_data', o.qr_data))
$$;

-- mpqr.advance_orders(moves) moves orders forward, as a set: each move
-- whose status outranks the order's is made, recorded in order_events and
-- announced on channel mpqr_order.  Returns how many moved.  new_attempt
-- allows the one backward move, from a final status to queued
-- (mpqr_retry_order).  The orders are locked in id order.
CREATE FUNCTION mpqr.advance_orders(moves mpqr.order_move[], new_attempt boolean DEFAULT false)
RETURNS integer
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
-- its statements depend on the moves only through the array: a custom plan
-- per call costs more than the generic one it would choose
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    n integer;
BEGIN
    WITH m AS (
        SELECT DISTINCT ON (mv.order_id) mv.order_id, mv.status, mv.reason, mv.detail
          FROM unnest(moves) mv
         WHERE mv.order_id IS NOT NULL
         ORDER BY mv.order_id
    ), old AS (
        SELECT x.id, x.status
          FROM mpqr.orders x
         WHERE x.id IN (SELECT m.order_id FROM m)
         ORDER BY x.id
           FOR UPDATE OF x
    ), moved AS (
        UPDATE mpqr.orders x
           SET status = m.status,
               status_reason = m.reason,
               published_at = CASE WHEN m.status = 'published' THEN coalesce(x.published_at, now())
                                   ELSE x.published_at END,
               paid_at = CASE WHEN m.status = 'paid' THEN coalesce(x.paid_at, now()) ELSE x.paid_at END,
               closed_at = CASE WHEN mpqr.status_rank(m.status) >= 2 THEN now() END,
               updated_at = now()
          FROM m JOIN old ON old.id = m.order_id
         WHERE x.id = m.order_id
           AND (new_attempt OR mpqr.status_rank(m.status) > mpqr.status_rank(old.status))
        RETURNING x AS o, old.status AS from_status, m.detail
    ), events AS (
        INSERT INTO mpqr.order_events (order_id, from_status, to_status, reason, detail)
        SELECT (v.o).id, v.from_status, (v.o).status, (v.o).status_reason, v.detail FROM moved v
    )
    SELECT count(pg_notify('mpqr_order', mpqr.order_payload(v.o)::text) IS NULL) INTO n
      FROM moved v;
    RETURN n;
END
$$;

-- Move one order forward (see mpqr.advance_orders); returns whether it moved.
CREATE FUNCTION mpqr.set_status(order_id bigint, new_status text, reason text DEFAULT NULL,
                                detail jsonb DEFAULT NULL, new_attempt boolean DEFAULT false)
RETURNS boolean
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
BEGIN
    RETURN mpqr.advance_orders(ARRAY[ROW(order_id, new_status, reason, detail)::mpqr.order_move],
                               new_attempt) > 0;
END
$$;

-- The order of a reference: the one of the account named, else the only one.
-- With lock, its POS and then the order are locked (the lock order of
-- 30_outbox.sql).
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
        RAISE EXCEPTION 'order "%" does not exist', mpqr.excerpt(external_reference)
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

-- Check an amount of a currency: a finite, positive number below ten
-- billion, with the decimals the currency allows.  The bound is mpqr's own
-- (Mercado Pago documents none): it keeps every amount within the formats
-- sent to the API.
CREATE FUNCTION mpqr.check_amount(amount numeric, currency text, what text) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    IF amount IS NULL THEN
        RAISE EXCEPTION '% must not be null', what USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF amount = 'NaN' OR amount IN ('Infinity', '-Infinity') THEN
        RAISE EXCEPTION '% must be a finite number', what USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF amount <= 0 THEN
        RAISE EXCEPTION '% must be positive', what
            USING ERRCODE = 'invalid_parameter_value', DETAIL = format('The value was %s.', mpqr.excerpt(amount::text));
    END IF;
    IF amount >= 10000000000 THEN
        RAISE EXCEPTION '% is too large', what
            USING ERRCODE = 'numeric_value_out_of_range',
                  DETAIL = format('The value was %s; mpqr takes amounts below 10000000000.', mpqr.excerpt(amount::text));
    END IF;
    IF mpqr.integer_currency(currency) AND amount <> trunc(amount) THEN
        RAISE EXCEPTION '% must be a whole number in %', what, currency
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('The value was %s; Mercado Pago takes no decimals in %s.', mpqr.excerpt(amount::text), currency);
    END IF;
    IF amount <> round(amount, 2) THEN
        RAISE EXCEPTION '% has more than 2 decimals', what
            USING ERRCODE = 'invalid_parameter_value', DETAIL = format('The value was %s.', mpqr.excerpt(amount::text));
    END IF;
END
$$;

-- Validate one item and return it normalized: title, unit_price, quantity,
-- unit_measure and any of sku_number, category, description.
CREATE FUNCTION mpqr.normalize_item(it jsonb, n bigint, currency text, api text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    price numeric;
    qty numeric;
BEGIN
    IF jsonb_typeof(it) <> 'object' THEN
        RAISE EXCEPTION 'item % is not a JSON object', n USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF jsonb_typeof(it -> 'title') IS DISTINCT FROM 'string' OR btrim(it ->> 'title') = '' THEN
        RAISE EXCEPTION 'item % has no title', n USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM mpqr.check_text(it ->> 'title', format('title of item %s', n), 256);
    IF jsonb_typeof(it -> 'unit_price') IS DISTINCT FROM 'number' THEN
        RAISE EXCEPTION 'item % has no numeric unit_price', n USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF jsonb_typeof(it -> 'quantity') IS DISTINCT FROM 'number' THEN
        RAISE EXCEPTION 'item % has no numeric quantity', n USING ERRCODE = 'invalid_parameter_value';
    END IF;
    price := (it ->> 'unit_price')::numeric;
    qty := (it ->> 'quantity')::numeric;
    PERFORM mpqr.check_amount(price, currency, format('unit_price of item %s', n));
    IF qty <= 0 OR qty > 1000000 OR qty <> round(qty, 3) THEN
        RAISE EXCEPTION 'quantity of item % must be positive, at most 1000000, with at most 3 decimals', n
            USING ERRCODE = 'invalid_parameter_value', DETAIL = format('The value was %s.', mpqr.excerpt(qty::text));
    END IF;
    -- what each API documents: the Orders API takes whole quantities;
    -- instore takes unit_measure "unit" or "pack"
    IF api = 'orders' AND qty <> trunc(qty) THEN
        RAISE EXCEPTION 'quantity of item % must be a whole number in the Orders API', n
            USING ERRCODE = 'invalid_parameter_value', DETAIL = format('The value was %s.', qty);
    END IF;
    IF it ? 'unit_measure' AND jsonb_typeof(it -> 'unit_measure') <> 'string' THEN
        RAISE EXCEPTION 'unit_measure of item % must be a string', n
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF api = 'instore' AND it ? 'unit_measure' AND (it ->> 'unit_measure') NOT IN ('unit', 'pack') THEN
        RAISE EXCEPTION 'unit_measure of item % must be "unit" or "pack"', n
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM mpqr.check_text(it ->> 'unit_measure', format('unit_measure of item %s', n), 32);
    IF (it ? 'sku_number' AND jsonb_typeof(it -> 'sku_number') <> 'string')
       OR (it ? 'category' AND jsonb_typeof(it -> 'category') <> 'string')
       OR (it ? 'description' AND jsonb_typeof(it -> 'description') <> 'string') THEN
        RAISE EXCEPTION 'sku_number, category and description of item % must be strings', n
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM mpqr.check_text(it ->> 'sku_number', format('sku_number of item %s', n), 64);
    PERFORM mpqr.check_text(it ->> 'category', format('category of item %s', n), 64);
    PERFORM mpqr.check_text(it ->> 'description', format('description of item %s', n), 256);
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'sku_number', it -> 'sku_number', 'category', it -> 'category',
        'title', it -> 'title', 'description', it -> 'description',
        'unit_price', price, 'quantity', qty,
        'unit_measure', coalesce(it ->> 'unit_measure', 'unit')));
END
$$;

-- Validate the items of an order and return them normalized, in linear
-- time.  With no items, one item: the title, quantity 1, the total.
CREATE FUNCTION mpqr.normalize_items(items jsonb, total_amount numeric, title text, currency text,
                                     api text)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    result jsonb;
    sum numeric;
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
    IF jsonb_array_length(items) > 500 THEN
        RAISE EXCEPTION 'an order takes at most 500 items'
            USING ERRCODE = 'program_limit_exceeded',
                  DETAIL = format('%s items were given.', jsonb_array_length(items));
    END IF;
    SELECT jsonb_agg(v ORDER BY n), sum((v ->> 'unit_price')::numeric * (v ->> 'quantity')::numeric)
      INTO result, sum
      FROM (SELECT mpqr.normalize_item(e.it, e.n, currency, api) AS v, e.n
              FROM jsonb_array_elements(items) WITH ORDINALITY AS e(it, n)) s;
    IF sum <> total_amount THEN
        RAISE EXCEPTION 'items do not add up to the total'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('The items add up to %s, the total_amount is %s.', sum, total_amount);
    END IF;
    RETURN result;
END
$$;

-- The lifetime of an order: expires_in, else mpqr.default_expires_in.
-- Mercado Pago keeps a static QR order at most 10 minutes, whatever is
-- sent, and takes 30 seconds to 3600 hours for dynamic and hybrid ones
-- (API reference 12.4).  An expires_in outside those bounds is an error;
-- the default is cut to the mode's maximum.
CREATE FUNCTION mpqr.order_ttl(expires_in interval, mode text) RETURNS interval
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
DECLARE
    longest interval := CASE WHEN mode = 'static' THEN interval '10 minutes' ELSE interval '3600 hours' END;
BEGIN
    IF expires_in IS NULL THEN
        RETURN least(mpqr.setting_interval('default_expires_in'), longest);
    END IF;
    IF expires_in < interval '30 seconds' OR expires_in > longest THEN
        RAISE EXCEPTION 'expires_in must be between 30 seconds and % for a % QR order',
                        CASE WHEN mode = 'static' THEN '10 minutes' ELSE '3600 hours' END, mode
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('The value was %s.', expires_in);
    END IF;
    RETURN expires_in;
END
$$;

-- mpqr_put_order(pos_id, external_reference, total_amount, items, title, description, expires_in, mode)
-- Put an order on a POS's QR.  It is sent once the calling transaction
-- commits; a rollback sends nothing.  Returns the order's id.  The same
-- reference with the same content returns the existing order and sends
-- nothing again; with other content it is an error.  mode (Orders API
-- accounts only): static (the POS's printed QR, the default), dynamic (a
-- QR of its own that the POS shows: qr_data), or hybrid (both).
CREATE FUNCTION mpqr_put_order(pos_id text, external_reference text, total_amount numeric,
                               items jsonb DEFAULT NULL, title text DEFAULT NULL,
                               description text DEFAULT NULL, expires_in interval DEFAULT NULL,
                               mode text DEFAULT 'static')
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    cur text;
    norm jsonb;
    ttl interval;
    oid bigint;
    o_pos text;
    o_total numeric;
    o_items jsonb;
    o_title text;
    o_description text;
    o_mode text;
    ikey text := gen_random_uuid()::text;
BEGIN
    -- cheap checks first; the statements below are the only ones a put
    -- makes (P1 in test/bench/RESULTS.md)
    IF pos_id IS NULL OR external_reference IS NULL OR mode IS NULL THEN
        PERFORM mpqr.require(pos_id, 'pos_id');
        PERFORM mpqr.require(external_reference, 'external_reference');
        PERFORM mpqr.require(mode, 'mode');
    END IF;
    PERFORM mpqr.check_text(external_reference, 'external_reference', 64, '^[A-Za-z0-9_-]+$',
                            'Mercado Pago takes 1 to 64 letters, digits, "-" or "_".');
    SELECT x.status, x.error, a.name AS account, a.api, a.site_id INTO r
      FROM mpqr.pos x JOIN mpqr.accounts a ON a.name = x.account
     WHERE x.external_id = mpqr_put_order.pos_id
       FOR UPDATE OF x;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'point of sale "%" does not exist', mpqr.excerpt(pos_id)
            USING ERRCODE = 'undefined_object',
                  HINT = 'Add it with mpqr_add_pos().';
    END IF;
    IF r.status NOT IN ('created', 'linked', 'queued') THEN
        RAISE EXCEPTION 'point of sale "%" is not usable', pos_id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('Its creation at Mercado Pago failed: %s', r.error);
    END IF;
    IF mode NOT IN ('static', 'dynamic', 'hybrid') THEN
        RAISE EXCEPTION 'invalid mode "%"', mpqr.excerpt(mode)
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Use "static", "dynamic" or "hybrid".';
    END IF;
    IF mode <> 'static' AND r.api <> 'orders' THEN
        RAISE EXCEPTION 'mode "%" needs an account on the Orders API', mode
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = format('Account "%s" uses the instore API, which has static QR orders only.', r.account);
    END IF;
    cur := mpqr.site_currency(r.site_id);
    PERFORM mpqr.check_amount(total_amount, cur, 'total_amount');
    title := coalesce(nullif(title, ''), 'Order ' || external_reference);
    PERFORM mpqr.check_text(title, 'title', 256);
    description := coalesce(nullif(description, ''), title);
    PERFORM mpqr.check_text(description, 'description', 150);
    norm := mpqr.normalize_items(items, total_amount, title, cur, r.api);
    ttl := mpqr.order_ttl(expires_in, mode);

    INSERT INTO mpqr.orders (account, external_reference, pos_id, total_amount, currency, title,
                             description, items, expires_in, expires_at, idempotency_key, mode)
    VALUES (r.account, external_reference, pos_id, total_amount, cur, title,
            description, norm, ttl, now() + ttl, ikey, mode)
    ON CONFLICT ON CONSTRAINT orders_account_external_reference_key DO NOTHING
    RETURNING id INTO oid;
    IF NOT FOUND THEN
        SELECT x.id, x.pos_id, x.total_amount, x.items, x.title, x.description, x.mode
          INTO oid, o_pos, o_total, o_items, o_title, o_description, o_mode
          FROM mpqr.orders x
         WHERE x.account = r.account AND x.external_reference = mpqr_put_order.external_reference;
        IF o_pos = pos_id AND o_total = total_amount AND o_items = norm AND o_title = title
           AND o_description = description AND o_mode = mode THEN
            RETURN oid;
        END IF;
        RAISE EXCEPTION 'order "%" already exists with different content', external_reference
            USING ERRCODE = 'unique_violation',
                  HINT = 'Use a new external_reference, or mpqr_retry_order() for a new attempt of a failed, expired or cancelled order.';
    END IF;
    INSERT INTO mpqr.order_events (order_id, from_status, to_status, reason)
    VALUES (oid, NULL, 'queued', 'put');
    PERFORM mpqr.queue_publish(oid, external_reference, pos_id, mode, ikey, r.account, r.api);
    RETURN oid;
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
    a mpqr.accounts;
BEGIN
    o := mpqr.find_order(external_reference, account);
    IF o.status NOT IN ('failed', 'expired', 'cancelled') THEN
        RAISE EXCEPTION 'order "%" is %', external_reference, o.status
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Only a failed, expired or cancelled order can get a new attempt.';
    END IF;
    UPDATE mpqr.orders x
       SET attempt = x.attempt + 1, attempt_at = now(), expires_at = now() + x.expires_in,
           idempotency_key = gen_random_uuid()::text, mp_order_id = NULL, qr_data = NULL,
           previous_mp_order_ids = CASE WHEN x.mp_order_id IS NULL THEN x.previous_mp_order_ids
                                        ELSE array_append(x.previous_mp_order_ids, x.mp_order_id) END,
           error = NULL, error_body = NULL, paid_amount = 0, closed_at = NULL
     WHERE x.id = o.id;
    PERFORM mpqr.set_status(o.id, 'queued', 'retry', jsonb_build_object('attempt', o.attempt + 1),
                            new_attempt => true);
    SELECT * INTO o FROM mpqr.orders x WHERE x.id = o.id;
    SELECT * INTO a FROM mpqr.accounts x WHERE x.name = o.account;
    PERFORM mpqr.queue_publish(o.id, o.external_reference, o.pos_id, o.mode, o.idempotency_key,
                               a.name, a.api);
    RETURN o.id;
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
    IF o.status = 'queued' AND mpqr.withdraw_publish(o.id, 'cancelled before it was sent') = 'withdrawn' THEN
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
