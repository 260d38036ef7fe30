-- The outbox's life cycle, driven by hand: claims and synthetic outcomes
-- through every phase of every kind, as the sender would hand them over.
\set SHOW_CONTEXT never
\set VERBOSITY terse
SET client_min_messages = error;

SELECT mpqr_add_account('main', 123456789, 'APP_USR-main', NULL, 'MLA', 'instore');
SELECT mpqr_add_account('ord', 222, 'APP_USR-ord', NULL, 'MLA', 'orders');
SELECT mpqr_add_pos('P1', 'S1', 'Caja 1', register => false);
SELECT mpqr_add_pos('P2', 'S1', 'Caja 2', register => false);
SELECT mpqr_add_pos('P3', 'S3', 'Caja 3', account => 'ord', register => false);
SELECT mpqr_add_pos('P4', 'S3', 'Caja 4', account => 'ord', register => false);

-- claim what is due, as sender incarnation 1 (or another)
CREATE FUNCTION pg_temp.claim(incarnation bigint DEFAULT 1)
RETURNS TABLE (id bigint, kind text, phase text, method text, path text, headers text[])
LANGUAGE plpgsql AS $$
DECLARE
    claimed mpqr.claimed_request[] := ARRAY(SELECT c FROM mpqr.claim_requests(100, incarnation) c);
BEGIN
    RETURN QUERY SELECT c.id, q.kind, q.phase, c.method, c.path, c.headers
                   FROM unnest(claimed) c JOIN mpqr.requests q ON q.id = c.id
                  ORDER BY c.id;
END
$$;
-- hand over one outcome for the request in flight (there is one), for its
-- current attempt; say what became of the request
CREATE FUNCTION pg_temp.answer(status integer, body text DEFAULT NULL,
                               retry_after integer DEFAULT NULL, incarnation bigint DEFAULT 1)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    q mpqr.requests;
BEGIN
    SELECT * INTO STRICT q FROM mpqr.requests x WHERE x.state = 'inflight';
    PERFORM mpqr.record_responses(ARRAY[ROW(q.id, q.attempts, status, body, NULL, retry_after)::mpqr.request_outcome],
                                  incarnation);
    RETURN (SELECT x.state || coalesce(' ' || x.phase, '') FROM mpqr.requests x WHERE x.id = q.id);
END
$$;
-- what became of the requests
CREATE VIEW pg_temp.r AS
SELECT id, kind, phase, state, failures, http_status, not_before > now() AS later, error
  FROM mpqr.requests ORDER BY id;
CREATE VIEW pg_temp.o AS
SELECT external_reference AS ref, status, status_reason AS reason, paid_amount AS paid, mp_order_id, error
  FROM mpqr.orders ORDER BY id;
-- the time it takes: what is delayed becomes due now
CREATE FUNCTION pg_temp.later_is_now() RETURNS void LANGUAGE sql AS $$
    UPDATE mpqr.requests SET not_before = now() WHERE state = 'queued';
    UPDATE mpqr.requests SET main_sent_at = now() - interval '1 hour' WHERE main_sent_at IS NOT NULL;
$$;

-- publish (instore): the PUT, answered 204, publishes
SELECT mpqr_put_order('P1', 'A', 10) > 0 AS put;
SELECT * FROM pg_temp.claim();
-- nothing else is due; a second claim finds nothing
SELECT count(*) FROM pg_temp.claim();
SELECT pg_temp.answer(204);
SELECT * FROM pg_temp.r;
SELECT * FROM pg_temp.o;

-- a 503 may have been applied: the POS is checked before any re-send, after
-- a backoff; it shows this order, so the publish is done
SELECT mpqr_put_order('P2', 'B', 20) > 0 AS put;
SELECT id, method FROM pg_temp.claim();
SELECT pg_temp.answer(503, '{"message":"unavailable"}', retry_after => 30);
SELECT * FROM pg_temp.r ORDER BY id DESC LIMIT 1;
SELECT count(*) AS not_before_retry_after FROM mpqr.requests
 WHERE state = 'queued' AND not_before >= now() + interval '29 seconds';
SELECT pg_temp.later_is_now();
SELECT * FROM pg_temp.claim();
SELECT pg_temp.answer(200, '[{"external_reference":"B"}]');
SELECT * FROM pg_temp.r ORDER BY id DESC LIMIT 1;
SELECT * FROM pg_temp.o WHERE ref = 'B';

-- no answer at all (a dropped connection): the POS shows nothing yet, and
-- the lost PUT could still arrive, so it looks again later; then the
-- payments of the reference; then, nothing paid, the PUT again
SELECT mpqr_put_order('P1', 'C', 30) > 0 AS put;
SELECT id, method FROM pg_temp.claim();
SELECT pg_temp.answer(0);
SELECT * FROM pg_temp.r ORDER BY id DESC LIMIT 1;
UPDATE mpqr.requests SET not_before = now() WHERE state = 'queued';
SELECT id, phase, method FROM pg_temp.claim();
SELECT pg_temp.answer(404, '{"error":"point_of_sale_in_store_order_not_found"}');
SELECT * FROM pg_temp.r ORDER BY id DESC LIMIT 1;
-- looked at again soon, and again while the PUT could still arrive
SELECT not_before - now() BETWEEN interval '0' AND interval '2 seconds' AS soon
  FROM mpqr.requests WHERE state = 'queued';
UPDATE mpqr.requests SET not_before = now() WHERE state = 'queued';
SELECT id, phase, method FROM pg_temp.claim();
SELECT pg_temp.answer(404, '{"error":"point_of_sale_in_store_order_not_found"}');
SELECT * FROM pg_temp.r ORDER BY id DESC LIMIT 1;
SELECT pg_temp.later_is_now();
SELECT id, phase, method FROM pg_temp.claim();
SELECT pg_temp.answer(404);
SELECT id, phase, method, path FROM pg_temp.claim();
SELECT pg_temp.answer(200, '{"paging":{"total":0,"limit":100,"offset":0},"results":[]}');
SELECT id, phase, method FROM pg_temp.claim();
SELECT pg_temp.answer(204);
SELECT * FROM pg_temp.r ORDER BY id DESC LIMIT 1;
-- C replaced A on P1
SELECT * FROM pg_temp.o WHERE ref IN ('A', 'C');

-- the POS shows another order after a lost answer: never sent again, so as
-- not to replace it
SELECT mpqr_put_order('P2', 'D', 40) > 0 AS put;
SELECT id FROM pg_temp.claim();
SELECT pg_temp.answer(502);
SELECT pg_temp.later_is_now();
SELECT id, phase FROM pg_temp.claim();
SELECT pg_temp.answer(200, '[{"external_reference":"SOMEONE-ELSE"}]');
SELECT id, phase FROM pg_temp.claim();
SELECT pg_temp.answer(200, '{"paging":{"total":0},"results":[]}');
SELECT * FROM pg_temp.r ORDER BY id DESC LIMIT 1;
SELECT * FROM pg_temp.o WHERE ref = 'D';

-- the POS still shows the order this one replaces (C, ours): the lost PUT
-- did not land, so it is sent again
SELECT mpqr_put_order('P1', 'C2', 35) > 0 AS put;
SELECT id FROM pg_temp.claim();
SELECT pg_temp.answer(503);
SELECT pg_temp.later_is_now();
SELECT id, phase FROM pg_temp.claim();
SELECT pg_temp.answer(200, '[{"external_reference":"C"}]');
SELECT id, phase FROM pg_temp.claim();
SELECT pg_temp.answer(200, '{"paging":{"total":0},"results":[]}');
SELECT id, phase, method FROM pg_temp.claim();
SELECT pg_temp.answer(204);
SELECT * FROM pg_temp.o WHERE ref IN ('C', 'C2');

-- found paid by the check: not sent again, and the payment decides
SELECT mpqr_put_order('P2', 'E', 50) > 0 AS put;
SELECT id FROM pg_temp.claim();
SELECT pg_temp.answer(504);
SELECT pg_temp.later_is_now();
SELECT id, phase FROM pg_temp.claim();
SELECT pg_temp.answer(200, '[]');
SELECT id, phase FROM pg_temp.claim();
SELECT pg_temp.answer(200, '{"paging":{"total":1},"results":[{"id":7001,"collector_id":123456789,
    "external_reference":"E","status":"approved","status_detail":"accredited","transaction_amount":50,
    "currency_id":"ARS","date_approved":"2026-12-01T10:00:00.000-04:00",
    "date_last_updated":"2026-12-01T10:00:00.000-04:00"}]}');
SELECT * FROM pg_temp.r ORDER BY id DESC LIMIT 1;
SELECT * FROM pg_temp.o WHERE ref = 'E';

-- refused (a 4xx): the order fails, with Mercado Pago's error kept
SELECT mpqr_put_order('P1', 'F', 60) > 0 AS put;
SELECT id FROM pg_temp.claim();
SELECT pg_temp.answer(400, '{"error":"invalid_total_amount","message":"bad","status":400,"cause":[]}');
SELECT * FROM pg_temp.r ORDER BY id DESC LIMIT 1;
SELECT ref, status, reason, error, (SELECT error_body ->> 'error' FROM mpqr.orders WHERE external_reference = 'F') AS mp_error
  FROM pg_temp.o WHERE ref = 'F';

-- retries give up after mpqr.max_attempts: the order stays queued, stuck
SELECT mpqr_put_order('P1', 'G', 70) > 0 AS put;
SELECT id FROM pg_temp.claim();
SELECT pg_temp.answer(503);
SELECT pg_temp.later_is_now();
UPDATE mpqr.requests SET failures = current_setting('mpqr.max_attempts')::integer - 1 WHERE state = 'queued';
SELECT id, phase FROM pg_temp.claim();
SELECT pg_temp.answer(503);
SELECT * FROM pg_temp.r ORDER BY id DESC LIMIT 1;
SELECT * FROM pg_temp.o WHERE ref = 'G';

-- the token refused on a publish: the account is paused, its requests wait;
-- mpqr_set_account() resumes it
SELECT mpqr_put_order('P2', 'H', 80) > 0 AS put;
SELECT id FROM pg_temp.claim();
SELECT pg_temp.answer(401, '{"message":"invalid access token","error":"unauthorized","status":401}');
SELECT * FROM pg_temp.r ORDER BY id DESC LIMIT 1;
SELECT name, paused_at IS NOT NULL AS paused, pause_reason FROM mpqr.accounts WHERE name = 'main';
SELECT count(*) AS claimed_while_paused FROM pg_temp.claim();
SELECT mpqr_set_account('main', access_token => 'APP_USR-main-2');
SELECT id, method FROM pg_temp.claim();
SELECT pg_temp.answer(204);

-- a lease held by a sender that died is recovered at once by the next
-- incarnation, through the check; an outcome of the dead one is ignored
SELECT mpqr_put_order('P1', 'I', 90) > 0 AS put;
SELECT id FROM pg_temp.claim(1);
SELECT id, phase, method FROM pg_temp.claim(2);
SELECT pg_temp.answer(204, incarnation => 1);
SELECT * FROM pg_temp.r WHERE kind = 'publish' AND state = 'inflight';
SELECT pg_temp.answer(200, '[{"external_reference":"I"}]', incarnation => 2);
SELECT requests_recovered > 0 AS counted
  FROM (SELECT value::bigint AS requests_recovered FROM mpqr.worker_status() WHERE name = 'requests_recovered') s;

-- one request per POS at a time, in commit order
SELECT mpqr_put_order('P2', 'J1', 10) > 0 AS put;
SELECT kind FROM pg_temp.claim();
SELECT mpqr_put_order('P2', 'J2', 11) > 0 AS put;
SELECT count(*) AS claimed_while_j1_is_on_the_wire FROM pg_temp.claim();
SELECT pg_temp.answer(204);
SELECT * FROM pg_temp.o WHERE ref IN ('J1', 'J2');
SELECT kind FROM pg_temp.claim();
SELECT pg_temp.answer(204);
SELECT * FROM pg_temp.o WHERE ref IN ('J1', 'J2');

-- the Orders API: the order's id, and the QR data of a dynamic order,
-- kept from the 201; its idempotency key goes with it
SELECT mpqr_put_order('P3', 'K', 100, mode => 'dynamic') > 0 AS put;
SELECT id, method, path FROM pg_temp.claim();
SELECT pg_temp.answer(201, '{"id":"ORDTST01K","status":"created","type_response":{"qr_data":"00020101021226..."}}');
SELECT ref, status, mp_order_id, (SELECT qr_data FROM mpqr.orders WHERE external_reference = 'K') AS qr_data
  FROM pg_temp.o WHERE ref = 'K';
SELECT mpqr.order_payload(o) ->> 'qr_data' AS notified_qr_data FROM mpqr.orders o WHERE external_reference = 'K';

-- cancel (instore): check what the POS shows, then the DELETE
SELECT mpqr_cancel_order('I');
SELECT id, phase, method, path FROM pg_temp.claim();
SELECT pg_temp.answer(200, '[{"external_reference":"I"}]');
SELECT id, phase, method FROM pg_temp.claim();
SELECT pg_temp.answer(204);
SELECT * FROM pg_temp.o WHERE ref = 'I';
-- a DELETE on a POS Mercado Pago does not know leaves nothing to remove
SELECT mpqr_cancel_order('J2');
SELECT id FROM pg_temp.claim();
SELECT pg_temp.answer(200, '[{"external_reference":"J2"}]');
SELECT id, method FROM pg_temp.claim();
SELECT pg_temp.answer(400, '{"error":"pos_obtainment_by_external_id_error","status":400}');
SELECT id, phase FROM pg_temp.claim();
SELECT pg_temp.answer(200, '{"results":[]}');
SELECT * FROM pg_temp.r ORDER BY id DESC LIMIT 1;
SELECT * FROM pg_temp.o WHERE ref = 'J2';

-- cancel (Orders API): transient 409 and 422 are retried; a 409 that says
-- it cannot be cancelled fetches the order, which may have been paid
SELECT mpqr_cancel_order('K');
SELECT id, method, path FROM pg_temp.claim();
SELECT pg_temp.answer(409, '{"errors":[{"code":"processor_communication_error","message":"try again"}]}');
SELECT pg_temp.later_is_now();
SELECT id FROM pg_temp.claim();
SELECT pg_temp.answer(422, '{"errors":[{"code":"unprocessable_entity","message":"later"}]}');
SELECT pg_temp.later_is_now();
SELECT id FROM pg_temp.claim();
SELECT pg_temp.answer(409, '{"errors":[{"code":"cannot_cancel_order","message":"processed"}]}');
SELECT id, phase, method, path FROM pg_temp.claim();
SELECT pg_temp.answer(200, '{"id":"ORDTST01K","status":"processed","status_detail":"accredited","user_id":"222",
    "total_paid_amount":"100.00","transactions":{"payments":[{"id":"PAYK","amount":"100.00","paid_amount":"100.00",
    "status":"processed","status_detail":"accredited"}]}}');
SELECT * FROM pg_temp.r ORDER BY id DESC LIMIT 1;
SELECT * FROM pg_temp.o WHERE ref = 'K';
-- an Orders API order that never got its id: nothing to send (skipped)
SELECT mpqr_put_order('P4', 'L', 5) > 0 AS put;
SELECT id FROM pg_temp.claim();
SELECT pg_temp.answer(503);
SELECT mpqr_cancel_order('L');
SELECT pg_temp.later_is_now();
SELECT id, method FROM pg_temp.claim();
SELECT pg_temp.answer(500);
SELECT pg_temp.later_is_now();
UPDATE mpqr.requests SET state = 'failed', finished_at = now() WHERE kind = 'publish' AND state = 'queued';  -- its retries gave up
SELECT id, kind, method FROM pg_temp.claim();
SELECT pg_temp.answer(-1);
SELECT * FROM pg_temp.r ORDER BY id DESC LIMIT 1;
SELECT * FROM pg_temp.o WHERE ref = 'L';

-- refund (Orders API): processing keeps the amount reserved, and is checked
-- again on a backoff until Mercado Pago says it is done
SELECT mpqr_refund('K', 40) AS asked;
SELECT id, method, path, headers FROM pg_temp.claim();
SELECT pg_temp.answer(201, '{"id":"ORDTST01K","status":"processed","transactions":{"refunds":[{"id":"REFK1","amount":"40.00","status":"processing"}]}}');
SELECT * FROM pg_temp.r ORDER BY id DESC LIMIT 1;
SELECT status, mp_refund_id FROM mpqr.refunds;
SELECT mpqr_refund('K', 61);
SELECT pg_temp.later_is_now();
SELECT id, phase, method, path FROM pg_temp.claim();
SELECT pg_temp.answer(200, '{"id":"ORDTST01K","status":"processed","user_id":"222","total_paid_amount":"100.00",
    "transactions":{"refunds":[{"id":"REFK1","amount":"40.00","status":"processing"}]}}');
SELECT * FROM pg_temp.r ORDER BY id DESC LIMIT 1;
SELECT pg_temp.later_is_now();
SELECT id, phase FROM pg_temp.claim();
SELECT pg_temp.answer(200, '{"id":"ORDTST01K","status":"processed","user_id":"222","total_paid_amount":"100.00",
    "transactions":{"refunds":[{"id":"REFK1","amount":"40.00","status":"processed"}]}}');
SELECT * FROM pg_temp.r ORDER BY id DESC LIMIT 1;
SELECT status, mp_refund_id, amount FROM mpqr.refunds;
SELECT ref, status, (SELECT refunded_amount FROM mpqr.orders WHERE external_reference = 'K') AS refunded
  FROM pg_temp.o WHERE ref = 'K';
-- what the order says now decides: it is fetched (and put aside here)
SELECT kind, subject FROM mpqr.requests WHERE state = 'queued';
UPDATE mpqr.requests SET state = 'done' WHERE state = 'queued';

-- refund (instore): a Pix refund in process, then approved; a refused one
-- frees its amount
SELECT mpqr_refund('E', 20) AS asked;
SELECT id, method, path, headers FROM pg_temp.claim();
SELECT pg_temp.answer(201, '{"id":9101,"payment_id":7001,"amount":20,"status":"in_process"}');
SELECT status, mp_refund_id FROM mpqr.refunds WHERE payment_id = '7001';
SELECT mpqr_refund('E', 31);
SELECT pg_temp.later_is_now();
SELECT id, phase, method, path FROM pg_temp.claim();
SELECT pg_temp.answer(200, '{"id":9101,"payment_id":7001,"amount":20,"status":"approved"}');
SELECT * FROM pg_temp.r ORDER BY id DESC LIMIT 1;
SELECT status FROM mpqr.refunds WHERE payment_id = '7001';
SELECT id, amount, amount_refunded FROM mpqr.payments WHERE id = '7001';
-- the follow-up fetch of the payment that confirms it (put aside here)
SELECT kind, subject FROM mpqr.requests WHERE state = 'queued';
UPDATE mpqr.requests SET state = 'done' WHERE state = 'queued';
SELECT mpqr_refund('E', 30) AS asked;
SELECT id FROM pg_temp.claim() WHERE kind = 'refund';
SELECT pg_temp.answer(400, '{"message":"refund not allowed","error":"bad_request","status":400,"cause":[{"code":2063}]}');
SELECT status, amount, left(error, 40) AS error FROM mpqr.refunds WHERE id = (SELECT max(id) FROM mpqr.refunds);
SELECT mpqr_refund('E', 30) AS asked_again;

-- a store and a POS: created; a duplicate is adopted; a lost answer searches
-- first and creates only if nothing is there
UPDATE mpqr.requests SET state = 'done' WHERE state = 'queued';
SELECT mpqr_add_store('main', 'SUC9', 'Centro', '{"street_number":"1"}');
SELECT mpqr_add_pos('SUC9POS1', 'SUC9', 'Caja');
SELECT id, kind, method, path FROM pg_temp.claim();
SELECT pg_temp.answer(0);
SELECT pg_temp.later_is_now();
SELECT id, kind, phase, path FROM pg_temp.claim();
SELECT pg_temp.answer(200, '{"paging":{"total":0},"results":[]}');
SELECT id, kind, phase FROM pg_temp.claim();
SELECT pg_temp.answer(201, '{"id":"60030440","external_id":"SUC9"}');
SELECT id, kind, phase, path FROM pg_temp.claim();
SELECT pg_temp.answer(409, '{"message":"exists","error":"conflict","status":409}');
SELECT id, kind, phase, path FROM pg_temp.claim();
SELECT pg_temp.answer(200, '{"paging":{"total":1},"results":[{"id":96444399,"external_id":"SUC9POS1","store_id":"60030440",
    "uuid":"u1","qr":{"image":"i.png","template_document":"t.pdf","template_image":"t.png"},"qr_code":"000201"}]}');
SELECT external_id, status, mp_store_id FROM mpqr.stores;
SELECT pos_id, status, mp_pos_id, uuid, qr_image, qr_code FROM mpqr.pos_qr WHERE pos_id = 'SUC9POS1';
-- an answer that cannot be applied counts as a lost answer for its request only
SELECT mpqr_add_pos('SUC9POS2', 'SUC9', 'Caja 2');
SELECT id, kind FROM pg_temp.claim();
SELECT pg_temp.answer(201, '{"id":"not-a-number","external_id":"SUC9POS2"}');
SELECT kind, phase, state, failures, left(error, 50) AS error FROM mpqr.requests WHERE kind = 'create_pos' ORDER BY id DESC LIMIT 1;

-- a fetch that the token may not read (403: not yours, or no such id) pauses
-- nothing; a check of the token decides, and pauses only if it is refused
UPDATE mpqr.requests SET state = 'done' WHERE state = 'queued';
SELECT (mpqr.queue_fetch('main', 'payment', '555000')).outcome;
SELECT id, kind, path FROM pg_temp.claim();
SELECT pg_temp.answer(403, '{"message":"The caller is not authorized to access this resource","status":403,"cause":[{"code":4}]}');
SELECT kind, subject, state, error FROM mpqr.requests WHERE kind IN ('fetch_payment', 'check_token') ORDER BY id;
SELECT name, paused_at IS NOT NULL AS paused FROM mpqr.accounts WHERE name = 'main';
SELECT id, kind, path FROM pg_temp.claim();
SELECT pg_temp.answer(200, '{"id":123456789}');
SELECT name, paused_at IS NOT NULL AS paused FROM mpqr.accounts WHERE name = 'main';
-- a 401 to a fetch of a payment the account knows is the token
SELECT (mpqr.queue_fetch('main', 'payment', '7001')).outcome;
SELECT id, kind FROM pg_temp.claim();
SELECT pg_temp.answer(401, '{"message":"invalid_token"}');
SELECT name, paused_at IS NOT NULL AS paused, pause_reason FROM mpqr.accounts WHERE name = 'main';
SELECT mpqr_set_account('main');

-- fetches: one pending is joined; news right after a fetch makes one more,
-- after the debounce window; an unknown resource spends the budget
UPDATE mpqr.requests SET state = 'done' WHERE state = 'queued';
SELECT (mpqr.queue_fetch('main', 'merchant_order', '880001')).outcome;
SELECT (mpqr.queue_fetch('main', 'merchant_order', '880001')).outcome;
SELECT id, kind, path FROM pg_temp.claim();
SELECT (mpqr.queue_fetch('main', 'merchant_order', '880001')).outcome;
SELECT (mpqr.queue_fetch('main', 'merchant_order', '880001')).outcome;
SELECT count(*) AS fetches, count(*) FILTER (WHERE not_before > now()) AS after_the_window
  FROM mpqr.requests WHERE subject = '880001';
SELECT (mpqr.queue_fetch('main', 'merchant_order', 'not-a-number')).outcome;

-- an Orders API order created, but the answer's body cut short: no id, so
-- it is sent again with the same idempotency key, which gives the order
UPDATE mpqr.requests SET state = 'done' WHERE state IN ('queued', 'inflight');
SELECT mpqr_add_pos('P5', 'S3', 'Caja 5', account => 'ord', register => false);
SELECT mpqr_put_order('P5', 'M', 20) > 0 AS put;
SELECT id, method, path FROM pg_temp.claim();
SELECT pg_temp.answer(201, '{"id":"ORDTST01M","sta');
SELECT ref, status, mp_order_id FROM pg_temp.o WHERE ref = 'M';
SELECT pg_temp.later_is_now();
SELECT id, method, path FROM pg_temp.claim();
SELECT pg_temp.answer(201, '{"id":"ORDTST01M","status":"created"}');
SELECT ref, status, mp_order_id FROM pg_temp.o WHERE ref = 'M';
SELECT count(DISTINCT q.idempotency_key) AS keys, count(*) AS requests FROM mpqr.requests q JOIN mpqr.orders o ON o.id = q.order_id
 WHERE o.external_reference = 'M';

-- clean up for the next test
DROP EXTENSION mpqr CASCADE;
CREATE EXTENSION mpqr;
