-- pg_dump keeps every table and sequence of the extension, so that a dump
-- restores exactly (README, "Backup and restore").
SELECT pg_catalog.pg_extension_config_dump('mpqr.accounts', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.stores', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.pos', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.orders', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.orders_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.order_events', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.order_events_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.refunds', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.refunds_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.requests', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.requests_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.timers', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.catchups', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.notifications', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.notifications_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.merchant_orders', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.payments', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.anomalies', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.anomalies_id_seq', '');
