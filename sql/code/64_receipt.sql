-- mpqr_receipt(): the printable receipt of a paid order.

-- An amount as a receipt prints it.
CREATE FUNCTION mpqr.receipt_amount(amount numeric) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
AS $$
BEGIN
    RETURN to_char(amount, 'FM999999999990.00');
END
$$;

-- mpqr_receipt(external_reference, account) returns a plain-text receipt of
-- a paid order: merchant, POS, items, total, payments, and refunds if any.
CREATE FUNCTION mpqr_receipt(external_reference text, account text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    o mpqr.orders;
    a mpqr.accounts;
    p mpqr.pos;
    s mpqr.stores;
    w integer := 44;
    head text;
    items text;
    pays text;
    refunds text;
    tail text;
BEGIN
    PERFORM mpqr.require(external_reference, 'external_reference');
    IF (SELECT count(*) FROM mpqr.orders x
         WHERE x.external_reference = mpqr_receipt.external_reference
           AND (mpqr_receipt.account IS NULL OR x.account = mpqr_receipt.account)) > 1 THEN
        RAISE EXCEPTION 'order "%" exists in more than one account', external_reference
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Name the account with account => ''...''.';
    END IF;
    SELECT * INTO o FROM mpqr.orders x
     WHERE x.external_reference = mpqr_receipt.external_reference
       AND (mpqr_receipt.account IS NULL OR x.account = mpqr_receipt.account);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'order "%" does not exist', mpqr.excerpt(external_reference)
            USING ERRCODE = 'undefined_object';
    END IF;
    IF o.status NOT IN ('paid', 'refunded') THEN
        RAISE EXCEPTION 'order "%" was never paid', external_reference
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('Its status is %s.', o.status);
    END IF;
    SELECT * INTO a FROM mpqr.accounts x WHERE x.name = o.account;
    SELECT * INTO p FROM mpqr.pos x WHERE x.external_id = o.pos_id;
    SELECT * INTO s FROM mpqr.stores x WHERE x.account = o.account AND x.external_id = p.store_external_id;

    head := concat_ws(E'\n',
        repeat('=', w), lpad('RECEIPT', (w + 7) / 2), repeat('=', w),
        format('Merchant:  %s (collector %s)', a.name, a.collector_id),
        format('Store:     %s', coalesce(s.name || ' (' || p.store_external_id || ')', p.store_external_id)),
        format('POS:       %s (%s)', p.external_id, p.name),
        format('Reference: %s', o.external_reference),
        format('Paid at:   %s', to_char(o.paid_at, 'YYYY-MM-DD HH24:MI:SS TZ')),
        repeat('-', w));
    SELECT string_agg(rpad(format('%s x %s', it ->> 'quantity', it ->> 'title'), w - 14)
                      || lpad(mpqr.receipt_amount((it ->> 'unit_price')::numeric * (it ->> 'quantity')::numeric), 14),
                      E'\n' ORDER BY n)
      INTO items
      FROM jsonb_array_elements(o.items) WITH ORDINALITY AS e(it, n);
    SELECT string_agg(format('  %s  %s  %s  %s', x.id, x.status, mpqr.receipt_amount(x.amount),
                             coalesce(to_char(x.approved_at, 'YYYY-MM-DD HH24:MI:SS TZ'), '')),
                      E'\n' ORDER BY x.approved_at NULLS LAST, x.id)
      INTO pays
      FROM mpqr.payments x WHERE x.order_id = o.id;
    SELECT string_agg(format('  %s  %s  %s  %s', coalesce(x.mp_refund_id, '(pending)'),
                             coalesce(x.payment_id, o.mp_order_id), mpqr.receipt_amount(x.amount), x.status),
                      E'\n' ORDER BY x.id)
      INTO refunds
      FROM mpqr.refunds x WHERE x.order_id = o.id;
    tail := concat_ws(E'\n',
        repeat('-', w),
        rpad('TOTAL ' || o.currency, w - 14) || lpad(mpqr.receipt_amount(o.total_amount), 14),
        rpad('PAID', w - 14) || lpad(mpqr.receipt_amount(o.paid_amount), 14),
        CASE WHEN o.refunded_amount > 0
             THEN rpad('REFUNDED', w - 14) || lpad(mpqr.receipt_amount(o.refunded_amount), 14) END,
        repeat('-', w), 'Payments:', pays,
        'Mercado Pago order: ' || o.mp_order_id,
        CASE WHEN refunds IS NOT NULL THEN 'Refunds:' || E'\n' || refunds END,
        repeat('=', w), format('Status: %s', upper(o.status)), repeat('=', w));
    RETURN concat_ws(E'\n', head, items, tail);
END
$$;
