-- Kinds create_store and create_pos: making a store and a POS (with its QR)
-- at Mercado Pago.  A creation that Mercado Pago answers 409, or "already
-- used", or whose answer was lost, first searches by external id (adopt):
-- what exists is adopted, so nothing is ever created twice.

-- What a creation sends now (see mpqr.request_target).  A POS's body is
-- built when it is claimed: its store exists at Mercado Pago by then, but
-- may not have when the POS was added.
CREATE FUNCTION mpqr.create_target(r mpqr.requests, a mpqr.accounts,
                                   OUT method text, OUT path text, OUT body text, OUT headers text[])
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
BEGIN
    IF r.phase = 'adopt' THEN
        method := 'GET';
        path := CASE r.kind
            WHEN 'create_store' THEN '/users/' || a.collector_id || '/stores/search?external_id=' || mpqr.urlencode(r.subject)
            ELSE '/pos?external_id=' || mpqr.urlencode(r.subject) END;
        RETURN;
    END IF;
    method := r.method;
    path := r.path;
    body := r.body;
    IF r.kind = 'create_pos' THEN
        SELECT mpqr.pos_body(p, coalesce(s.mp_store_id, p.mp_store_id)) INTO body
          FROM mpqr.pos p
          LEFT JOIN mpqr.stores s ON s.account = p.account AND s.external_id = p.store_external_id
         WHERE p.external_id = r.subject;
    END IF;
END
$$;

-- A store or POS was created (201), or found by its external id (adopt).
CREATE FUNCTION mpqr.create_done(r mpqr.requests, j jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
BEGIN
    IF r.kind = 'create_store' THEN
        UPDATE mpqr.stores s SET mp_store_id = j ->> 'id', status = 'created', error = NULL, updated_at = now()
         WHERE s.account = r.account AND s.external_id = r.subject;
        UPDATE mpqr.pos p SET mp_store_id = j ->> 'id', updated_at = now()
         WHERE p.account = r.account AND p.store_external_id = r.subject;
    ELSE
        UPDATE mpqr.pos p
           SET mp_pos_id = (j ->> 'id')::bigint, status = 'created', error = NULL,
               mp_store_id = coalesce(j ->> 'store_id', p.mp_store_id),
               uuid = j ->> 'uuid', qr = j -> 'qr', qr_image = j #>> '{qr,image}',
               qr_template_document = j #>> '{qr,template_document}',
               qr_template_image = j #>> '{qr,template_image}',
               qr_code = j ->> 'qr_code', updated_at = now()
         WHERE p.external_id = r.subject;
    END IF;
END
$$;

-- A store or POS creation was refused.
CREATE FUNCTION mpqr.create_failed(r mpqr.requests, http_status integer, body text) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    msg text := format('Mercado Pago answered %s: %s', http_status, left(coalesce(body, ''), 500));
BEGIN
    IF r.kind = 'create_store' THEN
        UPDATE mpqr.stores s SET status = 'failed', error = msg, updated_at = now()
         WHERE s.account = r.account AND s.external_id = r.subject;
        UPDATE mpqr.pos p SET status = 'failed', error = 'its store could not be created: ' || msg, updated_at = now()
         WHERE p.account = r.account AND p.store_external_id = r.subject AND p.status = 'queued';
        UPDATE mpqr.requests q SET state = 'cancelled', finished_at = now(), error = 'its store could not be created'
          FROM mpqr.pos p
         WHERE q.kind = 'create_pos' AND q.state = 'queued' AND q.account = r.account
           AND p.external_id = q.subject AND p.store_external_id = r.subject;
    ELSE
        UPDATE mpqr.pos p SET status = 'failed', error = msg, updated_at = now()
         WHERE p.external_id = r.subject;
    END IF;
END
$$;

-- What an answer means for a creation (see mpqr.kind_answer).
CREATE FUNCTION mpqr.create_answer(r mpqr.requests, class text, http_status integer, body text, error text)
RETURNS mpqr.request_transition
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    j jsonb := CASE WHEN http_status = 404 THEN NULL ELSE mpqr.try_jsonb(body) END;
    hit jsonb;
BEGIN
    IF class = 'success' THEN
        PERFORM mpqr.create_done(r, j);
        RETURN NULL;
    ELSIF class = 'final' AND r.phase IS NULL
          AND (http_status = 409 OR (http_status = 400 AND body ILIKE '%already%used%')) THEN
        RETURN mpqr.transition(r, 'queued', 'adopt', '0', http_status, body, 'exists already: adopting it');
    ELSIF class = 'final' THEN
        PERFORM mpqr.create_failed(r, http_status, body);
        RETURN NULL;
    ELSIF class <> 'phase' THEN
        RETURN NULL;
    END IF;
    -- adopt: what the search by external id found
    SELECT e INTO hit FROM jsonb_array_elements(
               CASE jsonb_typeof(j -> 'results') WHEN 'array' THEN j -> 'results' ELSE '[]' END) e
     WHERE e ->> 'external_id' = r.subject
     LIMIT 1;
    IF hit IS NOT NULL THEN
        PERFORM mpqr.create_done(r, hit);
        RETURN mpqr.transition(r, 'done', r.phase, NULL, http_status, body, 'adopted what exists at Mercado Pago');
    ELSIF r.http_status IN (400, 409) THEN
        -- refused as a duplicate, yet not found: give up
        PERFORM mpqr.create_failed(r, r.http_status, r.response);
        RETURN mpqr.transition(r, 'failed', r.phase, NULL, http_status, body, 'refused, and not found by its external id');
    END IF;
    -- a lost answer, and nothing there: create it again
    RETURN mpqr.transition(r, 'queued', NULL, '0', http_status, body, NULL);
END
$$;
