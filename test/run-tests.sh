#!/usr/bin/env bash
# make test: everything from a fresh Debian 12 machine, as root.
#
# Installs the packages the build and the tests need, builds and installs
# mpqr, runs the fuzz targets for FUZZ_SECONDS (60 by default), then every
# test: the simulator's own tests, pg_regress on a throwaway cluster, and the
# integration tests (real clusters run as the postgres OS user, the
# simulator over TLS, real HTTP clients).
set -euo pipefail
cd "$(dirname "$0")/.."

make deps
make -s
make -s install
make -s fuzz-run FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
exec /usr/bin/python3 -m pytest -q -c test/pytest.ini --rootdir test "$@"
