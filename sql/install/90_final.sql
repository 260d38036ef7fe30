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
