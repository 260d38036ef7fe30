#!/usr/bin/env bash
# make regress: the SQL tests of sql/ and expected/ with pg_regress, on a
# temporary instance with mpqr preloaded (test/regress.conf).  initdb refuses
# to run as root, so as root the instance belongs to the postgres OS user.
set -euo pipefail
cd "$(dirname "$0")/.."
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
pg_regress="$("$PG_CONFIG" --pkglibdir)/pgxs/src/test/regress/pg_regress"
tests=$(make -s print-regress)
out=$(mktemp -d /tmp/mpqr-regress-XXXXXX)
chmod 755 "$out"
run=()
if [ "$(id -u)" = 0 ]; then
    chown postgres: "$out"
    run=(runuser -u postgres --)
fi
# the inputs are copied where the postgres OS user can read them, whatever
# the permissions of the checkout (a private temporary clone, say)
mkdir "$out/input"
cp -r sql expected test/regress.conf "$out/input/"
chmod -R a+rX "$out/input"
status=0
(cd "$out/input" && "${run[@]}" "$pg_regress" --temp-instance="$out/instance" \
    --temp-config=regress.conf --bindir="$("$PG_CONFIG" --bindir)" --inputdir=. \
    --outputdir="$out" --load-extension=mpqr --dbname=contrib_regression $tests) || status=$?
if [ "$status" != 0 ] && [ -f "$out/regression.diffs" ]; then
    cp "$out/regression.diffs" regression.diffs
    echo "differences in regression.diffs" >&2
fi
[ "$status" = 0 ] && rm -rf "$out"
exit "$status"
