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
