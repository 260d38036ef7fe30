-- Notifications: what the listener worker hands over, stored raw, with the
-- fetch each one asks for.
--
-- The listener only moves bytes.  For each complete request it calls
-- mpqr.ingest_notification() inside its batch transaction, and answers the
-- HTTP status that function returns once the batch has committed:
--   200  stored (whatever it names, even nothing, or an unknown collector);
--   401  under mpqr.signature_policy = 'enforce', a webhook whose signature
--        is wrong, or that carries none although its account has a secret:
--        nothing is stored;
--   400  never returned here: a body that is not JSON makes the cast below
--        raise a data exception, and the listener then answers that request
--        400 and stores the rest of its batch.
--
-- Notifications are only triggers.  A notification asks mpqr.queue_fetch()
-- for news of what it names (coalesced with a fetch still pending,
-- debounced, and budgeted for resources mpqr has not seen), and records what
-- that did; nothing changes state until the API's answer is recorded.  Each
-- delivery, repeats included, gets its own row, and a repeat never
-- suppresses a fetch.  No trigger is involved, so a restore of a dump loads
-- the table as it was, and queues nothing.

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

-- The headers kept with a notification: an allow-list.  Nothing else (no
-- credential, no cookie, no header nobody asked for) is ever stored.
CREATE FUNCTION mpqr.kept_headers(header_names text[], header_values text[]) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN (SELECT coalesce(jsonb_object_agg(h.name, left(h.value, 1024)), '{}')
      FROM unnest(header_names, header_values) AS h(name, value)
     WHERE h.name IN ('content-type', 'content-length', 'user-agent', 'x-signature', 'x-request-id',
                      'x-retry', 'x-socket-timeout', 'x-forwarded-for', 'x-real-ip', 'x-forwarded-proto'));
END
$$;

-- What a notification's topic names: the resource to fetch, or a claim.
CREATE FUNCTION mpqr.topic_resource(topic text) RETURNS text
LANGUAGE sql IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE
AS $$
    SELECT CASE topic
        WHEN 'merchant_order' THEN 'merchant_order'
        WHEN 'topic_merchant_order_wh' THEN 'merchant_order'
        WHEN 'payment' THEN 'payment'
        WHEN 'order' THEN 'order'
        WHEN 'chargebacks' THEN 'chargeback'
        WHEN 'topic_chargebacks_wh' THEN 'chargeback'
        WHEN 'topic_claims_integration_wh' THEN 'claim' END
$$;

-- A claim (topic_claims_integration_wh) is shown as an anomaly, once per
-- claim; one whose signature did not verify takes from the budget of
-- unknown resources, so that forged claims cannot flood the list.
CREATE FUNCTION mpqr.note_claim(account text, claim_id text, body jsonb, trusted boolean) RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    payment text := coalesce(body #>> '{data,payment_id}', body ->> 'payment_id', body #>> '{resource,payment_id}');
    order_id bigint;
BEGIN
    IF claim_id IS NULL OR length(claim_id) > 128 THEN
        RETURN 'ignored';
    END IF;
    IF NOT trusted AND NOT mpqr.take_token('unknown_fetch', mpqr.setting('unknown_fetch_rate')::double precision) THEN
        RETURN 'rate_limited';
    END IF;
    SELECT p.order_id INTO order_id FROM mpqr.payments p
     WHERE p.id = payment AND p.account = note_claim.account;
    PERFORM mpqr.flag(order_id, 'claim',
                      jsonb_build_object('key', 'claim:' || claim_id, 'claim_id', claim_id,
                                         'payment_id', payment, 'account', account));
    RETURN 'nothing';
END
$$;

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
    h jsonb := mpqr.kept_headers(header_names, header_values);
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
    v_kind text;
    f record;
    v_triggered text := 'nothing';
    v_fetch bigint;
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
                               CASE WHEN v_topic IN ('topic_merchant_order_wh', 'topic_claims_integration_wh')
                                    THEN o ->> 'id' END);
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

    -- The signature: only webhooks can be verified.  An IPN, signed or not,
    -- is unverified, as MP documents.  A webhook without x-signature is
    -- unsigned when its account has a secret, and unverified otherwise.
    SELECT a.webhook_secret INTO v_secret FROM mpqr.accounts a WHERE a.name = v_account;
    IF NOT is_webhook THEN
        v_signature := 'unverified';
    ELSIF v_xsig IS NULL OR btrim(v_xsig) = '' THEN
        v_signature := CASE WHEN v_secret IS NULL THEN 'unverified' ELSE 'unsigned' END;
    ELSE
        v_signature := mpqr.signature_verdict(v_secret, v_xsig, q ->> 'data.id', h ->> 'x-request-id',
                                              mpqr.setting_interval('signature_tolerance'));
    END IF;
    IF v_signature IN ('invalid', 'unsigned') AND mpqr.setting('signature_policy') = 'enforce' THEN
        RETURN 401;
    END IF;

    IF h ->> 'x-retry' ~ '^[0-9]{1,9}$' THEN
        v_retry := (h ->> 'x-retry')::integer;
    END IF;

    -- what it asks for
    v_kind := mpqr.topic_resource(v_topic);
    IF v_account IS NOT NULL AND v_resource IS NOT NULL AND v_kind IS NOT NULL THEN
        IF v_kind = 'claim' THEN
            v_triggered := mpqr.note_claim(v_account, v_resource, o, v_signature IN ('valid', 'stale'));
        ELSE
            f := mpqr.queue_fetch(v_account, v_kind, v_resource,
                                  rate_limited => v_signature IN ('invalid', 'unsigned'));
            v_triggered := f.outcome;
            v_fetch := f.request_id;
        END IF;
    END IF;

    INSERT INTO mpqr.notifications (account, query, headers, body, body_json, topic,
                                    resource_id, action, user_id, signature, request_id, retry,
                                    triggered, fetch_request)
    VALUES (v_account, q, h, ingest_notification.body, j, left(v_topic, 128),
            left(v_resource, 128), left(o ->> 'action', 128), v_user, v_signature,
            left(h ->> 'x-request-id', 128), v_retry, v_triggered, v_fetch);
    RETURN 200;
END
$$;
