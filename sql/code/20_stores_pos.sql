-- Stores and POS: what a merchant sets up once.  Their creation at Mercado
-- Pago goes through the outbox (kinds create_store and create_pos, whose
-- answers are handled in 44_create.sql).

-- The rules Mercado Pago documents for the ids of stores and POS.  Both
-- appear in API paths, so nothing else may pass.
CREATE FUNCTION mpqr.check_store_id(external_id text) RETURNS text
LANGUAGE sql IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE
AS $$
    SELECT mpqr.check_text(external_id, 'store external id', 60, '^[A-Za-z0-9]+$',
                           'Mercado Pago takes 1 to 60 letters or digits.')
$$;

CREATE FUNCTION mpqr.check_pos(external_pos_id text, name text) RETURNS void
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
AS $$
BEGIN
    PERFORM mpqr.check_text(external_pos_id, 'POS external id', 39, '^[A-Za-z0-9]+$',
                            'Mercado Pago takes 1 to 39 letters or digits, without spaces, "-" or "_".');
    IF name = '' OR length(name) >= 45 THEN
        RAISE EXCEPTION 'invalid POS name "%"', mpqr.excerpt(name)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Mercado Pago takes a non-empty name of fewer than 45 characters.';
    END IF;
    PERFORM mpqr.check_text(name, 'POS name', 44);
END
$$;

-- A JSON object argument of bounded size.
CREATE FUNCTION mpqr.check_object(value jsonb, what text, max_bytes integer) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    IF value IS NULL THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(value) <> 'object' THEN
        RAISE EXCEPTION '% must be a JSON object', what USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF octet_length(value::text) > max_bytes THEN
        RAISE EXCEPTION '% is larger than % bytes', what, max_bytes
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    RETURN value;
END
$$;

-- The serial key of a store's creation: the POS of that store wait for it.
CREATE FUNCTION mpqr.store_serial_key(account text, store text) RETURNS text
LANGUAGE sql IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE
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
    PERFORM mpqr.check_store_id(external_id);
    IF btrim(name) = '' THEN
        RAISE EXCEPTION 'store name must not be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM mpqr.check_text(name, 'store name', 200);
    BEGIN
        PERFORM mpqr.check_object(location, 'location', 4096);
    EXCEPTION WHEN invalid_parameter_value THEN
        RAISE EXCEPTION 'location must be a JSON object'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Mercado Pago takes street_number, street_name, city_name, state_name, latitude, longitude and reference.';
    END;
    PERFORM mpqr.check_object(business_hours, 'business_hours', 4096);
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

-- The body of a POS creation.  The claim builds it when the POS is sent,
-- because store_id is NULL until the store exists at Mercado Pago.
CREATE FUNCTION mpqr.pos_body(p mpqr.pos, mp_store_id text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'name', p.name, 'fixed_amount', true, 'store_id', mp_store_id,
        'external_store_id', p.store_external_id, 'external_id', p.external_id,
        'category', p.category))::text;
END
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
    -- the store is part of API paths even when mpqr does not know it
    PERFORM mpqr.check_store_id(store);
    IF account IS NULL THEN
        -- the account of the store, when mpqr knows exactly one store by that id
        SELECT min(x.account) INTO account FROM mpqr.stores x WHERE x.external_id = store
        HAVING count(*) = 1;
    END IF;
    a := mpqr.account_or_default(account);
    IF category IS NOT NULL AND (category <= 0 OR category > 99999999) THEN
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
