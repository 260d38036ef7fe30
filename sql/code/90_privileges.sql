-- Privileges, and the last checks of an install: the last part of the
-- script.
--
-- Nothing in schema mpqr is PUBLIC's.  The extension makes two roles (once
-- per cluster; they outlive the extension) that the DBA grants to people
-- and applications:
--   mpqr_user   puts, cancels, retries and refunds orders, prints receipts,
--               and reads the order tables;
--   mpqr_admin  also configures accounts, stores and POS, reconciles, reads
--               every table and mpqr_status() - but never a token or a
--               secret: the columns that hold them are not granted.
REVOKE ALL ON ALL TABLES IN SCHEMA mpqr FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA mpqr FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA mpqr FROM PUBLIC;
REVOKE ALL ON FUNCTION mpqr_add_account(text, bigint, text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mpqr_set_account(text, bigint, text, text, text, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION mpqr_confirm_copy() FROM PUBLIC;
REVOKE ALL ON FUNCTION mpqr_add_store(text, text, text, jsonb, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION mpqr_add_pos(text, text, text, integer, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION mpqr_put_order(text, text, numeric, jsonb, text, text, interval, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mpqr_retry_order(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mpqr_cancel_order(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mpqr_refund(text, numeric, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mpqr_reconcile(interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION mpqr_receipt(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mpqr_status() FROM PUBLIC;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'mpqr_user') THEN
        CREATE ROLE mpqr_user NOLOGIN;
        COMMENT ON ROLE mpqr_user IS 'mpqr: put, cancel and refund orders; read the order tables';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'mpqr_admin') THEN
        CREATE ROLE mpqr_admin NOLOGIN;
        COMMENT ON ROLE mpqr_admin IS 'mpqr: configure accounts, stores and POS; read everything but tokens and secrets';
    END IF;
END
$$;
GRANT mpqr_user TO mpqr_admin;

GRANT USAGE ON SCHEMA mpqr TO mpqr_user, mpqr_admin;
GRANT EXECUTE ON FUNCTION mpqr_put_order(text, text, numeric, jsonb, text, text, interval, text),
                          mpqr_retry_order(text, text), mpqr_cancel_order(text, text),
                          mpqr_refund(text, numeric, text), mpqr_receipt(text, text)
   TO mpqr_user;
GRANT SELECT ON mpqr.orders, mpqr.order_events, mpqr.payments, mpqr.refunds, mpqr.merchant_orders,
                mpqr.anomalies_open, mpqr.pos_qr
   TO mpqr_user;

GRANT EXECUTE ON FUNCTION mpqr_add_account(text, bigint, text, text, text, text),
                          mpqr_set_account(text, bigint, text, text, text, text, boolean),
                          mpqr_confirm_copy(), mpqr_add_store(text, text, text, jsonb, jsonb),
                          mpqr_add_pos(text, text, text, integer, text, boolean),
                          mpqr_reconcile(interval), mpqr_status()
   TO mpqr_admin;
GRANT SELECT ON mpqr.stores, mpqr.pos, mpqr.requests, mpqr.notifications, mpqr.anomalies,
                mpqr.timers, mpqr.catchups
   TO mpqr_admin;
GRANT SELECT (name, collector_id, site_id, api, is_default, paused_at, pause_reason, created_at,
              updated_at, origin_system, origin_database)
   ON mpqr.accounts TO mpqr_admin;

-- The workers serve one database: creating the extension elsewhere is
-- allowed (for a copy, say), but it sends nothing there.  Say so.
DO $$
BEGIN
    IF pg_catalog.current_setting('mpqr.database', true) IS NULL THEN
        RAISE WARNING 'mpqr is not loaded via shared_preload_libraries: nothing will be sent'
            USING HINT = 'Add mpqr to shared_preload_libraries and restart the server.';
    ELSIF pg_catalog.current_database() <> pg_catalog.current_setting('mpqr.database') THEN
        RAISE WARNING 'extension "mpqr" created in database "%", but "mpqr.database" is "%"',
                      pg_catalog.current_database(), pg_catalog.current_setting('mpqr.database')
            USING DETAIL = 'The mpqr workers serve only the database that mpqr.database names: nothing is sent or received for this one.',
                  HINT = 'Set mpqr.database in postgresql.conf and restart, or create the extension in that database.';
    END IF;
END
$$;

-- Tell the workers (through shared memory) that the extension has just been
-- made, and whether by a restore: then they leave the database alone until
-- the session that restores it ends, so that they never act on half-loaded
-- tables.
SELECT mpqr.note_install();

-- An upgrade makes the API functions anew: the grants a DBA had made on them
-- (kept by the upgrade's schema step) are made again.
DO $$
DECLARE
    g record;
BEGIN
    IF pg_catalog.to_regclass('pg_temp.mpqr_saved_grants') IS NULL THEN
        RETURN;
    END IF;
    FOR g IN EXECUTE 'SELECT DISTINCT p.oid::regprocedure AS f, s.grantee
                        FROM pg_temp.mpqr_saved_grants s
                        JOIN pg_catalog.pg_proc p ON p.proname = s.function_name
                        JOIN pg_catalog.pg_depend d ON d.objid = p.oid AND d.deptype = ''e''
                         AND d.classid = ''pg_catalog.pg_proc''::regclass
                        JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND e.extname = ''mpqr'''
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %s', g.f, g.grantee);
    END LOOP;
    DROP TABLE pg_temp.mpqr_saved_grants;
END
$$;
