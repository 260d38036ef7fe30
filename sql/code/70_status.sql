-- mpqr_status(): the workers, the listen address and port, the queues,
-- counters and last errors, as name/value rows.

CREATE FUNCTION mpqr.worker_status()
RETURNS TABLE (name text, value text)
AS 'MODULE_PATHNAME', 'mpqr_worker_status'
LANGUAGE C VOLATILE STRICT PARALLEL SAFE;

-- mpqr_status() returns table (name text, value text)
CREATE FUNCTION mpqr_status()
RETURNS TABLE (name text, value text)
LANGUAGE sql VOLATILE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT 'database_served',
           (pg_catalog.current_database() = pg_catalog.current_setting('mpqr.database'))::text
    UNION ALL
    SELECT w.name, w.value FROM mpqr.worker_status() w
    UNION ALL
    SELECT 'requests_' || s, count(q.id)::text
      FROM unnest(ARRAY['queued', 'inflight', 'failed']) s
      LEFT JOIN mpqr.requests q ON q.state = s
     GROUP BY s
    UNION ALL
    SELECT 'requests_due', count(*)::text FROM mpqr.requests q WHERE q.state = 'queued' AND q.not_before <= now()
    UNION ALL
    SELECT 'oldest_queued_request_age', (now() - min(q.created_at))::text
      FROM mpqr.requests q WHERE q.state IN ('queued', 'inflight')
    UNION ALL
    SELECT 'orders_' || s, count(o.id)::text
      FROM unnest(ARRAY['queued', 'published', 'paid', 'cancelled', 'expired', 'failed', 'refunded']) s
      LEFT JOIN mpqr.orders o ON o.status = s
     GROUP BY s
    UNION ALL
    SELECT 'orders_stuck', count(*)::text FROM mpqr.orders o WHERE o.status = 'queued' AND o.error IS NOT NULL
    UNION ALL
    SELECT 'refunds_in_process', count(*)::text FROM mpqr.refunds f WHERE f.status IN ('processing', 'in_process')
    UNION ALL
    SELECT 'account_paused:' || a.name, coalesce(a.pause_reason, 'paused') || ' since ' || a.paused_at
      FROM mpqr.accounts a WHERE a.paused_at IS NOT NULL
    UNION ALL
    SELECT 'accounts_paused', count(*)::text FROM mpqr.accounts a WHERE a.paused_at IS NOT NULL
    UNION ALL
    SELECT 'accounts_restored_copy', count(*)::text FROM mpqr.accounts a WHERE NOT mpqr.account_is_here(a)
    UNION ALL
    SELECT 'catchup_covered_until:' || c.account, coalesce(c.covered_until::text, 'never')
      FROM mpqr.catchups c
    UNION ALL
    SELECT 'notifications', count(*)::text FROM mpqr.notifications
    UNION ALL
    SELECT 'notifications_unknown_account', count(*)::text FROM mpqr.notifications n WHERE n.account IS NULL
    UNION ALL
    SELECT 'anomalies_open', count(*)::text FROM mpqr.anomalies an WHERE an.resolved_at IS NULL
    UNION ALL
    (SELECT 'last_request_error', format('%s %s %s: %s (%s)', q.method, q.kind, coalesce(q.subject, ''),
                                         q.error, coalesce(q.finished_at, q.sent_at))
       FROM mpqr.requests q
      WHERE q.error IS NOT NULL AND q.state IN ('failed', 'queued')
      ORDER BY coalesce(q.finished_at, q.sent_at) DESC NULLS LAST
      LIMIT 1)
$$;
