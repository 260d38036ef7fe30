-- Stores and points of sale (POS), with the ids and QR links Mercado Pago gave them.

CREATE TABLE mpqr.stores (
    account         text NOT NULL REFERENCES mpqr.accounts (name) ON UPDATE CASCADE,
    external_id     text NOT NULL,
    name            text,
    location        jsonb,
    business_hours  jsonb,
    mp_store_id     text,
    status          text NOT NULL,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, external_id),
    CONSTRAINT stores_status_check CHECK (status IN ('queued', 'created', 'linked', 'failed'))
);
COMMENT ON TABLE mpqr.stores IS 'Stores of each account; mp_store_id is Mercado Pago''s id once created';

CREATE TABLE mpqr.pos (
    external_id          text PRIMARY KEY,
    account              text NOT NULL REFERENCES mpqr.accounts (name) ON UPDATE CASCADE,
    store_external_id    text NOT NULL,
    name                 text NOT NULL,
    category             integer,
    status               text NOT NULL,
    mp_pos_id            bigint,
    mp_store_id          text,
    uuid                 text,
    qr                   jsonb,
    qr_image             text,
    qr_template_document text,
    qr_template_image    text,
    qr_code              text,
    error                text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pos_status_check CHECK (status IN ('queued', 'created', 'linked', 'failed'))
);
COMMENT ON TABLE mpqr.pos IS 'Points of sale: the POS external id is the pos_id of mpqr_put_order()';
COMMENT ON COLUMN mpqr.pos.qr IS 'The qr object Mercado Pago returned (image, template_document, template_image)';
