"""Snapshots of an mpqr database to compare: its catalog and its rows.

catalog() describes every object of the extension (schema mpqr and the
mpqr_* functions in the schema it was created in) by name, never by OID, so
that two databases can be compared: an updated install against a fresh one.
rows() and sequences() give the data, table by table, as sorted JSON texts,
so that a restored database can be compared with its original.
"""

# Each query returns rows of text; the catalog is the dict name -> sorted rows.
CATALOG_QUERIES = {
    "members": """
        SELECT (pg_identify_object(d.classid, d.objid, d.objsubid)).identity
               || ' (' || (pg_identify_object(d.classid, d.objid, d.objsubid)).type || ')'
          FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
         WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' AND e.extname = 'mpqr'""",
    "config_dump": """
        SELECT c::regclass::text || ' ' || coalesce(w, '')
          FROM pg_extension e,
               unnest(e.extconfig, e.extcondition) AS x(c, w)
         WHERE e.extname = 'mpqr'""",
    "schema": """
        SELECT concat_ws(' ', nspname, pg_get_userbyid(nspowner), nspacl)
          FROM pg_namespace WHERE nspname = 'mpqr'""",
    "relations": """
        SELECT concat_ws(' ', c.relname, c.relkind, c.relpersistence, pg_get_userbyid(c.relowner),
                         c.reloptions, c.relacl, c.relrowsecurity)
          FROM pg_class c WHERE c.relnamespace = 'mpqr'::regnamespace""",
    "columns": """
        SELECT concat_ws(' ', c.relname || '.' || a.attname,
                         '#' || row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum),
                         format_type(a.atttypid, a.atttypmod), a.attnotnull,
                         pg_get_expr(ad.adbin, ad.adrelid), a.attidentity, a.attgenerated,
                         co.collname, a.attacl)
          FROM pg_class c
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
          LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
          LEFT JOIN pg_collation co ON co.oid = a.attcollation AND a.attcollation <> 100
         WHERE c.relnamespace = 'mpqr'::regnamespace AND c.relkind <> 'i'""",
    "constraints": """
        SELECT concat_ws(' ', conrelid::regclass, contypid::regtype, conname,
                         pg_get_constraintdef(oid), condeferrable, convalidated)
          FROM pg_constraint WHERE connamespace = 'mpqr'::regnamespace""",
    "indexes": """
        SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE c.relnamespace = 'mpqr'::regnamespace""",
    "sequences": """
        SELECT concat_ws(' ', s.seqrelid::regclass, format_type(s.seqtypid, NULL), s.seqstart,
                         s.seqincrement, s.seqmax, s.seqmin, s.seqcache, s.seqcycle, c.relacl,
                         (SELECT d.refobjid::regclass::text || '.' || a.attname
                              FROM pg_depend d
                              JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                             WHERE d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid
                               AND d.deptype = 'a'))
          FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
         WHERE c.relnamespace = 'mpqr'::regnamespace""",
    "views": """
        SELECT c.relname || ' ' || pg_get_viewdef(c.oid)
          FROM pg_class c WHERE c.relnamespace = 'mpqr'::regnamespace AND c.relkind IN ('v', 'm')""",
    "functions": """
        SELECT concat_ws(' ', p.oid::regprocedure, '->', pg_get_function_result(p.oid), l.lanname,
                         p.prokind, p.provolatile, p.proparallel, p.prosecdef, p.proisstrict,
                         p.proleakproof, p.procost, p.prorows, pg_get_userbyid(p.proowner),
                         p.proconfig, p.proacl, '(' || pg_get_function_arguments(p.oid) || ')',
                         md5(coalesce(p.prosrc, '') || '|' || coalesce(p.probin, '')))
          FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
         WHERE p.pronamespace = 'mpqr'::regnamespace
            OR p.oid IN (SELECT d.objid FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
                          WHERE d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
                            AND e.extname = 'mpqr')""",
    "types": """
        SELECT concat_ws(' ', t.typname, t.typtype, pg_get_userbyid(t.typowner), t.typacl,
                         t.typrelid::regclass, t.typbasetype::regtype)
          FROM pg_type t WHERE t.typnamespace = 'mpqr'::regnamespace""",
    "triggers": """
        SELECT concat_ws(' ', pg_get_triggerdef(t.oid), t.tgenabled)
          FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         WHERE c.relnamespace = 'mpqr'::regnamespace AND NOT t.tgisinternal""",
    "rules_policies": """
        SELECT 'rule ' || r.rulename || ' ' || pg_get_ruledef(r.oid)
          FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
         WHERE c.relnamespace = 'mpqr'::regnamespace AND r.rulename <> '_RETURN'
        UNION ALL
        SELECT 'policy ' || p.polname FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
         WHERE c.relnamespace = 'mpqr'::regnamespace""",
    "comments": """
        SELECT (pg_identify_object(d.classoid, d.objoid, d.objsubid)).identity || ' = ' || d.description
          FROM pg_description d
         WHERE (d.classoid = 'pg_class'::regclass
                AND d.objoid IN (SELECT oid FROM pg_class WHERE relnamespace = 'mpqr'::regnamespace))
            OR (d.classoid = 'pg_proc'::regclass
                AND d.objoid IN (SELECT oid FROM pg_proc WHERE pronamespace = 'mpqr'::regnamespace
                                 OR proname LIKE 'mpqr\\_%'))
            OR (d.classoid = 'pg_type'::regclass
                AND d.objoid IN (SELECT oid FROM pg_type WHERE typnamespace = 'mpqr'::regnamespace))
            OR (d.classoid = 'pg_constraint'::regclass
                AND d.objoid IN (SELECT oid FROM pg_constraint WHERE connamespace = 'mpqr'::regnamespace))
            OR (d.classoid = 'pg_namespace'::regclass AND d.objoid = 'mpqr'::regnamespace)
            OR (d.classoid = 'pg_trigger'::regclass)""",
}


def catalog(cluster, dbname):
    """The catalog of mpqr in dbname: query name -> sorted list of texts."""
    conn = cluster.connect(dbname)
    try:
        out = {}
        with conn.cursor() as cur:
            for name, sql in CATALOG_QUERIES.items():
                cur.execute(sql)
                out[name] = sorted(r[0] for r in cur.fetchall())
        return out
    finally:
        conn.close()


def catalog_diff(a, b):
    """What differs between two catalogs, as readable lines ('-' only in a, '+' only in b)."""
    lines = []
    for name in a:
        only_a = sorted(set(a[name]) - set(b[name]))
        only_b = sorted(set(b[name]) - set(a[name]))
        lines += ["%s - %s" % (name, x) for x in only_a]
        lines += ["%s + %s" % (name, x) for x in only_b]
        if not only_a and not only_b and len(a[name]) != len(b[name]):
            lines.append("%s: %d rows against %d" % (name, len(a[name]), len(b[name])))
    return lines


def tables(cur):
    cur.execute("SELECT relname FROM pg_class WHERE relnamespace = 'mpqr'::regnamespace "
                "AND relkind = 'r' ORDER BY 1")
    return [r[0] for r in cur.fetchall()]


def rows(conn, columns=None):
    """Every row of every mpqr table: table -> sorted list of JSON texts.

    columns, when given, maps a table to the columns to keep (the others are
    left out); tables it does not name keep all of theirs.
    """
    out = {}
    with conn.cursor() as cur:
        for t in tables(cur):
            cols = "*"
            if columns is not None and t in columns:
                cols = ", ".join('"%s"' % c for c in sorted(columns[t]))
            cur.execute("SELECT to_jsonb(x)::text FROM (SELECT %s FROM mpqr.%s) x" % (cols, t))
            out[t] = sorted(r[0] for r in cur.fetchall())
    return out


def sequences(conn):
    """Every sequence of schema mpqr: name -> (last_value, is_called)."""
    out = {}
    with conn.cursor() as cur:
        cur.execute("SELECT relname FROM pg_class WHERE relnamespace = 'mpqr'::regnamespace "
                    "AND relkind = 'S' ORDER BY 1")
        for (s,) in cur.fetchall():
            cur.execute("SELECT last_value, is_called FROM mpqr.%s" % s)
            out[s] = cur.fetchone()
    return out
