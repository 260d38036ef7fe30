-- Orders, their status history and their refunds.

CREATE TABLE mpqr.orders (
    id                  bigserial PRIMARY KEY,
    account             text NOT NULL REFERENCES mpqr.accounts (name) ON UPDATE CASCADE,
    external_reference  text NOT NULL,
    pos_id              text NOT NULL REFERENCES mpqr.pos (external_id) ON UPDATE CASCADE,
    total_amount        numeric NOT NULL,
    currency            text NOT NULL,
    title               text NOT NULL,
    description         text NOT NULL,
    items               jsonb NOT NULL,
    expires_in          interval NOT NULL,
    expires_at          timestamptz NOT NULL,
    status              text NOT NULL DEFAULT 'queued',
    status_reason       text,
    paid_amount         numeric NOT NULL DEFAULT 0,
    refunded_amount     numeric NOT NULL DEFAULT 0,
    mp_order_id         text,
    previous_mp_order_ids text[],
    idempotency_key     text NOT NULL,
    attempt             integer NOT NULL DEFAULT 1,
    error               text,
    error_body          jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    attempt_at          timestamptz NOT NULL DEFAULT now(),
    published_at        timestamptz,
    paid_at             timestamptz,
    closed_at           timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    last_checked_at     timestamptz,
    -- 0.2.0
    mode                text NOT NULL DEFAULT 'static',
    qr_data             text,
    UNIQUE (account, external_reference),
    CONSTRAINT orders_status_check CHECK (status IN ('queued', 'published', 'paid', 'cancelled',
                                                     'expired', 'failed', 'refunded')),
    CONSTRAINT orders_mode_check CHECK (mode IN ('static', 'dynamic', 'hybrid'))
);
CREATE INDEX orders_pos_open ON mpqr.orders (pos_id) WHERE status IN ('queued', 'published');
CREATE INDEX orders_reference ON mpqr.orders (external_reference);
CREATE INDEX orders_mp_order_id ON mpqr.orders (mp_order_id) WHERE mp_order_id IS NOT NULL;
CREATE INDEX orders_previous_mp_order_ids ON mpqr.orders USING gin (previous_mp_order_ids)
    WHERE previous_mp_order_ids IS NOT NULL;
-- expiry and the sweep walk only what is open, or still watched for late money
CREATE INDEX orders_open ON mpqr.orders (expires_at) WHERE status IN ('queued', 'published');
CREATE INDEX orders_watched ON mpqr.orders ((greatest(expires_at, closed_at)))
    WHERE status IN ('cancelled', 'expired');
CREATE INDEX orders_published_checked ON mpqr.orders (last_checked_at NULLS FIRST, id)
    WHERE status = 'published';
COMMENT ON TABLE mpqr.orders IS 'Orders put on a POS QR, with their status and the money Mercado Pago confirmed';
COMMENT ON COLUMN mpqr.orders.mp_order_id IS 'The Orders API id, or the merchant order that paid it (instore)';
COMMENT ON COLUMN mpqr.orders.previous_mp_order_ids IS 'Orders API ids of earlier attempts, still watched for late money';
COMMENT ON COLUMN mpqr.orders.status_reason IS 'Why the status was reached: superseded, cancelled, rejected, ...';
COMMENT ON COLUMN mpqr.orders.mode IS 'QR mode of the Orders API: static (the POS''s printed QR), dynamic or hybrid';
COMMENT ON COLUMN mpqr.orders.qr_data IS 'The EMVCo string of a dynamic or hybrid order, for the POS to show as a QR';

-- One status change asked of the state machine (mpqr.advance_orders).
CREATE TYPE mpqr.order_move AS (
    order_id    bigint,
    status      text,
    reason      text,
    detail      jsonb
);

CREATE TABLE mpqr.order_events (
    id          bigserial PRIMARY KEY,
    order_id    bigint NOT NULL REFERENCES mpqr.orders (id) ON DELETE CASCADE,
    from_status text,
    to_status   text NOT NULL,
    reason      text,
    detail      jsonb,
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX order_events_order ON mpqr.order_events (order_id, id);
COMMENT ON TABLE mpqr.order_events IS 'Status history of the orders: one row per transition';

CREATE TABLE mpqr.refunds (
    id              bigserial PRIMARY KEY,
    order_id        bigint NOT NULL REFERENCES mpqr.orders (id) ON DELETE CASCADE,
    payment_id      text,
    amount          numeric NOT NULL,
    status          text NOT NULL DEFAULT 'queued',
    mp_refund_id    text,
    idempotency_key text NOT NULL,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT refunds_status_check CHECK (status IN ('queued', 'processing', 'in_process', 'approved',
                                                      'processed', 'rejected', 'failed'))
);
CREATE INDEX refunds_order ON mpqr.refunds (order_id);
COMMENT ON TABLE mpqr.refunds IS 'Refunds asked with mpqr_refund(), each with its own idempotency key and state';
COMMENT ON COLUMN mpqr.refunds.status IS 'queued (not sent yet), processing or in_process (Mercado Pago is still doing it: the amount stays reserved), approved or processed (done), rejected (refused)';
