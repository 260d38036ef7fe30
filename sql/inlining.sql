-- Every SQL-language function of mpqr can be inlined by the planner (see the
-- note in sql/code/00_helpers.sql): called with arguments that are not
-- constants, its name is gone from the plan.  Lists those that are not.
CREATE FUNCTION pg_temp.not_inlined() RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    f record;
    args text;
    line text;
    found boolean;
BEGIN
    FOR f IN
        SELECT p.oid, p.proname, p.proretset, p.proargtypes
        FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace
        JOIN pg_language l ON l.oid = p.prolang
        WHERE n.nspname = 'mpqr' AND l.lanname = 'sql' AND p.prokind = 'f'
        ORDER BY p.proname, p.oid
    LOOP
        SELECT coalesce(string_agg(format('(CASE WHEN g > 5 THEN NULL END)::%s',
                                          format_type(t, NULL)), ', ' ORDER BY i), '')
        INTO args
        FROM unnest(f.proargtypes::oid[]) WITH ORDINALITY AS a(t, i);
        found := false;
        FOR line IN EXECUTE format(
            CASE WHEN f.proretset
                 THEN 'EXPLAIN (VERBOSE, COSTS OFF) SELECT * FROM generate_series(1, 2) g, LATERAL mpqr.%I(%s) r'
                 ELSE 'EXPLAIN (VERBOSE, COSTS OFF) SELECT mpqr.%I(%s) FROM generate_series(1, 2) g' END,
            f.proname, args)
        LOOP
            found := found OR line LIKE '%mpqr.' || f.proname || '(%';
        END LOOP;
        IF found THEN
            RETURN NEXT f.proname;
        END IF;
    END LOOP;
END
$$;
SELECT count(*) > 20 AS many_sql_functions
FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
WHERE p.pronamespace = 'mpqr'::regnamespace AND l.lanname = 'sql';
SELECT * FROM pg_temp.not_inlined();
-- the check itself sees a function that cannot be inlined
CREATE FUNCTION mpqr.not_inlinable(x int) RETURNS int
LANGUAGE sql STABLE AS $$ SELECT (SELECT x + 1) $$;
SELECT * FROM pg_temp.not_inlined();
DROP FUNCTION mpqr.not_inlinable(int);
