#!/usr/bin/env bash
# make demo: the whole attended flow, end to end, against the simulator.
#
# Installs what is missing, builds and installs mpqr, then tells the story
# on a throwaway cluster (run as the postgres OS user) and a simulator of
# Mercado Pago, and tears everything down.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== Preparing: packages, build, install =="
make -s deps
make -s
make -s install
echo
exec /usr/bin/python3 test/demo.py
