#!/usr/bin/env bash
# make bench: the benchmarks, each against a baseline measured in the same run.
#
# Installs what they need (wrk, nginx), builds and installs mpqr, then runs
# the listener and the sender benchmarks.  Record the results, with the date
# and the machine, in test/bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

make -s deps
for p in wrk nginx-light; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="${missing:-} $p"
done
if [ -n "${missing:-}" ]; then
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing
fi
make -s
make -s install
/usr/bin/python3 test/bench/listener_bench.py "$@"
/usr/bin/python3 test/bench/sender_bench.py "$@"
