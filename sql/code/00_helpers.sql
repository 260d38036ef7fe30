-- Small helpers shared by every concern: settings, currencies, quoting, the
-- calls into the library.
--
-- Note: every SQL-language function of the extension is one the planner can
-- inline where it is used, so that a call from PL/pgSQL is planned once with
-- its caller instead of being parsed again on every call.  They are CALLED
-- ON NULL INPUT (a STRICT one is inlined only if its body is strict too).
-- A function that cannot be inlined (a subquery, more than one statement, a
-- body less immutable than declared) is PL/pgSQL.  The regression test
-- inlining.sql checks this.

-- A setting of mpqr, as guc.c defines it.  The library is preloaded in every
-- session of a server that runs mpqr, so a missing setting means it is not.
CREATE FUNCTION mpqr.not_loaded(name text) RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
BEGIN
    RAISE EXCEPTION 'setting "mpqr.%" is not defined', name
        USING ERRCODE = 'object_not_in_prerequisite_state',
              HINT = 'mpqr must be loaded via shared_preload_libraries.';
END
$$;

CREATE FUNCTION mpqr.setting(name text) RETURNS text
LANGUAGE sql STABLE CALLED ON NULL INPUT PARALLEL SAFE
AS $$ SELECT coalesce(pg_catalog.current_setting('mpqr.' || name, true), mpqr.not_loaded(name)) $$;

-- A time setting as an interval (current_setting shows it with its unit,
-- such as 10min, 200ms or 90d).
CREATE FUNCTION mpqr.setting_interval(name text) RETURNS interval
LANGUAGE sql STABLE CALLED ON NULL INPUT PARALLEL SAFE
AS $$ SELECT mpqr.setting(name)::interval $$;

-- The system identifier of this cluster (from shared memory, not the disk).
CREATE FUNCTION mpqr.system_identifier() RETURNS bigint
AS 'MODULE_PATHNAME', 'mpqr_system_identifier'
LANGUAGE C STABLE STRICT PARALLEL SAFE;

-- Where this database lives: the cluster's system identifier and the
-- database's name.  An account configured elsewhere belongs to a copy.
CREATE FUNCTION mpqr.here(OUT system bigint, OUT database text)
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
BEGIN
    system := mpqr.system_identifier();
    database := pg_catalog.current_database();
END
$$;

-- Currency of a Mercado Pago site.
CREATE FUNCTION mpqr.site_currency(site_id text) RETURNS text
LANGUAGE sql IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE
AS $$
    SELECT CASE site_id
        WHEN 'MLA' THEN 'ARS' WHEN 'MLB' THEN 'BRL' WHEN 'MLM' THEN 'MXN'
        WHEN 'MLU' THEN 'UYU' WHEN 'MLC' THEN 'CLP' WHEN 'MCO' THEN 'COP'
        WHEN 'MPE' THEN 'PEN' END
$$;

-- Does this currency take integer amounts only (Chile and Colombia)?
CREATE FUNCTION mpqr.integer_currency(currency text) RETURNS boolean
LANGUAGE sql IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE
AS $$ SELECT currency IN ('CLP', 'COP') $$;

-- An amount as Mercado Pago's Orders API wants it: a string with two decimals,
-- or none for currencies without decimals.  Amounts are checked at the door
-- (mpqr.check_amount), so they always fit the format.
CREATE FUNCTION mpqr.amount_text(amount numeric, currency text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
AS $$
BEGIN
    IF mpqr.integer_currency(currency) THEN
        RETURN trim(to_char(amount, 'FM999999999999990'));
    END IF;
    RETURN trim(to_char(amount, 'FM999999999999990.00'));
END
$$;

-- A value as an error message may quote it: at most 40 characters, without
-- control characters, so that a huge or hostile argument never reaches the
-- log whole.
CREATE FUNCTION mpqr.excerpt(value text) RETURNS text
LANGUAGE sql IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE
AS $$
    SELECT regexp_replace(left(value, 40), '[[:cntrl:]]', '?', 'g')
           || CASE WHEN length(value) > 40 THEN '...' ELSE '' END
$$;

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

-- Check a text argument: its length, and the characters it may hold.
CREATE FUNCTION mpqr.check_text(value text, what text, max_length integer,
                                pattern text DEFAULT NULL, rule text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    IF value IS NULL THEN
        RETURN NULL;
    END IF;
    IF length(value) > max_length THEN
        RAISE EXCEPTION '% is longer than % characters', what, max_length
            USING ERRCODE = 'string_data_right_truncation',
                  DETAIL = format('It has %s characters, starting with "%s".', length(value), mpqr.excerpt(value));
    END IF;
    IF pattern IS NOT NULL AND value !~ pattern THEN
        RAISE EXCEPTION 'invalid % "%"', what, mpqr.excerpt(value)
            USING ERRCODE = 'invalid_parameter_value', DETAIL = rule;
    END IF;
    IF value ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION '% must not contain control characters', what
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN value;
END
$$;

-- Percent-encode a path segment or query-string value: only unreserved
-- characters pass, so no value can change a URL's path or query.
CREATE FUNCTION mpqr.urlencode(value text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
AS $$
BEGIN
    IF value ~ '^[A-Za-z0-9_.~-]*$' THEN
        RETURN value;
    END IF;
    RETURN (SELECT string_agg(CASE WHEN b ~ '^[A-Za-z0-9_.~-]$' THEN b
                                   ELSE upper(regexp_replace(encode(convert_to(b, 'UTF8'), 'hex'), '(..)', '%\1', 'g'))
                              END, '' ORDER BY i)
              FROM regexp_split_to_table(value, '') WITH ORDINALITY AS t(b, i));
END
$$;

-- Read an answer as JSON; NULL when it is not JSON.
CREATE FUNCTION mpqr.try_jsonb(body text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN body::jsonb;
EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
    RETURN NULL;
END
$$;

-- Parse a timestamp from the API; NULL when absent or malformed (Mercado
-- Pago has been seen sending "2022-07-23T23:03:5704:00").
CREATE FUNCTION mpqr.api_time(value text) RETURNS timestamptz
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
BEGIN
    IF value IS NULL OR value !~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)$' THEN
        RETURN NULL;
    END IF;
    RETURN value::timestamptz;
EXCEPTION WHEN data_exception THEN
    RETURN NULL;
END
$$;

-- A number from the API (numbers, or strings in the Orders API); NULL when
-- absent or not a finite number.
CREATE FUNCTION mpqr.api_numeric(value jsonb) RETURNS numeric
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    n numeric;
BEGIN
    IF value IS NULL OR jsonb_typeof(value) NOT IN ('number', 'string') THEN
        RETURN NULL;
    END IF;
    n := (value #>> '{}')::numeric;
    IF n = 'NaN' OR n IN ('Infinity', '-Infinity') THEN
        RETURN NULL;
    END IF;
    RETURN n;
EXCEPTION WHEN data_exception THEN
    RETURN NULL;
END
$$;

-- The calls into the library (src/): waking the sender at commit, the
-- rate limits and one-time warnings in shared memory.
CREATE FUNCTION mpqr.wake_sender_at_commit() RETURNS void
AS 'MODULE_PATHNAME', 'mpqr_wake_sender_at_commit'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;

-- Take one token from a bucket refilled at rate per second, holding at most
-- burst tokens; false when it is empty.
CREATE FUNCTION mpqr.take_token(bucket text, rate double precision, burst double precision DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'mpqr_take_token'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- Add tokens to a bucket, up to burst: the fetch budget of resources not
-- seen yet grows as orders start waiting for news.
CREATE FUNCTION mpqr.add_tokens(bucket text, tokens double precision, burst double precision)
RETURNS void
AS 'MODULE_PATHNAME', 'mpqr_add_tokens'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

-- True the first time it is called with this flag since the server started.
CREATE FUNCTION mpqr.warn_once(flag integer) RETURNS boolean
AS 'MODULE_PATHNAME', 'mpqr_warn_once'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;

-- Note in shared memory that the extension was just made in this database,
-- and whether by a restore (a session that runs pg_dump's output); the
-- workers then wait for that session to end.  Wakes the sender at commit.
CREATE FUNCTION mpqr.note_install() RETURNS void
AS 'MODULE_PATHNAME', 'mpqr_note_install'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;

-- Count an event in the counters that mpqr_status() shows.
CREATE FUNCTION mpqr.count_event(counter text, n bigint DEFAULT 1) RETURNS void
AS 'MODULE_PATHNAME', 'mpqr_count_event'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
