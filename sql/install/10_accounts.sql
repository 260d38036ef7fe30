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
