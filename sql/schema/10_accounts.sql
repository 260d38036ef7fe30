-- Accounts: the Mercado Pago collectors (merchants) this database serves.
--
-- origin_system and origin_database say in which cluster (its system
-- identifier) and database the account was configured.  A database restored
-- somewhere else carries the original's values, and the sender leaves such
-- accounts alone until mpqr_confirm_copy() adopts them: a staging copy never
-- acts with production's tokens.

CREATE TABLE mpqr.accounts (
    name            text PRIMARY KEY,
    collector_id    bigint NOT NULL UNIQUE,
    access_token    text NOT NULL,
    webhook_secret  text,
    site_id         text NOT NULL,
    api             text NOT NULL,
    is_default      boolean NOT NULL DEFAULT false,
    paused_at       timestamptz,
    pause_reason    text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- 0.2.0
    origin_system   bigint NOT NULL,
    origin_database text NOT NULL,
    CONSTRAINT accounts_name_check CHECK (name ~ '^[A-Za-z0-9_-]{1,64}$'),
    CONSTRAINT accounts_collector_check CHECK (collector_id > 0),
    CONSTRAINT accounts_site_check CHECK (site_id IN ('MLA', 'MLB', 'MLM', 'MLU', 'MLC', 'MCO', 'MPE')),
    CONSTRAINT accounts_api_check CHECK (api IN ('instore', 'orders'))
);
CREATE UNIQUE INDEX accounts_one_default ON mpqr.accounts (is_default) WHERE is_default;
COMMENT ON TABLE mpqr.accounts IS 'Mercado Pago accounts (collectors); holds access tokens, never readable by PUBLIC';
COMMENT ON COLUMN mpqr.accounts.origin_system IS 'System identifier of the cluster where the account was configured';
COMMENT ON COLUMN mpqr.accounts.origin_database IS 'Database where the account was configured';
REVOKE ALL ON TABLE mpqr.accounts FROM PUBLIC;
