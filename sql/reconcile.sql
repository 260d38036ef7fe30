-- Reconciliation: what the API says, applied through the forward-only state machine.
-- The fetched documents are fed directly to the functions the sender's outcomes reach.
\set SHOW_CONTEXT never
SET client_min_messages = error;

SELECT mpqr_add_account('main', 123456789, 'APP_USR-main', NULL, 'MLA', 'instore');
SELECT mpqr_add_account('ord', 222, 'APP_USR-ord', NULL, 'MLA', 'orders');
SELECT mpqr_add_pos('P1', 'S1', 'Caja 1', register => false);
SELECT mpqr_add_pos('P2', 'S1', 'Caja 2', register => false);
SELECT mpqr_add_pos('P3', 'S1', 'Caja 3', account => 'ord', register => false);

-- a merchant order document, as GET /merchant_orders/{id} returns it
CREATE FUNCTION pg_temp.mo(id bigint, ref text, status text, total numeric, payments jsonb,
                           updated text DEFAULT '2026-11-27T10:00:00.000-03:00',
                           collector bigint DEFAULT 123456789)
RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('id', id, 'external_reference', ref, 'status', status,
                              'total_amount', total, 'collector', jsonb_build_object('id', collector),
                              'last_updated', updated, 'payments', payments)
$$;
CREATE FUNCTION pg_temp.pay(id bigint, amount numeric, status text,
                            modified text DEFAULT '2026-11-27T10:00:00.000-03:00')
RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('id', id, 'transaction_amount', amount, 'status', status,
                              'status_detail', CASE status WHEN 'approved' THEN 'accredited' ELSE status END,
                              'date_approved', CASE WHEN status <> 'rejected' THEN modified END,
                              'last_modified', modified, 'operation_type', 'regular_payment')
$$;
CREATE VIEW pg_temp.o AS
SELECT external_reference AS ref, status, status_reason AS reason, paid_amount AS paid,
       refunded_amount AS refunded, mp_order_id
  FROM mpqr.orders ORDER BY id;

SELECT mpqr_put_order('P1', 'A', 100) > 0 AS put;
SELECT mpqr.set_status(id, 'published') FROM mpqr.orders WHERE external_reference = 'A';

-- opened, without payments: nothing changes
SELECT mpqr.apply_merchant_order('main', pg_temp.mo(9001, 'A', 'opened', 100, '[]'));
SELECT * FROM pg_temp.o;
-- a partial payment shows, and the order stays published
SELECT mpqr.apply_merchant_order('main', pg_temp.mo(9001, 'A', 'opened', 100,
       jsonb_build_array(pg_temp.pay(501, 40, 'approved')), '2026-11-27T10:01:00.000-03:00'));
SELECT * FROM pg_temp.o;
-- a rejected attempt changes nothing
SELECT mpqr.apply_merchant_order('main', pg_temp.mo(9001, 'A', 'opened', 100,
       jsonb_build_array(pg_temp.pay(501, 40, 'approved'), pg_temp.pay(502, 60, 'rejected', '2026-11-27T10:02:00.000-03:00')),
       '2026-11-27T10:02:00.000-03:00'));
SELECT * FROM pg_temp.o;
-- closed: paid
SELECT mpqr.apply_merchant_order('main', pg_temp.mo(9001, 'A', 'closed', 100,
       jsonb_build_array(pg_temp.pay(501, 40, 'approved'), pg_temp.pay(502, 60, 'rejected', '2026-11-27T10:02:00.000-03:00'),
                         pg_temp.pay(503, 60, 'approved', '2026-11-27T10:03:00.000-03:00')),
       '2026-11-27T10:03:00.000-03:00'));
SELECT * FROM pg_temp.o;
-- a stale opened snapshot, delivered late, moves nothing back
SELECT mpqr.apply_merchant_order('main', pg_temp.mo(9001, 'A', 'opened', 100,
       jsonb_build_array(pg_temp.pay(501, 40, 'approved')), '2026-11-27T10:01:00.000-03:00'));
SELECT * FROM pg_temp.o;
SELECT id, status FROM mpqr.merchant_orders;
SELECT id, status, status_detail, amount FROM mpqr.payments ORDER BY id;
SELECT from_status, to_status, reason FROM mpqr.order_events ORDER BY id;

-- another collector's merchant order, or an unknown reference: nothing
SELECT mpqr_put_order('P2', 'B', 50) > 0 AS put;
SELECT mpqr.set_status(id, 'published') FROM mpqr.orders WHERE external_reference = 'B';
SELECT mpqr.apply_merchant_order('main', pg_temp.mo(9002, 'B', 'closed', 50,
       jsonb_build_array(pg_temp.pay(504, 50, 'approved')), collector => 999));
SELECT mpqr.apply_merchant_order('main', pg_temp.mo(9003, 'NOBODY', 'closed', 50,
       jsonb_build_array(pg_temp.pay(505, 50, 'approved'))));
SELECT ref, status, paid FROM pg_temp.o WHERE ref = 'B';
SELECT count(*) AS merchant_orders FROM mpqr.merchant_orders WHERE id IN (9002, 9003) AND order_id IS NOT NULL;

-- a closed merchant order whose total differs is an anomaly, not a payment
SELECT mpqr.apply_merchant_order('main', pg_temp.mo(9004, 'B', 'closed', 5,
       jsonb_build_array(pg_temp.pay(506, 5, 'approved'))));
SELECT ref, status, paid FROM pg_temp.o WHERE ref = 'B';
-- then the real payment, and a second closed merchant order: a double payment
SELECT mpqr.apply_merchant_order('main', pg_temp.mo(9005, 'B', 'closed', 50,
       jsonb_build_array(pg_temp.pay(507, 50, 'approved'))));
SELECT mpqr.apply_merchant_order('main', pg_temp.mo(9006, 'B', 'closed', 50,
       jsonb_build_array(pg_temp.pay(508, 50, 'approved'))));
SELECT ref, status, paid, mp_order_id FROM pg_temp.o WHERE ref = 'B';
-- a chargeback after paid
SELECT mpqr.apply_merchant_order('main', pg_temp.mo(9005, 'B', 'closed', 50,
       jsonb_build_array(pg_temp.pay(507, 50, 'charged_back', '2026-11-28T10:00:00.000-03:00')),
       '2026-11-28T10:00:00.000-03:00'));
SELECT kind, external_reference, status, detail - 'key' AS detail FROM mpqr.anomalies_open ORDER BY id;

-- late money: a superseded order paid afterwards becomes paid, and is flagged
SELECT mpqr_put_order('P1', 'C', 30) > 0 AS put;
SELECT mpqr.set_status(id, 'cancelled', 'superseded') FROM mpqr.orders WHERE external_reference = 'C';
SELECT mpqr.apply_merchant_order('main', pg_temp.mo(9007, 'C', 'closed', 30,
       jsonb_build_array(pg_temp.pay(509, 30, 'approved'))));
SELECT * FROM pg_temp.o WHERE ref = 'C';
SELECT kind FROM mpqr.anomalies_open WHERE external_reference = 'C';

-- Orders API: processed with a discount is paid, with the shortfall flagged
SELECT mpqr_put_order('P3', 'D', 50) > 0 AS put;
UPDATE mpqr.orders SET mp_order_id = 'ORDTST01' WHERE external_reference = 'D';
SELECT mpqr.set_status(id, 'published') FROM mpqr.orders WHERE external_reference = 'D';
SELECT mpqr.apply_order('ord', '{"id":"ORDTST01","status":"created","user_id":"222"}');
SELECT ref, status, paid FROM pg_temp.o WHERE ref = 'D';
SELECT mpqr.apply_order('ord', '{"id":"ORDTST01","status":"processed","status_detail":"accredited","user_id":"222",
    "total_paid_amount":"47.28","transactions":{"payments":[{"id":"PAY01","amount":"50.00","paid_amount":"47.28",
    "status":"processed","status_detail":"accredited"}]}}');
SELECT ref, status, paid FROM pg_temp.o WHERE ref = 'D';
SELECT kind, detail - 'key' AS detail FROM mpqr.anomalies_open WHERE external_reference = 'D';
-- another user's order document is ignored; then refunded
SELECT mpqr.apply_order('ord', '{"id":"ORDTST01","status":"refunded","user_id":"333"}');
SELECT ref, status FROM pg_temp.o WHERE ref = 'D';
SELECT mpqr.apply_order('ord', '{"id":"ORDTST01","status":"refunded","user_id":"222","total_paid_amount":"47.28",
    "transactions":{"refunds":[{"id":"REF01","amount":"47.28","status":"processed"}]}}');
SELECT ref, status, paid, refunded FROM pg_temp.o WHERE ref = 'D';

-- Orders API: money on an earlier attempt's order still counts
SELECT mpqr_put_order('P3', 'G', 20) > 0 AS put;
UPDATE mpqr.orders SET mp_order_id = 'ORDTST-G1' WHERE external_reference = 'G';
SELECT mpqr.set_status(id, 'published') FROM mpqr.orders WHERE external_reference = 'G';
SELECT mpqr.apply_order('ord', '{"id":"ORDTST-G1","status":"expired","user_id":"222"}');
SELECT mpqr_retry_order('G') > 0 AS retried;
UPDATE mpqr.orders SET mp_order_id = 'ORDTST-G2' WHERE external_reference = 'G';
SELECT mpqr.set_status(id, 'published') FROM mpqr.orders WHERE external_reference = 'G';
SELECT ref, status, mp_order_id, (SELECT previous_mp_order_ids FROM mpqr.orders WHERE external_reference = 'G')
  FROM pg_temp.o WHERE ref = 'G';
-- the earlier order's expiry again changes nothing; its payment does
SELECT mpqr.apply_order('ord', '{"id":"ORDTST-G1","status":"expired","user_id":"222"}');
SELECT ref, status FROM pg_temp.o WHERE ref = 'G';
SELECT mpqr.apply_order('ord', '{"id":"ORDTST-G1","status":"processed","user_id":"222","total_paid_amount":"20.00",
    "transactions":{"payments":[{"id":"PAYG1","amount":"20.00","paid_amount":"20.00","status":"processed"}]}}');
SELECT ref, status, reason, paid, mp_order_id FROM pg_temp.o WHERE ref = 'G';
SELECT kind, detail ->> 'earlier_attempt' AS earlier FROM mpqr.anomalies_open WHERE external_reference = 'G';
-- and the current attempt is cancelled at Mercado Pago, so it is not paid twice
SELECT kind, purpose, method, path FROM mpqr.requests
 WHERE order_id = (SELECT id FROM mpqr.orders WHERE external_reference = 'G') AND kind = 'cancel';

-- receipts: never paid, unknown, paid
SELECT mpqr_put_order('P2', 'E', 10) > 0 AS put;
SELECT mpqr_receipt('E');
SELECT mpqr_receipt('NOPE');
SELECT mpqr_receipt('A') LIKE '%RECEIPT%Reference: A%503  approved  60.00%' AS receipt;

-- mpqr_reconcile() queues a check of what is open (F), or watched for late money (E,
-- superseded by F)
SELECT mpqr_put_order('P2', 'F', 10) > 0 AS put;
SELECT mpqr.set_status(id, 'published') FROM mpqr.orders WHERE external_reference = 'F';
SELECT mpqr_reconcile();
SELECT kind, subject FROM mpqr.requests
 WHERE (kind LIKE 'fetch%' OR kind LIKE 'search%') AND subject NOT LIKE 'window:%' ORDER BY id;
-- and starts a catch-up of each account with orders
SELECT account, window_end IS NOT NULL AS running FROM mpqr.catchups ORDER BY account;
SELECT mpqr_reconcile('1 hour');

-- clean up for the next test
DROP EXTENSION mpqr CASCADE;
CREATE EXTENSION mpqr;
