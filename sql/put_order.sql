-- mpqr_put_order: validation, idempotency, request bodies, superseding.
\set SHOW_CONTEXT never
SET client_min_messages = error;  -- the public_url warning comes once per server start

SELECT mpqr_add_account('main', 123456789, 'APP_USR-main', 'secret-main', 'MLA', 'instore');
SELECT mpqr_add_account('chile', 555, 'APP_USR-cl', NULL, 'MLC', 'orders');
SELECT mpqr_add_pos('SUC001POS001', 'SUC001', 'Caja 1', register => false);
SELECT mpqr_add_pos('CL1POS1', 'CL1', 'Caja', account => 'chile', register => false);

SELECT mpqr_put_order('SUC001POS001', 'ORDER-1001', 150.00,
                      '[{"title":"Pizza","unit_price":75,"quantity":2}]') AS id;
-- the same again is the same order, and nothing more is queued
SELECT mpqr_put_order('SUC001POS001', 'ORDER-1001', 150.00,
                      '[{"title":"Pizza","unit_price":75,"quantity":2}]') AS id;
SELECT count(*) FROM mpqr.requests;
-- other content under the same reference is an error
SELECT mpqr_put_order('SUC001POS001', 'ORDER-1001', 151.00);

-- the instore request, built when it is claimed: long path, items with
-- unit_measure and total_amount, the expiry (10 minutes by default)
SELECT q.method, t.path, q.idempotency_key IS NULL AS no_key, q.body IS NULL AS built_when_claimed,
       t.body::jsonb - 'expiration_date' AS body,
       (t.body::jsonb ->> 'expiration_date')::timestamptz - now() BETWEEN interval '9 min' AND interval '10 min' AS expires_in_10min
  FROM mpqr.requests q JOIN mpqr.accounts a ON a.name = q.account,
       LATERAL mpqr.request_target(q, a) t
 WHERE q.kind = 'publish';
SELECT external_reference, pos_id, total_amount, currency, status, title, description, items
  FROM mpqr.orders;

-- validation: nothing is queued for rejected input
SELECT mpqr_put_order(NULL, 'R1', 10);
SELECT mpqr_put_order('SUC001POS001', NULL, 10);
SELECT mpqr_put_order('SUC001POS001', 'R1', NULL);
SELECT mpqr_put_order('NOSUCHPOS', 'R1', 10);
SELECT mpqr_put_order('SUC001POS001', 'R 1', 10);
SELECT mpqr_put_order('SUC001POS001', 'R1+', 10);
SELECT mpqr_put_order('SUC001POS001', repeat('r', 65), 10);
SELECT mpqr_put_order('SUC001POS001', '', 10);
SELECT mpqr_put_order('SUC001POS001', 'R1', 0);
SELECT mpqr_put_order('SUC001POS001', 'R1', -3);
SELECT mpqr_put_order('SUC001POS001', 'R1', 10.001);
SELECT mpqr_put_order('CL1POS1', 'R1', 1500.50);
SELECT mpqr_put_order('SUC001POS001', 'R1', 10, '[{"title":"a","unit_price":3,"quantity":3}]');
SELECT mpqr_put_order('SUC001POS001', 'R1', 10, '{"title":"a"}');
SELECT mpqr_put_order('SUC001POS001', 'R1', 10, '[]');
SELECT mpqr_put_order('SUC001POS001', 'R1', 10, '[{"unit_price":10,"quantity":1}]');
SELECT mpqr_put_order('SUC001POS001', 'R1', 10, '[{"title":"a","unit_price":"10","quantity":1}]');
SELECT mpqr_put_order('SUC001POS001', 'R1', 10, '[{"title":"a","unit_price":10,"quantity":0}]');
SELECT mpqr_put_order('CL1POS1', 'R1', 10, '[{"title":"a","unit_price":20,"quantity":0.5}]');
SELECT mpqr_put_order('SUC001POS001', 'R1', 10, '[{"title":"a","unit_price":10,"quantity":1,"unit_measure":"kg"}]');
SELECT mpqr_put_order('SUC001POS001', 'R1', 10, expires_in => '0 seconds');
SELECT mpqr_put_order('SUC001POS001', 'R1', 10, expires_in => '29 seconds');
SELECT mpqr_put_order('SUC001POS001', 'R1', 10, expires_in => '11 minutes');
SELECT mpqr_put_order('CL1POS1', 'R1', 10, expires_in => '3601 hours', mode => 'dynamic');
SELECT mpqr_put_order('SUC001POS001', 'R1', 10, mode => 'dynamic');
SELECT mpqr_put_order('CL1POS1', 'R1', 10, mode => 'qr');
SELECT mpqr_put_order('SUC001POS001', 'R1', 10, description => repeat('d', 151));
SELECT count(*) FROM mpqr.requests;
SELECT count(*) FROM mpqr.orders;

-- Orders API: string amounts, config.qr, expiration_time, one stable key
SELECT mpqr_put_order('CL1POS1', 'CL-1', 1500, title => 'Empanadas', expires_in => '5 minutes') AS id;
SELECT t.method, t.path, t.body::jsonb AS body,
       q.idempotency_key = (SELECT idempotency_key FROM mpqr.orders WHERE external_reference = 'CL-1') AS stable_key
  FROM mpqr.requests q JOIN mpqr.accounts a ON a.name = q.account,
       LATERAL mpqr.request_target(q, a) t
 WHERE q.order_id = (SELECT id FROM mpqr.orders WHERE external_reference = 'CL-1');
-- a dynamic QR order of up to 3600 hours: it supersedes nothing on its POS
SELECT mpqr_put_order('CL1POS1', 'CL-DYN', 2000, expires_in => '2 hours', mode => 'dynamic') > 0 AS put;
SELECT t.body::jsonb #> '{config,qr}' AS qr, t.body::jsonb ->> 'expiration_time' AS expiration_time
  FROM mpqr.requests q JOIN mpqr.accounts a ON a.name = q.account,
       LATERAL mpqr.request_target(q, a) t
 WHERE q.order_id = (SELECT id FROM mpqr.orders WHERE external_reference = 'CL-DYN');
SELECT external_reference, status, mode FROM mpqr.orders WHERE pos_id = 'CL1POS1' ORDER BY id;

-- a rolled back put leaves nothing behind
BEGIN;
SELECT mpqr_put_order('SUC001POS001', 'ROLLED-BACK', 10) > 0 AS put;
ROLLBACK;
SELECT count(*) FROM mpqr.orders WHERE external_reference = 'ROLLED-BACK';

-- a second put on a POS whose first order was not sent yet supersedes it locally
SELECT mpqr_put_order('SUC001POS001', 'ORDER-1002', 20) > 0 AS put;
SELECT external_reference, status, status_reason FROM mpqr.orders WHERE pos_id = 'SUC001POS001' ORDER BY id;
SELECT order_id, kind, state, error FROM mpqr.requests WHERE subject = 'SUC001POS001' ORDER BY id;
SELECT o.external_reference, e.from_status, e.to_status, e.reason
  FROM mpqr.order_events e JOIN mpqr.orders o ON o.id = e.order_id ORDER BY e.id;

-- a new attempt of a cancelled order
SELECT mpqr_retry_order('ORDER-1001') > 0 AS retried;
SELECT external_reference, status, attempt FROM mpqr.orders WHERE pos_id = 'SUC001POS001' ORDER BY id;
SELECT mpqr_retry_order('ORDER-1001');
SELECT mpqr_retry_order('NOPE');

-- clean up for the next test
DROP EXTENSION mpqr CASCADE;
CREATE EXTENSION mpqr;
