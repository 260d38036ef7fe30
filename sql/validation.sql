-- Validation at the door: every SQL function refuses nonsense with a clear
-- error and a SQLSTATE, quoting at most a short prefix of a bad value.
-- Each probe runs in its own subtransaction; the result shows its SQLSTATE,
-- its message, and whether the message stayed short.
SET client_min_messages = warning;
SELECT mpqr_add_account('main', 123456789, 'APP_USR-main', NULL, 'MLA', 'instore');
SELECT mpqr_add_account('ord', 222333444, 'APP_USR-ord', 'webhook-secret-1', 'MLA', 'orders');
SELECT mpqr_add_pos('P1', 'SUC001', 'Caja 1', register => false);
SELECT mpqr_add_pos('P2', 'SUC001', 'Caja 2', account => 'ord', register => false);

CREATE FUNCTION pg_temp.probe(call text, OUT state text, OUT short boolean, OUT message text)
LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        EXECUTE call;
        state := 'ok';
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT;
        short := length(message) <= 200;
        message := left(message, 90);
    END;
END
$$;

CREATE TEMP TABLE probes (n serial, call text);
INSERT INTO probes (call) VALUES
    -- amounts
    ($$SELECT mpqr_put_order('P1', 'A1', 'Infinity')$$),
    ($$SELECT mpqr_put_order('P1', 'A2', '-Infinity')$$),
    ($$SELECT mpqr_put_order('P1', 'A3', 'NaN')$$),
    ($$SELECT mpqr_put_order('P1', 'A4', 1e308)$$),
    ($$SELECT mpqr_put_order('P1', 'A5', 0)$$),
    ($$SELECT mpqr_put_order('P1', 'A6', -5)$$),
    ($$SELECT mpqr_put_order('P1', 'A7', 10.001)$$),
    ($$SELECT mpqr_put_order('P1', 'A8', NULL)$$),
    ($$SELECT mpqr_put_order('P1', 'A9', 10, items => '[{"title":"x","unit_price":"Infinity","quantity":1}]')$$),
    ($$SELECT mpqr_put_order('P1', 'A10', 10, items => '[{"title":"x","unit_price":10,"quantity":1e308}]')$$),
    ($$SELECT mpqr_put_order('P1', 'A11', 10, items => '[{"title":"x","unit_price":10,"quantity":-1}]')$$),
    ($$SELECT mpqr_refund('nosuch', 'Infinity')$$),
    ($$SELECT mpqr_refund('nosuch', 1e308)$$),
    -- references, POS and store ids that would change a URL's path
    ($$SELECT mpqr_put_order('x?y=1#frag', 'B1', 10)$$),
    ($$SELECT mpqr_put_order('..', 'B2', 10)$$),
    ($$SELECT mpqr_put_order('P1', repeat('r', 10000000), 10)$$),
    ($$SELECT mpqr_put_order('P1', E'R\n1', 10)$$),
    ($$SELECT mpqr_add_store('main', 'x?y=1#frag', 'S', '{}')$$),
    ($$SELECT mpqr_add_store('main', '..', 'S', '{}')$$),
    ($$SELECT mpqr_add_pos('a b', 'SUC001', 'Caja', register => false)$$),
    ($$SELECT mpqr_add_pos('POS1', '../x', 'Caja', register => false)$$),
    ($$SELECT mpqr_add_pos('POS1', 'SUC001', repeat('n', 10000000), register => false)$$),
    -- texts and items
    ($$SELECT mpqr_put_order('P1', 'C1', 10, title => repeat('t', 10000000))$$),
    ($$SELECT mpqr_put_order('P1', 'C2', 10, description => repeat('d', 10000))$$),
    ($$SELECT mpqr_put_order('P1', 'C3', 10, title => E'a\u0001b')$$),
    ($$SELECT mpqr_put_order('P1', 'C4', 10, items => '{"not":"an array"}')$$),
    ($$SELECT mpqr_put_order('P1', 'C5', 10, items => '[]')$$),
    ($$SELECT mpqr_put_order('P1', 'C6', 10, items => (SELECT jsonb_agg(jsonb_build_object('title', 'x', 'unit_price', 0.001, 'quantity', 1)) FROM generate_series(1, 10000)))$$),
    ($$SELECT mpqr_put_order('P1', 'C7', 10, items => '[{"title":"x","unit_price":10,"quantity":1}]')$$),
    -- expiry and mode
    ($$SELECT mpqr_put_order('P1', 'D1', 10, expires_in => '10 seconds')$$),
    ($$SELECT mpqr_put_order('P1', 'D2', 10, expires_in => '-1 minute')$$),
    ($$SELECT mpqr_put_order('P1', 'D3', 10, expires_in => 'infinity')$$),
    ($$SELECT mpqr_put_order('P1', 'D4', 10, mode => 'qr')$$),
    ($$SELECT mpqr_put_order('P1', 'D5', 10, mode => 'dynamic')$$),
    ($$SELECT mpqr_put_order('P2', 'D6', 10, expires_in => '200 days')$$),
    -- accounts, tokens and secrets
    ($$SELECT mpqr_add_account('t1', 1, E'APP_USR-\u0001x')$$),
    ($$SELECT mpqr_add_account('t2', 1, repeat('t', 10000000))$$),
    ($$SELECT mpqr_add_account('t3', 1, '')$$),
    ($$SELECT mpqr_add_account('t4', 1, 'APP_USR-x', repeat('s', 10000))$$),
    ($$SELECT mpqr_add_account('t5', -1, 'APP_USR-x')$$),
    ($$SELECT mpqr_add_account('t6', 1, 'APP_USR-x', NULL, 'XXX')$$),
    ($$SELECT mpqr_add_account('t7', 1, 'APP_USR-x', NULL, 'MLA', 'v3')$$),
    ($$SELECT mpqr_add_account(E'a\nb', 1, 'APP_USR-x')$$),
    ($$SELECT mpqr_set_account('typo', access_token => 'APP_USR-secret-token')$$),
    ($$SELECT mpqr_set_account('main', access_token => E'APP_USR-\tx')$$),
    -- lookups
    ($$SELECT mpqr_cancel_order(repeat('r', 10000000))$$),
    ($$SELECT mpqr_retry_order(NULL)$$),
    ($$SELECT mpqr_receipt('nosuch')$$),
    ($$SELECT mpqr_reconcile('-1 hour')$$);

SELECT n, p.state, p.short, p.message
  FROM probes, LATERAL pg_temp.probe(call) p
 ORDER BY n;
-- nothing was left behind by the probes that failed
SELECT count(*) AS orders FROM mpqr.orders;
SELECT count(*) AS accounts FROM mpqr.accounts;
