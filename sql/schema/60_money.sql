-- What Mercado Pago's API said about the money: merchant orders, payments,
-- and the anomalies that need a person.

CREATE TABLE mpqr.merchant_orders (
    id                  bigint PRIMARY KEY,
    account             text NOT NULL REFERENCES mpqr.accounts (name) ON UPDATE CASCADE,
    order_id            bigint REFERENCES mpqr.orders (id) ON DELETE SET NULL,
    external_reference  text,
    status              text,
    order_status        text,
    total_amount        numeric,
    paid_amount         numeric,
    refunded_amount     numeric,
    last_updated        timestamptz,
    body                jsonb NOT NULL,
    fetched_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX merchant_orders_reference ON mpqr.merchant_orders (account, external_reference);
CREATE INDEX merchant_orders_order ON mpqr.merchant_orders (order_id);
COMMENT ON TABLE mpqr.merchant_orders IS 'Every merchant order fetched from Mercado Pago (instore)';

CREATE TABLE mpqr.payments (
    id                  text PRIMARY KEY,
    account             text NOT NULL REFERENCES mpqr.accounts (name) ON UPDATE CASCADE,
    order_id            bigint REFERENCES mpqr.orders (id) ON DELETE SET NULL,
    external_reference  text,
    merchant_order_id   bigint,
    mp_order_id         text,
    reference_id        text,
    status              text NOT NULL,
    status_detail       text,
    amount              numeric,
    amount_refunded     numeric NOT NULL DEFAULT 0,
    currency            text,
    operation_type      text,
    approved_at         timestamptz,
    last_modified       timestamptz,
    body                jsonb,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_order ON mpqr.payments (order_id);
CREATE INDEX payments_reference ON mpqr.payments (external_reference);
COMMENT ON TABLE mpqr.payments IS 'Payments as Mercado Pago reports them; status is MP''s word, verbatim';
COMMENT ON COLUMN mpqr.payments.external_reference IS 'The reference of the order it paid';

CREATE TABLE mpqr.anomalies (
    id          bigserial PRIMARY KEY,
    order_id    bigint REFERENCES mpqr.orders (id) ON DELETE CASCADE,
    kind        text NOT NULL,
    detail      jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    resolution  text,
    CONSTRAINT anomalies_kind_check CHECK (kind IN ('late_payment', 'double_payment', 'amount_mismatch',
                                                    'shortfall', 'chargeback', 'mediation', 'claim'))
);
CREATE UNIQUE INDEX anomalies_once ON mpqr.anomalies (order_id, kind, (detail ->> 'key'));
COMMENT ON TABLE mpqr.anomalies IS 'Money events that need a person: see the view mpqr.anomalies_open';
