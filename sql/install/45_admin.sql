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
