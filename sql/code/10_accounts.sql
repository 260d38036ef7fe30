-- Accounts: adding and changing them, the default account, and adopting the
-- accounts of a restored copy.
--
-- The functions that take a token or a secret set log_min_error_statement
-- to panic for their own run: a failed call would otherwise write its whole
-- statement, token included, into the server log (its STATEMENT: line).
-- The setting is still in force when PostgreSQL reports the error, and is
-- restored with the transaction's abort.

-- Check the fields of an account; used by add and set.
CREATE FUNCTION mpqr.check_account(name text, collector_id bigint, access_token text,
                                   webhook_secret text, site_id text, api text) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    PERFORM mpqr.check_text(name, 'account name', 64, '^[A-Za-z0-9_-]+$',
                            'Account names have 1 to 64 letters, digits, "-" or "_"; they appear in notification URLs.');
    IF collector_id <= 0 THEN
        RAISE EXCEPTION 'invalid collector_id %', collector_id
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'The collector_id is the Mercado Pago user id of the seller, a positive number.';
    END IF;
    -- never quoted: a token or secret is not repeated in any message
    IF length(access_token) NOT BETWEEN 8 AND 1024 OR access_token !~ '^[\x21-\x7e]+$' THEN
        RAISE EXCEPTION 'invalid access token'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'An access token has 8 to 1024 printable ASCII characters, without spaces.';
    END IF;
    IF webhook_secret IS NOT NULL AND webhook_secret <> ''
       AND (length(webhook_secret) NOT BETWEEN 8 AND 1024 OR webhook_secret !~ '^[\x21-\x7e]+$') THEN
        RAISE EXCEPTION 'invalid webhook secret'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A webhook secret has 8 to 1024 printable ASCII characters, without spaces.';
    END IF;
    IF site_id IS NULL OR site_id NOT IN ('MLA', 'MLB', 'MLM', 'MLU', 'MLC', 'MCO', 'MPE') THEN
        RAISE EXCEPTION 'invalid site_id "%"', mpqr.excerpt(site_id)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use one of MLA, MLB, MLM, MLU, MLC, MCO, MPE.';
    END IF;
    IF api IS NULL OR api NOT IN ('instore', 'orders') THEN
        RAISE EXCEPTION 'invalid api "%"', mpqr.excerpt(api)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use "orders" (the Orders API) or "instore" (QR attended v2, which Mercado Pago marks deprecated).';
    END IF;
END
$$;

-- A token or secret as read from a file: without the surrounding white space.
CREATE FUNCTION mpqr.trim_secret(value text) RETURNS text
LANGUAGE sql IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE
AS $$ SELECT btrim(value, E' \t\r\n') $$;

-- mpqr_add_account(name, collector_id, access_token, webhook_secret, site_id, api)
-- Add a Mercado Pago account.  The first account becomes the default one.
-- New accounts use the Orders API unless api => 'instore' is given.
CREATE FUNCTION mpqr_add_account(name text, collector_id bigint, access_token text,
                                 webhook_secret text DEFAULT NULL,
                                 site_id text DEFAULT 'MLA',
                                 api text DEFAULT 'orders')
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET log_min_error_statement = panic
AS $$
DECLARE
    h record := mpqr.here();
BEGIN
    PERFORM mpqr.require(name, 'name');
    PERFORM mpqr.require(collector_id, 'collector_id');
    PERFORM mpqr.require(access_token, 'access_token');
    PERFORM mpqr.require(site_id, 'site_id');
    PERFORM mpqr.require(api, 'api');
    access_token := mpqr.trim_secret(access_token);
    webhook_secret := mpqr.trim_secret(webhook_secret);
    PERFORM mpqr.check_account(name, collector_id, access_token, webhook_secret, site_id, api);
    IF EXISTS (SELECT 1 FROM mpqr.accounts a WHERE a.name = mpqr_add_account.name) THEN
        RAISE EXCEPTION 'account "%" already exists', name
            USING ERRCODE = 'unique_violation',
                  HINT = 'Use mpqr_set_account() to change it.';
    END IF;
    IF EXISTS (SELECT 1 FROM mpqr.accounts a WHERE a.collector_id = mpqr_add_account.collector_id) THEN
        RAISE EXCEPTION 'collector % already belongs to another account', collector_id
            USING ERRCODE = 'unique_violation';
    END IF;
    INSERT INTO mpqr.accounts (name, collector_id, access_token, webhook_secret, site_id, api, is_default,
                               origin_system, origin_database)
    VALUES (name, collector_id, access_token, nullif(webhook_secret, ''), site_id, api,
            NOT EXISTS (SELECT 1 FROM mpqr.accounts), h.system, h.database);
    PERFORM mpqr.wake_sender_at_commit();
END
$$;

-- mpqr_set_account(name, collector_id, access_token, webhook_secret, site_id, api, is_default)
-- Change an account; arguments left NULL keep their value, and an empty
-- webhook_secret removes the secret.  It also resumes an account that a
-- refused token paused, and takes effect without a restart.
CREATE FUNCTION mpqr_set_account(name text, collector_id bigint DEFAULT NULL,
                                 access_token text DEFAULT NULL,
                                 webhook_secret text DEFAULT NULL,
                                 site_id text DEFAULT NULL,
                                 api text DEFAULT NULL,
                                 is_default boolean DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET log_min_error_statement = panic
AS $$
DECLARE
    a mpqr.accounts;
BEGIN
    PERFORM mpqr.require(name, 'name');
    SELECT * INTO a FROM mpqr.accounts x WHERE x.name = mpqr_set_account.name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account "%" does not exist', mpqr.excerpt(name)
            USING ERRCODE = 'undefined_object';
    END IF;
    a.collector_id := coalesce(collector_id, a.collector_id);
    a.access_token := coalesce(mpqr.trim_secret(access_token), a.access_token);
    webhook_secret := mpqr.trim_secret(webhook_secret);
    a.site_id := coalesce(site_id, a.site_id);
    a.api := coalesce(api, a.api);
    PERFORM mpqr.check_account(a.name, a.collector_id, a.access_token, webhook_secret, a.site_id, a.api);
    IF EXISTS (SELECT 1 FROM mpqr.accounts x
                WHERE x.collector_id = a.collector_id AND x.name <> a.name) THEN
        RAISE EXCEPTION 'collector % already belongs to another account', a.collector_id
            USING ERRCODE = 'unique_violation';
    END IF;
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
    IF NOT mpqr.account_is_here(a) THEN
        RAISE WARNING 'account "%" was configured in another database: it stays paused', a.name
            USING HINT = 'If this database is now the one that serves it, run SELECT mpqr_confirm_copy().';
    END IF;
    PERFORM mpqr.wake_sender_at_commit();
END
$$;

-- Was the account configured in this cluster and database (not restored
-- from a dump of another)?
CREATE FUNCTION mpqr.account_is_here(a mpqr.accounts) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
DECLARE
    h record := mpqr.here();
BEGIN
    RETURN (a.origin_system, a.origin_database) = (h.system, h.database);
END
$$;

-- mpqr_confirm_copy() adopts, as this database's own, every account that was
-- configured in another cluster or database (a restored dump), and resumes
-- them.  Returns how many.  Until then such a copy sends nothing.
CREATE FUNCTION mpqr_confirm_copy()
RETURNS integer
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    h record := mpqr.here();
    n integer;
BEGIN
    UPDATE mpqr.accounts a
       SET origin_system = h.system, origin_database = h.database,
           paused_at = CASE WHEN a.pause_reason LIKE 'restored copy%' THEN NULL ELSE a.paused_at END,
           pause_reason = CASE WHEN a.pause_reason LIKE 'restored copy%' THEN NULL ELSE a.pause_reason END,
           updated_at = now()
     WHERE (a.origin_system, a.origin_database) IS DISTINCT FROM (h.system, h.database);
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        RAISE NOTICE 'this database now serves % restored account(s)', n;
        PERFORM mpqr.wake_sender_at_commit();
    END IF;
    RETURN n;
END
$$;

-- Pause the accounts of a restored copy, with a reason that says so; the
-- sender leaves them alone whatever paused_at says, this makes it visible.
CREATE FUNCTION mpqr.pause_copied_accounts() RETURNS integer
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    h record := mpqr.here();
    a record;
    n integer := 0;
BEGIN
    FOR a IN UPDATE mpqr.accounts x
                SET paused_at = coalesce(x.paused_at, now()),
                    pause_reason = format('restored copy: configured in database "%s" of cluster %s; run SELECT mpqr_confirm_copy() to serve it here',
                                          x.origin_database, x.origin_system)
              WHERE (x.origin_system, x.origin_database) IS DISTINCT FROM (h.system, h.database)
                AND x.pause_reason IS DISTINCT FROM
                    format('restored copy: configured in database "%s" of cluster %s; run SELECT mpqr_confirm_copy() to serve it here',
                           x.origin_database, x.origin_system)
             RETURNING x.name
    LOOP
        RAISE WARNING 'account "%" belongs to a restored copy: nothing is sent for it', a.name
            USING HINT = 'Run SELECT mpqr_confirm_copy() if this database now serves it.';
        n := n + 1;
    END LOOP;
    RETURN n;
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
            RAISE EXCEPTION 'account "%" does not exist', mpqr.excerpt(name)
                USING ERRCODE = 'undefined_object';
        END IF;
    END IF;
    RETURN a;
END
$$;
