-- The reading kinds: fetches of a merchant order, payment, order or
-- chargeback; searches of merchant orders and payments; and the check of a
-- token (GET /users/me).  Their answers are applied by the reconciliation
-- (60_reconcile.sql); nothing here changes an order by itself.
--
-- mpqr.queue_fetch() is how notifications, answers and the sweep ask for
-- news.  It coalesces with a fetch of the same resource still queued, and
-- debounces: news about a resource whose fetch ran less than
-- mpqr.fetch_debounce ago makes one more fetch after that window, however
-- many notifications arrive.  Fetches of resources mpqr has not seen yet,
-- unless mpqr itself needs them (trusted), share one budget: a base of
-- mpqr.unknown_fetch_rate per second, plus mpqr.unknown_fetch_per_order
-- for every order that starts waiting for news (mpqr.fund_unknown_fetches),
-- so that a real rush of payments is never throttled while forged
-- notifications still cannot buy unlimited calls.

-- The kind that fetches a resource, by the name notifications use.
CREATE FUNCTION mpqr.fetch_kind(resource text) RETURNS text
LANGUAGE sql IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE
AS $$
    SELECT CASE resource
        WHEN 'merchant_order' THEN 'fetch_merchant_order'
        WHEN 'payment' THEN 'fetch_payment'
        WHEN 'order' THEN 'fetch_order'
        WHEN 'chargeback' THEN 'fetch_chargeback'
        WHEN 'search' THEN 'search_payments'
        WHEN 'token' THEN 'check_token' END
$$;

-- The path of a search of the payments of a reference, from an offset.
CREATE FUNCTION mpqr.payments_search_path(reference text, page_offset integer) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
AS $$
BEGIN
    RETURN '/v1/payments/search?external_reference=' || mpqr.urlencode(reference)
           || '&sort=date_created&criteria=asc&limit=100&offset=' || page_offset;
END
$$;

-- A fetch's path, by kind and the id of its resource.
CREATE FUNCTION mpqr.fetch_path(kind text, resource_id text) RETURNS text
LANGUAGE sql IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE
AS $$
    SELECT CASE kind
        WHEN 'fetch_merchant_order' THEN '/merchant_orders/' || mpqr.urlencode(resource_id)
        WHEN 'fetch_payment' THEN '/v1/payments/' || mpqr.urlencode(resource_id)
        WHEN 'fetch_order' THEN '/v1/orders/' || mpqr.urlencode(resource_id)
        WHEN 'fetch_chargeback' THEN '/v1/chargebacks/' || mpqr.urlencode(resource_id)
        WHEN 'search_merchant_orders' THEN '/merchant_orders/search?external_reference=' || mpqr.urlencode(resource_id)
        WHEN 'search_payments' THEN mpqr.payments_search_path(resource_id, 0)
        WHEN 'check_token' THEN '/users/me'
    END
$$;

-- Give the budget of fetches of unknown resources what orders that start
-- waiting for news may need, and cap it at what the orders waiting now may
-- need (waiting NULL: no new cap).
CREATE FUNCTION mpqr.fund_unknown_fetches(new_orders integer, waiting bigint DEFAULT NULL) RETURNS void
LANGUAGE sql VOLATILE PARALLEL UNSAFE
AS $$
    SELECT mpqr.add_tokens('unknown_fetch',
                           new_orders * mpqr.setting('unknown_fetch_per_order')::double precision,
                           waiting * mpqr.setting('unknown_fetch_per_order')::double precision)
$$;

-- mpqr.queue_fetch(account, resource, resource_id, rate_limited, trusted)
--
-- Ask for news of a merchant order, payment, order or chargeback (or a
-- search of the payments of a reference: resource 'search').  Returns what
-- it did - queued, coalesced, debounced, rate_limited or ignored - and the
-- request that will bring the news.  rate_limited: the notification's
-- signature did not verify, so the fetch takes from the budget even for a
-- resource mpqr knows.  trusted: mpqr itself needs it (a follow-up of an
-- answer, a check of its own order); never rate limited.
CREATE FUNCTION mpqr.queue_fetch(account text, resource text, resource_id text,
                                 rate_limited boolean DEFAULT false, trusted boolean DEFAULT false,
                                 OUT outcome text, OUT request_id bigint)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    k text := mpqr.fetch_kind(resource);
    last record;
    window_len interval;
    due timestamptz := now();
BEGIN
    outcome := 'ignored';
    IF account IS NULL OR k IS NULL OR resource_id IS NULL OR resource_id = ''
       OR length(resource_id) > 128 OR resource_id ~ '[[:cntrl:]]' THEN
        RETURN;
    END IF;
    IF resource IN ('merchant_order', 'payment', 'chargeback') AND resource_id !~ '^[0-9]{1,20}$' THEN
        RETURN;
    END IF;
    SELECT q.id, q.state, q.sent_at, q.finished_at INTO last
      FROM mpqr.requests q
     WHERE q.account = queue_fetch.account AND q.kind = k AND q.subject = resource_id
       AND q.kind IN ('fetch_merchant_order', 'fetch_payment', 'fetch_order', 'fetch_chargeback',
                      'search_merchant_orders', 'search_payments', 'check_token')
     ORDER BY q.id DESC
     LIMIT 1;
    IF last.state = 'queued' THEN
        outcome := 'coalesced';
        request_id := last.id;
        RETURN;
    END IF;
    window_len := mpqr.setting_interval('fetch_debounce');
    IF last.state = 'inflight' OR last.finished_at > now() - window_len THEN
        due := greatest(now(), coalesce(last.sent_at, now()) + window_len);
    END IF;
    IF NOT trusted
       AND (rate_limited OR NOT mpqr.known_resource(account, k, resource_id))
       AND NOT mpqr.take_token('unknown_fetch', mpqr.setting('unknown_fetch_rate')::double precision) THEN
        outcome := 'rate_limited';
        RETURN;
    END IF;
    request_id := mpqr.enqueue(account, k, 'GET', mpqr.fetch_path(k, resource_id),
                               subject => resource_id, not_before => due);
    outcome := CASE WHEN due > now() THEN 'debounced' ELSE 'queued' END;
END
$$;

-- Check an account's token with GET /users/me, at most once per
-- mpqr.fetch_debounce and with one pending at a time.  A fetch that the
-- token may not read says only "not yours, or no such id"; this tells
-- whether the token itself still works.
CREATE FUNCTION mpqr.queue_token_check(account text) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
BEGIN
    PERFORM mpqr.queue_fetch(account, 'token', 'token', trusted => true);
END
$$;

-- Queue the next page of a search, from the offset the answer reached.
CREATE FUNCTION mpqr.queue_next_page(r mpqr.requests, next_offset integer) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
BEGIN
    PERFORM mpqr.enqueue(r.account, r.kind, 'GET',
                         regexp_replace(r.path, '([?&]offset=)[0-9]*', '\1' || next_offset),
                         subject => r.subject);
END
$$;

-- What an answer means for a read (see mpqr.kind_answer): a 2xx is applied;
-- anything final changes nothing (the answer stays on the request).
CREATE FUNCTION mpqr.fetch_answer(r mpqr.requests, class text, http_status integer, body text, error text)
RETURNS mpqr.request_transition
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    j jsonb;
    e jsonb;
    page_offset integer;
    n integer;
    total integer;
BEGIN
    IF r.subject LIKE 'window:%' AND class IN ('final', 'gave_up') THEN
        PERFORM mpqr.catchup_failed(r.account, coalesce(error, 'HTTP ' || http_status));
    END IF;
    IF class <> 'success' THEN
        RETURN NULL;
    END IF;
    j := mpqr.try_jsonb(body);
    IF j IS NULL THEN
        RETURN NULL;
    END IF;
    page_offset := coalesce(substring(r.path FROM '[?&]offset=([0-9]+)')::integer, 0);
    CASE r.kind
        WHEN 'fetch_merchant_order' THEN
            PERFORM mpqr.apply_merchant_order(r.account, j);
        WHEN 'fetch_payment' THEN
            PERFORM mpqr.apply_payment(r.account, j);
        WHEN 'fetch_order' THEN
            PERFORM mpqr.apply_order(r.account, j);
        WHEN 'fetch_chargeback' THEN
            PERFORM mpqr.apply_chargeback(r.account, j);
        WHEN 'search_merchant_orders' THEN
            FOR e IN SELECT value FROM jsonb_array_elements(
                         CASE jsonb_typeof(j -> 'elements') WHEN 'array' THEN j -> 'elements' ELSE '[]' END)
            LOOP
                PERFORM mpqr.apply_merchant_order(r.account, e);
            END LOOP;
            n := CASE jsonb_typeof(j -> 'elements') WHEN 'array' THEN jsonb_array_length(j -> 'elements') ELSE 0 END;
            total := mpqr.api_numeric(j -> 'total')::integer;
            IF n > 0 AND page_offset + n < total THEN
                PERFORM mpqr.queue_next_page(r, page_offset + n);
            END IF;
        WHEN 'search_payments' THEN
            n := mpqr.apply_payment_search(r.account, j);
            total := mpqr.api_numeric(j #> '{paging,total}')::integer;
            IF r.subject LIKE 'window:%' THEN
                PERFORM mpqr.catchup_page(r, j, page_offset, n, total);
            ELSIF n > 0 AND page_offset + n < total THEN
                PERFORM mpqr.queue_next_page(r, page_offset + n);
            END IF;
        ELSE
            NULL;   -- check_token: the token works
    END CASE;
    RETURN NULL;
END
$$;
