-- Notifications: every request POSTed to the listener's /notifications, kept
-- raw, with what mpqr made of it.
--
-- The listener worker only moves bytes.  For each complete request it calls
-- mpqr.ingest_notification() inside its batch transaction, and answers the
-- HTTP status that function returns once the batch has committed:
--   200  stored (whatever it names, even nothing, or an unknown collector);
--   401  a wrong webhook signature under mpqr.signature_policy = 'enforce':
--        nothing is stored;
--   400  never returned here: a body that is not JSON makes the cast below
--        raise a data exception, and the listener then answers that request
--        400 and stores the rest of its batch.
--
-- Notifications are only triggers.  The BEFORE INSERT trigger queues a fetch
-- of the resource named (mpqr.queue_fetch() coalesces it with a fetch still
-- pending, and rate-limits resources mpqr does not know); nothing changes
-- state until the API's answer to that fetch is recorded.  Each delivery,
-- repeats included, gets its own row, and a repeat never suppresses a fetch.

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
        CHECK (signature IN ('valid', 'stale', 'invalid', 'unverified')),
    CONSTRAINT notifications_triggered_check
        CHECK (triggered IN ('queued', 'coalesced', 'rate_limited', 'ignored', 'nothing'))
);
COMMENT ON TABLE mpqr.notifications IS 'Every notification received by the mpqr listener, raw, with its signature verdict and what it triggered';
COMMENT ON COLUMN mpqr.notifications.account IS 'From account= in the query, else the body''s user_id, else the default account; NULL for an unknown collector';
COMMENT ON COLUMN mpqr.notifications.query IS 'Query arguments, name to value (URL-decoded)';
COMMENT ON COLUMN mpqr.notifications.headers IS 'Request headers, lowercased name to value (credentials left out)';
COMMENT ON COLUMN mpqr.notifications.body_json IS 'The body parsed; NULL when there was no body';
COMMENT ON COLUMN mpqr.notifications.topic IS 'IPN topic or webhook type: merchant_order, payment, order, topic_merchant_order_wh, chargebacks, ...';
COMMENT ON COLUMN mpqr.notifications.resource_id IS 'The id named: IPN id, webhook data.id (query, else body), else the body''s id for topic_merchant_order_wh';
COMMENT ON COLUMN mpqr.notifications.signature IS 'valid, stale (valid but old), invalid (stored under signature_policy = record), or unverified (nothing to verify: an IPN, a webhook without x-signature, or an account without webhook_secret)';
COMMENT ON COLUMN mpqr.notifications.triggered IS 'What mpqr.queue_fetch() did: queued, coalesced, rate_limited or ignored; nothing when no fetch was asked';
COMMENT ON COLUMN mpqr.notifications.fetch_request IS 'The pending fetch in mpqr.requests that this notification queued or joined';
REVOKE ALL ON TABLE mpqr.notifications FROM PUBLIC;
REVOKE ALL ON SEQUENCE mpqr.notifications_id_seq FROM PUBLIC;

-- Retention deletes by age; mpqr_status() counts the unknown collectors.
-- There is no index on account: accounts are renamed or deleted rarely
-- enough that a scan then is cheaper than an index on every insert.
CREATE INDEX notifications_received_at ON mpqr.notifications (received_at);
CREATE INDEX notifications_resource ON mpqr.notifications (resource_id) WHERE resource_id IS NOT NULL;
CREATE INDEX notifications_unknown_account ON mpqr.notifications (received_at) WHERE account IS NULL;

SELECT pg_catalog.pg_extension_config_dump('mpqr.notifications', '');
SELECT pg_catalog.pg_extension_config_dump('mpqr.notifications_id_seq', '');

-- mpqr.signature_verdict(secret, x_signature, data_id, request_id, tolerance)
-- Judge an x-signature header: valid, stale, invalid, unsigned (no header) or
-- unverified (no secret).  The manifest is id:{data_id};request-id:{request_id};ts:{ts};
-- without the pairs whose value is NULL; data_id is tried as given and
-- lowercased.  A NULL tolerance never makes a signature stale.
CREATE FUNCTION mpqr.signature_verdict(secret text, x_signature text, data_id text,
                                       request_id text, tolerance interval)
RETURNS text
AS 'MODULE_PATHNAME', 'mpqr_signature_verdict'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL SAFE;
REVOKE ALL ON FUNCTION mpqr.signature_verdict(text, text, text, text, interval) FROM PUBLIC;

-- mpqr.ingest_notification(query_names, query_values, header_names, header_values, body)
-- Store one request received by the listener; return the HTTP status to
-- answer.  Header names arrive lowercased; body is NULL when there was none.
--
-- The forms Mercado Pago uses:
--   IPN               ?topic=merchant_order&id=N (or payment, chargebacks),
--                     body optional; any x-signature is ignored (MP documents
--                     that it cannot be validated);
--   webhook           ?data.id=X&type=T, JSON body, x-signature, x-request-id;
--   body-only webhook only mpqr's ?account=, the type and id in the body
--                     (topic_merchant_order_wh has its id at the top level).
CREATE FUNCTION mpqr.ingest_notification(query_names text[], query_values text[],
                                         header_names text[], header_values text[],
                                         body text)
RETURNS integer
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    q jsonb := jsonb_object(coalesce(query_names, '{}'), coalesce(query_values, '{}'));
    h jsonb := jsonb_object(coalesce(header_names, '{}'), coalesce(header_values, '{}'))
               - '{authorization,proxy-authorization,cookie}'::text[];
    j jsonb;
    o jsonb;
    is_ipn boolean := q ? 'topic';
    is_webhook boolean;
    v_topic text;
    v_resource text;
    v_user_text text;
    v_user bigint;
    v_account text;
    v_secret text;
    v_xsig text := h ->> 'x-signature';
    v_signature text;
    v_retry integer;
BEGIN
    -- A body that is not JSON raises a data exception here: the listener
    -- answers this request 400 and stores the rest of its batch.
    IF body IS NOT NULL AND btrim(body, E' \t\r\n') <> '' THEN
        j := body::jsonb;
        IF jsonb_typeof(j) = 'object' THEN
            o := j;
        END IF;
    END IF;

    v_topic := coalesce(q ->> 'topic', q ->> 'type', o ->> 'type', o ->> 'topic');
    is_webhook := NOT is_ipn AND (q ? 'data.id' OR q ? 'type' OR o ? 'type');

    IF is_ipn THEN
        -- IPN: ?id=, else the last segment of the body's resource URL
        v_resource := coalesce(nullif(q ->> 'id', ''),
                               substring(o ->> 'resource' FROM '([^/?]+)/?(\?.*)?$'));
    ELSE
        v_resource := coalesce(nullif(q ->> 'data.id', ''), o #>> '{data,id}',
                               CASE WHEN v_topic = 'topic_merchant_order_wh' THEN o ->> 'id' END);
    END IF;

    v_user_text := o ->> 'user_id';
    IF v_user_text ~ '^[0-9]{1,18}$' THEN
        v_user := v_user_text::bigint;
    END IF;

    -- The account (design section 7): account= if it names one of ours,
    -- else the collector the body names (none when it is not ours), else
    -- the default account.
    IF q ? 'account' THEN
        SELECT a.name INTO v_account FROM mpqr.accounts a WHERE a.name = q ->> 'account';
    END IF;
    IF v_account IS NULL THEN
        IF v_user_text IS NOT NULL THEN
            SELECT a.name INTO v_account FROM mpqr.accounts a WHERE a.collector_id = v_user;
        ELSE
            SELECT a.name INTO v_account FROM mpqr.accounts a WHERE a.is_default;
        END IF;
    END IF;

    -- The signature: only signed webhooks can be verified.  Everything else
    -- (an IPN, signed or not, or an unsigned QR webhook) is stored as
    -- unverified, as design section 7 says; whether an x-signature came at
    -- all shows in headers.
    IF NOT is_webhook OR v_xsig IS NULL OR btrim(v_xsig) = '' THEN
        v_signature := 'unverified';
    ELSE
        SELECT a.webhook_secret INTO v_secret FROM mpqr.accounts a WHERE a.name = v_account;
        v_signature := mpqr.signature_verdict(v_secret, v_xsig, q ->> 'data.id',
                                              h ->> 'x-request-id',
                                              mpqr.setting_interval('signature_tolerance', '300'));
    END IF;
    IF v_signature = 'invalid' AND mpqr.setting('signature_policy', 'enforce') = 'enforce' THEN
        RETURN 401;
    END IF;

    IF h ->> 'x-retry' ~ '^[0-9]{1,9}$' THEN
        v_retry := (h ->> 'x-retry')::integer;
    END IF;

    INSERT INTO mpqr.notifications (account, query, headers, body, body_json, topic,
                                    resource_id, action, user_id, signature, request_id, retry)
    VALUES (v_account, q, h, ingest_notification.body, j, v_topic,
            v_resource, o ->> 'action', v_user, v_signature, h ->> 'x-request-id', v_retry);
    RETURN 200;
END
$$;
REVOKE ALL ON FUNCTION mpqr.ingest_notification(text[], text[], text[], text[], text) FROM PUBLIC;

-- Queue the fetch a notification asks for, and record what happened.
--
-- merchant_order and topic_merchant_order_wh fetch the merchant order,
-- payment the payment, order the Orders API order, and a chargeback the
-- payment its body names.  Unknown topics, notifications that name no
-- resource and unknown collectors trigger nothing.  A notification stored
-- with an invalid signature (signature_policy = record) still fetches, under
-- the global rate limit of unknown resources.  This is a BEFORE trigger so
-- that the outcome lands in the row without a second write; the row's id is
-- therefore not passed to mpqr.queue_fetch().
CREATE FUNCTION mpqr.notification_queue_fetch()
RETURNS trigger
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    resource text;
    resource_id text := NEW.resource_id;
BEGIN
    resource := CASE NEW.topic
        WHEN 'merchant_order' THEN 'merchant_order'
        WHEN 'topic_merchant_order_wh' THEN 'merchant_order'
        WHEN 'payment' THEN 'payment'
        WHEN 'order' THEN 'order'
        WHEN 'chargebacks' THEN 'payment'
        WHEN 'topic_chargebacks_wh' THEN 'payment'
    END;
    IF NEW.topic IN ('chargebacks', 'topic_chargebacks_wh') THEN
        IF jsonb_typeof(NEW.body_json) = 'object' THEN
            resource_id := coalesce(NEW.body_json #>> '{data,payment_id}',
                                    NEW.body_json ->> 'payment_id');
        ELSE
            resource_id := NULL;
        END IF;
    END IF;

    NEW.triggered := 'nothing';
    NEW.fetch_request := NULL;
    IF resource IS NULL OR resource_id IS NULL OR NEW.account IS NULL THEN
        RETURN NEW;
    END IF;

    NEW.triggered := mpqr.queue_fetch(NEW.account, resource, resource_id, NULL,
                                      rate_limited => NEW.signature = 'invalid');
    IF NEW.triggered IN ('queued', 'coalesced') THEN
        SELECT r.id INTO NEW.fetch_request
          FROM mpqr.requests r
         WHERE r.state = 'queued' AND r.kind LIKE 'fetch%' AND r.kind = 'fetch_' || resource
           AND r.account = NEW.account AND r.subject = resource_id
         ORDER BY r.id DESC
         LIMIT 1;
    END IF;
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION mpqr.notification_queue_fetch() FROM PUBLIC;

CREATE TRIGGER notifications_queue_fetch
    BEFORE INSERT ON mpqr.notifications
    FOR EACH ROW EXECUTE FUNCTION mpqr.notification_queue_fetch();
