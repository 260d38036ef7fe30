-- Notifications: every request POSTed to the listener's /notifications, kept
-- raw, with what mpqr made of it.

CREATE TABLE mpqr.notifications (
    id              bigserial PRIMARY KEY,
    received_at     timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    account         text REFERENCES mpqr.accounts (name) ON UPDATE CASCADE ON DELETE SET NULL,
    query           jsonb NOT NULL DEFAULT '{}',
    headers         jsonb NOT NULL DEFAULT '{}',
    body            text,
    body_json       jsonb,
    topic           text,
    resource_id     text,
    action          text,
    user_id         bigint,
    signature       text NOT NULL,
    request_id      text,
    retry           integer,
    triggered       text NOT NULL DEFAULT 'nothing',
    fetch_request   bigint,
    CONSTRAINT notifications_signature_check
        CHECK (signature IN ('valid', 'stale', 'invalid', 'unsigned', 'unverified')),
    CONSTRAINT notifications_triggered_check
        CHECK (triggered IN ('queued', 'coalesced', 'debounced', 'rate_limited', 'ignored', 'nothing'))
);
COMMENT ON TABLE mpqr.notifications IS 'Every notification received by the mpqr listener, raw, with its signature verdict and what it triggered';
COMMENT ON COLUMN mpqr.notifications.account IS 'From account= in the query, else the body''s user_id, else the default account; NULL for an unknown collector';
COMMENT ON COLUMN mpqr.notifications.query IS 'Query arguments, name to value (URL-decoded)';
COMMENT ON COLUMN mpqr.notifications.headers IS 'The request headers of an allow-list, lowercased name to value';
COMMENT ON COLUMN mpqr.notifications.body_json IS 'The body parsed; NULL when there was no body';
COMMENT ON COLUMN mpqr.notifications.topic IS 'IPN topic or webhook type: merchant_order, payment, order, topic_merchant_order_wh, chargebacks, ...';
COMMENT ON COLUMN mpqr.notifications.resource_id IS 'The id named: IPN id, webhook data.id (query, else body), else the body''s id for topic_merchant_order_wh';
COMMENT ON COLUMN mpqr.notifications.signature IS 'valid, stale (valid but old), invalid, unsigned (a webhook without x-signature for an account with a secret), or unverified (nothing to verify: an IPN, or an account without webhook_secret)';
COMMENT ON COLUMN mpqr.notifications.triggered IS 'What the notification asked of the outbox: queued, coalesced (a fetch was pending), debounced (a fetch ran moments ago: one more follows), rate_limited, ignored; nothing when no fetch was asked';
COMMENT ON COLUMN mpqr.notifications.fetch_request IS 'The fetch in mpqr.requests that this notification queued or joined';
REVOKE ALL ON TABLE mpqr.notifications FROM PUBLIC;
REVOKE ALL ON SEQUENCE mpqr.notifications_id_seq FROM PUBLIC;

-- Retention deletes by age; mpqr_status() counts the unknown collectors.
CREATE INDEX notifications_received_at ON mpqr.notifications (received_at);
CREATE INDEX notifications_resource ON mpqr.notifications (resource_id) WHERE resource_id IS NOT NULL;
CREATE INDEX notifications_unknown_account ON mpqr.notifications (received_at) WHERE account IS NULL;
