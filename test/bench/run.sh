#!/usr/bin/env bash
# make bench: the benchmarks, each against a baseline measured in the same run.
#
# make deps installs what they need (wrk, nginx); then mpqr is built and
# installed, and every benchmark runs: P1 (put_bench), P2 (sender_bench), R
# (crash_bench), P3 (listener_bench), burst, P4 and storm (rush_bench), P5
# and P6 (idle_bench).  Record the results, with the date, the machine and
# the commit, in test/bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

make -s deps
make -s
make -s install
echo "mpqr benchmarks, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u '+%Y-%m-%d %H:%M UTC')"
for b in put_bench sender_bench crash_bench listener_bench rush_bench idle_bench; do
	echo
	echo "== $b"
	/usr/bin/python3 "test/bench/$b.py" "$@"
done
